"""A fast, quiet start: configuration, --help and --dry-run load no TensorFlow, and a run opens with our own
lines, not TensorFlow's C++ logging."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=ENV,
                          timeout=300)


def test_configuration_help_and_dry_run_import_no_tensorflow():
    result = python("""
import sys
import lottery_keras, lottery_keras.config, lottery_keras.lottery.strategies, lottery_keras.lottery.paths
from lottery_keras import cli
for argv in (["--help"], ["report", "--help"], ["--dataset", "mnist", "--arch", "lenet5", "--dry-run"]):
    try:
        cli.main(argv)
    except SystemExit:
        pass
print("TF", "tensorflow" in sys.modules, "KERAS", "keras" in sys.modules)
""")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "TF False KERAS False"


def test_reports_import_neither_the_controller_nor_the_training_loop():
    result = python("""
import sys
import lottery_keras.analysis.report, lottery_keras.deploy.tflite
print(sorted(name for name in sys.modules if name in ("lottery_keras.lottery.controller",
                                                      "lottery_keras.train.loop")))
""")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_tensorflow_loads_without_its_cpp_logging():
    result = python("""
from lottery_keras.cli import quiet_tensorflow
quiet_tensorflow()
import tensorflow as tf
print(float(tf.constant(2.0) + 1.0))
""")
    assert result.returncode == 0 and result.stdout.strip() == "3.0"
    assert result.stderr == ""
