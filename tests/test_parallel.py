"""Trials on parallel Ray workers (`lottery/parallel.py`): the same results and files as a serial run, a killed
worker costing only its unfinished round, and one clear line when Ray is missing or a cluster does not answer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lottery_keras import cli
from lottery_keras.lottery import controller as imp
from lottery_keras.lottery.paths import RunFolder

REPO = Path(__file__).resolve().parents[1]
TINY = dict(rounds=2, iterations=60, eval_every=30, train_subset=600)


def run_cli(*args: str) -> None:
    result = subprocess.run([sys.executable, str(REPO / "run.py"), *args], capture_output=True, text=True,
                            env=os.environ.copy(), timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]


def test_two_workers_give_the_results_of_a_serial_run_on_one_thread(tmp_path):
    """Each worker trains on one TensorFlow thread; on some CPUs (AVX2) TensorFlow's multi-threaded kernels round
    differently, so the serial run that must match bit for bit is the one on one thread too."""
    pytest.importorskip("ray")
    tiny = [f"--{name.replace('_', '-')}={value}" for name, value in TINY.items()]
    common = ["--dataset", "mnist", "--arch", "lenet300_100", *tiny, "--strategy", "all", "--trials", "2",
              "--no-tfmot-check", "--quiet"]
    run_cli(*common, "--threads", "1", "--output-dir", str(tmp_path / "serial"))
    run_cli(*common, "--workers", "2", "--output-dir", str(tmp_path / "parallel"))
    serial, parallel = (next((tmp_path / name).iterdir()) for name in ("serial", "parallel"))
    want, got = (RunFolder(folder).results().drop(columns="train_seconds") for folder in (serial, parallel))
    pd.testing.assert_frame_equal(got, want)
    assert len(got) == 2 * 9 * 2
    assert sorted(p.relative_to(parallel).as_posix() for p in parallel.rglob("*") if p.name != ".lock") == \
        sorted(p.relative_to(serial).as_posix() for p in serial.rglob("*") if p.name != ".lock")


OWN_MODEL_SEARCH = """
import sys

import keras
import numpy as np

import lottery_keras

arrays = np.load(sys.argv[1])
inputs = keras.Input((28, 28, 1))
hidden = keras.layers.Dense(32, activation="relu")(keras.layers.Flatten()(inputs))
found = lottery_keras.find_ticket(keras.Model(inputs, keras.layers.Dense(10)(hidden)),
                                  *[(arrays[f"x_{split}"], arrays[f"y_{split}"]) for split in ("train", "val", "test")],
                                  rounds=2, iterations=60, eval_every=30, trials=2, output_dir=sys.argv[2],
                                  workers=int(sys.argv[3]), verbose=False)
found.results.drop(columns=["train_seconds", "ticket_init", "ticket_trained"]).to_csv(sys.argv[4], index=False)
"""


def test_workers_train_a_model_and_data_of_ones_own_as_a_serial_run_does(tmp_path, mnist_small):
    """The workers rebuild the network from the run folder and take the driver's data from Ray's object store.
    The serial search runs on one TensorFlow thread, as each worker does (see the test above)."""
    pytest.importorskip("ray")
    splits = mnist_small.head(train=600, val=200, test=200)
    data = tmp_path / "data.npz"
    np.savez(data, **{name: getattr(splits, name) for name in
                      ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")})
    one_thread = {**os.environ, "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
    for workers, env in ((1, one_thread), (2, os.environ.copy())):
        result = subprocess.run([sys.executable, "-c", OWN_MODEL_SEARCH, str(data), str(tmp_path / str(workers)),
                                 str(workers), str(tmp_path / f"{workers}.csv")], capture_output=True, text=True,
                                env=env, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
    want, got = (pd.read_csv(tmp_path / f"{workers}.csv") for workers in (1, 2))
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
    task = f"ray::{imp.run_trial_in_worker.__name__}"
    listed = subprocess.run(["pgrep", "-f", task], capture_output=True, text=True).stdout
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
    run_cli(*args, "--threads", "1", "--output-dir", str(tmp_path / "serial"))
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
