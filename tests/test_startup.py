"""A fast, quiet start: configuration, --help and --dry-run load no TensorFlow, and a run opens with our own
lines, not TensorFlow's C++ logging."""

from __future__ import annotations

import os
import re
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


def test_help_and_the_first_screen_of_a_real_run_are_quiet(tmp_path):
    """`python run.py --help` and a short real run of the main job print our lines only: no TensorFlow, absl or
    oneDNN logging and no Python warnings (the one-time notice of compiling the native kernels is ours)."""
    help_screen = subprocess.run([sys.executable, "run.py", "--help"], capture_output=True, text=True, cwd=REPO,
                                 env=ENV, timeout=120)
    assert help_screen.returncode == 0 and help_screen.stderr == ""
    assert "usage: python run.py" in help_screen.stdout

    run = subprocess.run([sys.executable, "run.py", "--dataset", "mnist", "--arch", "lenet5", "--rounds", "2",
                          "--iterations", "40", "--eval-every", "20", "--train-subset", "600",
                          "--output-dir", str(tmp_path)], capture_output=True, text=True, cwd=REPO, env=ENV,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    noise = [line for line in run.stderr.splitlines() if not line.startswith("lottery_keras: compiling the native")]
    assert noise == []
    first_lines = run.stdout.splitlines()[:5]
    assert first_lines[0].startswith("execution plan: CPU") and first_lines[1].startswith("data: mnist from ")
    assert first_lines[2] == "trial 0 · magnitude_rewind · round 1/2 · 100.00% of weights remaining"
    # stdout is a pipe here, as in a log file: one plain line per evaluation, no cursor or colour codes
    assert [re.sub(r"\d+\.\d+", "x", line) for line in first_lines[3:]] == [
        "  iteration 20/40 · val_loss x · val_acc x", "  iteration 40/40 · val_loss x · val_acc x"]
    assert not re.search(r"[\x1b\b\r]", run.stdout)
