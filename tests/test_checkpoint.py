"""Checkpoints inside a round: training interrupted mid-round and resumed from its checkpoint gives exactly what
uninterrupted training gives, on both engines; an unusable checkpoint is ignored with a warning; an IMP run killed
mid-round goes on from its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from cli_runs import kill_once_written, start_run
from lottery_keras import cli
from lottery_keras.nn import models, native
from lottery_keras.train.callbacks import EarlyStopRecorder, WeightsAt
from lottery_keras.train.checkpoint import RoundCheckpoint
from lottery_keras.train.loop import Trainer, compile_model
from lottery_keras.train.plan import ExecutionPlan
from lottery_keras.train.schedule import LearningRateSchedule

ITERATIONS, EVAL_EVERY, REWIND_STEP, CRASH_AT = 250, 50, 70, 150
SCHEDULE = LearningRateSchedule(2e-3, warmup=30, drops=(200,), factor=0.2)
IDENTITY = {"data_seed": 5, "iterations": ITERATIONS, "step_offset": 0}
ENGINES = ["dense", pytest.param("sparse", marks=pytest.mark.skipif(
    not native.available(), reason="no C++ compiler to build the native kernels"))]


class Crash(Exception):
    pass


class CrashAt(keras.callbacks.Callback):
    """Stands for a kill: raises once training has reached `step`."""

    def __init__(self, step: int):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) >= self.step:
            raise Crash


def masked_mlp(engine: str, input_shape, mask_seed: int = 4) -> models.MaskedModel:
    model = models.build_model("lenet300_100", input_shape, seed=3)
    compile_model(model, 2e-3)
    rng = np.random.default_rng(mask_seed)
    density = 0.05 if engine == "sparse" else 0.5
    model.set_masks({layer.name: (rng.random(layer.mask.shape) < density).astype(np.float32)
                     for layer in model.masked_layers()})
    return model


def train(splits, engine: str, checkpoint: RoundCheckpoint | None = None, crash_at: int | None = None,
          mask_seed: int = 4):
    """One run of the round's training from the same start; returns the model and its two callbacks."""
    model = masked_mlp(engine, splits.input_shape, mask_seed)
    plan = ExecutionPlan(sparse_kernels=engine == "sparse")
    trainer = Trainer(model, splits.x_train, splits.y_train, batch_size=60, plan=plan)
    recorder = EarlyStopRecorder((splits.x_val, splits.y_val), (splits.x_test, splits.y_test), eval_every=EVAL_EVERY,
                                 iterations=ITERATIONS)
    rewind_point = WeightsAt(REWIND_STEP)
    callbacks = [recorder, rewind_point, *([CrashAt(crash_at)] if crash_at else [])]
    trainer.train(ITERATIONS, EVAL_EVERY, IDENTITY["data_seed"], callbacks, schedule=SCHEDULE,
                  pause_at=[REWIND_STEP], checkpoint=checkpoint)
    assert trainer.last_engine == engine
    return model, recorder, rewind_point


def assert_same_training(a, b) -> None:
    (model_a, recorder_a, point_a), (model_b, recorder_b, point_b) = a, b
    for x, y in zip(model_a.get_weights(), model_b.get_weights()):
        np.testing.assert_array_equal(x, y)
    assert recorder_a.history == recorder_b.history
    pd.testing.assert_series_equal(pd.Series(recorder_a.result), pd.Series(recorder_b.result))  # NaN == NaN
    assert point_a.weights.keys() == point_b.weights.keys()
    for key in point_a.weights:
        np.testing.assert_array_equal(point_a.weights[key], point_b.weights[key])


@pytest.fixture(scope="module")
def straight(mnist_small):
    return {engine: train(mnist_small, engine) for engine in ("dense", "sparse") if
            engine == "dense" or native.available()}


@pytest.mark.parametrize("engine", ENGINES)
def test_a_round_crashed_midway_resumes_from_its_checkpoint_as_if_never_stopped(mnist_small, straight, engine,
                                                                               tmp_path):
    path = tmp_path / "checkpoint.npz"
    with pytest.raises(Crash):
        train(mnist_small, engine, RoundCheckpoint(path, IDENTITY, every_seconds=1e-9), crash_at=CRASH_AT)
    assert path.is_file()  # written at step 100, the last evaluation before the crash, after the rewind point
    resumed = RoundCheckpoint(path, IDENTITY, every_seconds=1e-9, verbose=True)
    result = train(mnist_small, engine, resumed)
    assert resumed.seconds_before > 0
    assert_same_training(result, straight[engine])


def edit_checkpoint(path: Path, edit) -> None:
    """Rewrite a checkpoint file with `edit(arrays, meta)` applied."""
    arrays = dict(np.load(path))
    meta = json.loads(str(arrays["meta"]))
    edit(arrays, meta)
    arrays["meta"] = np.array(json.dumps(meta))
    with open(path, "wb") as file:
        np.savez(file, **arrays)


def crashed_checkpoint(splits, path: Path, mask_seed: int = 4) -> Path:
    with pytest.raises(Crash):
        train(splits, "dense", RoundCheckpoint(path, IDENTITY, every_seconds=1e-9), crash_at=CRASH_AT,
              mask_seed=mask_seed)
    return path


