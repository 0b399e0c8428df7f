"""Trials on parallel Ray workers (`lottery/parallel.py`): the same results and files as a serial run, a killed
worker costing only its unfinished round, and one clear line when Ray is missing or a cluster does not answer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from lottery_keras import cli, config
from lottery_keras.lottery import controller as imp
from lottery_keras.lottery.paths import RunFolder

REPO = Path(__file__).resolve().parents[1]
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


def test_workers_train_a_model_and_data_of_ones_own_as_a_serial_run_does(tmp_path, mnist_small):
    """The workers rebuild the network from the run folder and take the driver's data from Ray's object store."""
    pytest.importorskip("ray")
    import keras

    import lottery_keras

    def mlp() -> keras.Model:
        inputs = keras.Input((28, 28, 1))
        hidden = keras.layers.Dense(32, activation="relu")(keras.layers.Flatten()(inputs))
        return keras.Model(inputs, keras.layers.Dense(10)(hidden))

    splits = mnist_small.head(train=600, val=200, test=200)
    pairs = [(splits.x_train, splits.y_train), (splits.x_val, splits.y_val), (splits.x_test, splits.y_test)]
    found = {workers: lottery_keras.find_ticket(mlp(), *pairs, rounds=2, iterations=60, eval_every=30, trials=2,
                                                output_dir=tmp_path / str(workers), workers=workers, verbose=False)
             for workers in (1, 2)}
    want, got = (found[workers].results.drop(columns=["train_seconds", "ticket_init", "ticket_trained"])
                 for workers in (1, 2))
    pd.testing.assert_frame_equal(got, want)
    assert len(got) == 12


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


def own_workers(driver: int) -> list[int]:
    """The Ray trial workers that `driver` started (not those of other runs on this machine)."""
    listed = subprocess.run(["pgrep", "-f", "ray::_run_trial"], capture_output=True, text=True).stdout
    return [int(pid) for pid in listed.split() if driver in ancestors(int(pid))]


def ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the parent's pid, after the command name in parentheses
        chain.append(pid)
    return chain


def test_a_killed_worker_costs_only_its_unfinished_round(tmp_path):
    """SIGKILL one Ray worker in the middle of a trial: Ray runs the task again, which resumes after the trial's
    finished rounds, and the run ends with the results of an uninterrupted serial run."""
    pytest.importorskip("ray")
    args = ["--dataset", "mnist", "--arch", "lenet300_100", "--strategy", "magnitude_rewind", "--rounds", "3",
            "--iterations", "900", "--eval-every", "300", "--train-subset", "600", "--quiet", "--no-tfmot-check",
            "--trials", "2"]
    serial = subprocess.run([sys.executable, "run.py", *args, "--output-dir", str(tmp_path / "serial")], cwd=REPO,
                            capture_output=True, text=True)
    assert serial.returncode == 0, serial.stderr
    run = subprocess.Popen([sys.executable, "run.py", *args, "--workers", "2", "--output-dir",
                            str(tmp_path / "parallel")], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    killed, deadline = None, time.monotonic() + 240
    while killed is None and run.poll() is None and time.monotonic() < deadline:
        if list((tmp_path / "parallel").glob("*/trial_*/magnitude_rewind/round_00/metrics.json")):
            workers = own_workers(run.pid)
            if workers:
                killed = workers[0]
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.2)
    _, err = run.communicate(timeout=600)
    assert killed is not None, "no worker was caught mid-trial"
    assert run.returncode == 0, err
    want, got = (RunFolder(next(folder.glob("mnist-*"))).results().drop(columns="train_seconds")
                 for folder in (tmp_path / "serial", tmp_path / "parallel"))
    pd.testing.assert_frame_equal(got, want)
