"""Trials on parallel Ray workers (`lottery/parallel.py`): the same results and files as a serial run, and one
clear line when Ray is missing or a cluster does not answer."""

from __future__ import annotations

import sys

import pandas as pd
import pytest

from lottery_keras import cli, config
from lottery_keras.lottery import controller as imp
from lottery_keras.lottery.paths import RunFolder

TINY = dict(rounds=2, iterations=60, eval_every=30, train_subset=600)


def tiny_experiment():
    return config.from_preset("es667", "mnist", "lenet300_100", **TINY)


def test_two_workers_give_the_results_of_a_serial_run(tmp_path):
    pytest.importorskip("ray")
    serial = imp.run_experiment(tiny_experiment(), tmp_path / "serial", options=imp.RunOptions(
        strategies=["all"], trials=(0, 1), check_tfmot=False, verbose=False))
    parallel = imp.run_experiment(tiny_experiment(), tmp_path / "parallel", options=imp.RunOptions(
        strategies=["all"], trials=(0, 1), check_tfmot=False, verbose=False, workers=2))
    want, got = (RunFolder(folder.directory).results().drop(columns="train_seconds") for folder in (serial, parallel))
    pd.testing.assert_frame_equal(got, want)
    assert sorted(p.relative_to(parallel.directory).as_posix() for p in parallel.directory.rglob("*")
                  if p.name != ".lock") == sorted(p.relative_to(serial.directory).as_posix()
                                                  for p in serial.directory.rglob("*") if p.name != ".lock")


def test_without_ray_workers_are_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    code = cli.main(["--dataset", "mnist", "--arch", "lenet300_100", "--rounds", "1", "--iterations", "30",
                     "--train-subset", "600", "--workers", "2", "--output-dir", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err == "error: --workers and --ray-address need Ray: pip install 'ray' (or run without them)"


def test_an_unreachable_cluster_is_one_clear_line_at_once(tmp_path, capsys):
    pytest.importorskip("ray")
    code = cli.main(["--dataset", "mnist", "--arch", "lenet300_100", "--rounds", "1", "--iterations", "30",
                     "--train-subset", "600", "--ray-address", "127.0.0.1:9", "--output-dir", str(tmp_path),
                     "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert err.startswith("error: cannot reach the Ray cluster at 127.0.0.1:9") and "ray start --head" in err


def test_workers_must_be_a_positive_count():
    with pytest.raises(ValueError, match="--workers must be at least 1"):
        imp.RunOptions(workers=0)