def test_the_comparison_would_see_a_round_that_lost_its_optimizer_state(mnist_small, straight, tmp_path):
    """Resuming with Adam's moments zeroed is visibly different: the test above is not vacuous."""
    path = crashed_checkpoint(mnist_small, tmp_path / "checkpoint.npz")
    model = masked_mlp("dense", mnist_small.input_shape)
    optimizer = model.optimizer
    moments = [len(model.variables) + index for index, variable in enumerate(optimizer.variables)
               if variable is not optimizer.iterations and variable is not optimizer.learning_rate]

    def zero_moments(arrays, meta):
        for index in moments:
            arrays[f"variable/{index}"] = np.zeros_like(arrays[f"variable/{index}"])

    edit_checkpoint(path, zero_moments)
    result = train(mnist_small, "dense", RoundCheckpoint(path, IDENTITY))
    with pytest.raises(AssertionError):
        assert_same_training(result, straight["dense"])


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


@pytest.mark.parametrize("damage, warning", [
    (_truncate, "cannot be read"),
    (lambda path: edit_checkpoint(path, lambda arrays, meta: meta["identity"].update(data_seed=6)),
     "belongs to another training run"),
    (lambda path: edit_checkpoint(path, lambda arrays, meta: meta.update(engine="sparse")),
     "written by the sparse engine"),
    (lambda path: edit_checkpoint(path, lambda arrays, meta: arrays.update({"variable/0": np.zeros(3)})),
     "its variable/0 does not fit (shape (3,)"),
    (lambda path: edit_checkpoint(path, lambda arrays, meta: meta["callbacks"].pop()), "other callbacks"),
    (lambda path: edit_checkpoint(path, lambda arrays, meta: meta["callbacks"][0]["history"].append(7)),
     "a callback's state does not fit"),
    (lambda path: edit_checkpoint(path, lambda arrays, meta: meta.update(format=0)), "another version"),
    ("other start", "started from other weights or masks"),
], ids=["truncated", "other run", "other engine", "other model", "other callbacks", "bad callback state",
        "old format", "other start"])
def test_an_unusable_checkpoint_is_ignored_with_a_warning(mnist_small, straight, tmp_path, capsys, damage, warning):
    """Ignored, with a warning, and the round trains from its start as if there were none (a callback's state
    that does not fit leaves every callback as it was)."""
    path = crashed_checkpoint(mnist_small, tmp_path / "checkpoint.npz", mask_seed=5 if damage == "other start" else 4)
    if callable(damage):
        damage(path)
    result = train(mnist_small, "dense", RoundCheckpoint(path, IDENTITY))
    assert_same_training(result, straight["dense"])
    err = capsys.readouterr().err
    assert f"warning: ignoring the checkpoint {path}" in err and warning in err


def test_checkpoints_come_every_so_many_seconds(tmp_path):
    with pytest.raises(ValueError, match="more than 0"):
        RoundCheckpoint(tmp_path / "c.npz", IDENTITY, every_seconds=0)


def test_a_run_killed_mid_round_goes_on_from_the_checkpoint(tmp_path):
    args = ["--dataset", "mnist", "--arch", "lenet300_100", "--strategy", "magnitude_rewind", "--rounds", "2",
            "--iterations", "1500", "--eval-every", "50", "--train-subset", "3000", "--no-tfmot-check"]
    straight = start_run(*args, "--checkpoint-minutes", "0", output_dir=tmp_path / "straight")
    assert straight.wait(timeout=600) == 0, straight.stderr.read()

    kill_once_written(start_run(*args, "--checkpoint-minutes", "0.001", output_dir=tmp_path / "killed"),
                      tmp_path / "killed", "*/trial_0/magnitude_rewind/round_01/checkpoint.npz", poll=0.02)
    assert not list((tmp_path / "killed").glob("*/trial_0/magnitude_rewind/round_01/metrics.json"))

    resumed = start_run(*args, "--checkpoint-minutes", "0.001", output_dir=tmp_path / "killed", quiet=False)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert "going on from the checkpoint at iteration" in out
    assert not list((tmp_path / "killed").glob("**/checkpoint.npz"))  # deleted once the round is finished
    stale, = (tmp_path / "killed").glob("*/trial_0/magnitude_rewind/round_00")
    (stale / "checkpoint.npz").write_bytes(b"left by a kill just after the round finished")
    again = start_run(*args, output_dir=tmp_path / "killed")
    assert again.wait(timeout=600) == 0, again.stderr.read()
    assert not (stale / "checkpoint.npz").exists()
    for name in ("results.csv", "round_01/history.csv"):
        a, b = (pd.read_csv(next((tmp_path / run).glob(f"*/trial_0/magnitude_rewind/{name}")))
                for run in ("straight", "killed"))
        pd.testing.assert_frame_equal(a.drop(columns="train_seconds", errors="ignore"),
                                      b.drop(columns="train_seconds", errors="ignore"))


def test_checkpoint_minutes_must_be_a_number_of_minutes(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--dataset", "mnist", "--arch", "lenet5", "--checkpoint-minutes", "-1"])
    assert "must be a number of minutes" in capsys.readouterr().err
