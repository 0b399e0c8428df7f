"""Callbacks: the early-stop-iteration recorder and a progress bar.

Both read the step count from `model.optimizer.iterations`, so they work the same under `keras.Model.fit`
(called every batch) and under the compiled loop of `loop.py` (called once per chunk of steps).
"""

from __future__ import annotations

import math
import os
import sys

import keras
import numpy as np
import pandas as pd

from lottery_keras.columns import check_filled, unmeasured
from lottery_keras.train.evaluation import SplitEvaluator, accuracy, expected_calibration_error, softmax


DIVERGED_LOSS = 100.0  # validation cross-entropy far beyond chance (ln 10 ≈ 2.3): the weights have blown up
RECORDED = ("training", "test")  # the evaluations whose result columns (`lottery_keras.columns`) it fills


class EarlyStopRecorder(keras.callbacks.Callback):
    """Evaluates every `eval_every` iterations, records the iteration of minimum validation loss and keeps the
    weights of that iteration.

    At the end of training `result` holds the result columns of the `RECORDED` evaluations: `es_iteration`,
    `val_loss`, `val_acc`, `test_acc` (of the kept weights), `final_test_acc`, `train_acc` (kept weights, training
    split), `ece` (kept weights, test split), all accuracies in percent, and `diverged`; `history` holds one row
    per evaluation, for learning curves. The test split is evaluated at every evaluation when `test_every_eval`
    (curves), else only for the kept and final weights. With `iteration_offset` K (training resumed from step K)
    recorded iterations count from K.
    Training *diverged* when a validation loss is not finite or exceeds `DIVERGED_LOSS`: it is stopped
    there, and its numbers (NaN where no evaluation was finite) are not results. An `evaluator` of the trained
    model over the same splits is used instead of a new one, so that many trainings share its compiled graphs.
    """

    def __init__(self, validation: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], *,
                 eval_every: int, iterations: int, train: tuple[np.ndarray, np.ndarray] | None = None,
                 test_every_eval: bool = True, eval_batch_size: int = 1000, iteration_offset: int = 0,
                 evaluator: SplitEvaluator | None = None):
        super().__init__()
        self._shared_evaluator = evaluator
        self.eval_every = eval_every
        self.iteration_offset = iteration_offset
        self.iterations = iterations
        self.test_every_eval = test_every_eval
        self.eval_batch_size = eval_batch_size
        self._splits = {name: split for name, split in (("val", validation), ("test", test), ("train", train))
                        if split is not None}
        self.history: list[dict] = []
        self.best_weights: list[np.ndarray] | None = None
        self.result: dict = {}
        self._evaluator: SplitEvaluator | None = None

    def on_train_begin(self, logs=None):
        self.history, self.best_weights, self.result, self.diverged = [], None, {}, False
        if self._shared_evaluator is not None and self._shared_evaluator.model is not self.model:
            raise ValueError("the evaluator given evaluates another model than the one trained")
        self._evaluator = self._shared_evaluator or SplitEvaluator(self.model, self._splits, self.eval_batch_size)

    def on_train_batch_end(self, batch, logs=None):
        iteration = int(self.model.optimizer.iterations.numpy())
        if iteration % self.eval_every and iteration != self.iterations:
            return
        if self.history and self.history[-1]["iteration"] == iteration + self.iteration_offset:
            return
        row = {"iteration": iteration + self.iteration_offset, **self._evaluator.metrics("val")}
        if self.test_every_eval:
            row.update(self._evaluator.metrics("test"))
        finite = [r["val_loss"] for r in self.history if math.isfinite(r["val_loss"])]
        if math.isfinite(row["val_loss"]) and (not finite or row["val_loss"] < min(finite)):
            self.best_weights = self.model.get_weights()
        self.history.append(row)
        if not row["val_loss"] <= DIVERGED_LOSS:  # NaN too
            self.diverged = True
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if not self.history:
            raise RuntimeError("training ended before the first evaluation; nothing was recorded")
        final_test = self.history[-1] if self.test_every_eval else self._evaluator.metrics("test")
        if self.best_weights is None:  # no finite evaluation: nothing to keep
            self.result = check_filled({**unmeasured(RECORDED), "final_test_acc": final_test["test_acc"],
                                        "diverged": True}, RECORDED, "EarlyStopRecorder.result")
            return
        best = min((r for r in self.history if math.isfinite(r["val_loss"])), key=lambda r: r["val_loss"])
        final_weights = self.model.get_weights()
        self.model.set_weights(self.best_weights)
        try:
            test_logits = self._evaluator.logits("test")
            train_acc = self._evaluator.metrics("train")["train_acc"] if "train" in self._splits else float("nan")
        finally:
            self.model.set_weights(final_weights)
        test_labels = self._evaluator.labels["test"]
        self.result = check_filled({
            "es_iteration": best["iteration"], "val_loss": best["val_loss"], "val_acc": best["val_acc"],
            "test_acc": accuracy(test_logits, test_labels), "final_test_acc": final_test["test_acc"],
            "train_acc": train_acc, "ece": expected_calibration_error(softmax(test_logits), test_labels),
            "diverged": self.diverged,
        }, RECORDED, "EarlyStopRecorder.result")

    def history_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.history)

    def get_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """What a mid-round checkpoint keeps (`checkpoint.ResumableCallback`)."""
        best = {str(index): weight for index, weight in enumerate(self.best_weights or [])}
        return {"history": self.history, "diverged": self.diverged, "has_best": self.best_weights is not None}, best

    def set_state(self, values: dict, arrays: dict[str, np.ndarray]) -> None:
        history, diverged = list(values["history"]), bool(values["diverged"])
        best = None
        if values["has_best"]:
            best = [arrays[str(index)] for index in range(len(arrays))]
            shapes = [tuple(weight.shape) for weight in self.model.weights]
            if [weight.shape for weight in best] != shapes:
                raise ValueError("its kept weights do not fit the model")
        if not all(isinstance(row, dict) and "iteration" in row and "val_loss" in row for row in history):
            raise ValueError("its history rows are not evaluations")
        self.history, self.diverged, self.best_weights = history, diverged, best


def _live_display() -> bool:
    """Whether stdout redraws a line in place: a terminal, a notebook or PyCharm (Keras's Progbar assumes it does
    on every POSIX system, which fills log files with cursor and colour codes)."""
    return sys.stdout.isatty() or "ipykernel" in sys.modules or "PYCHARM_HOSTED" in os.environ


class ProgressBar(keras.callbacks.Callback):
    """A `keras.utils.Progbar` over iterations showing the latest validation loss and accuracy; where stdout is
    not a live display (a log file, a pipe), one plain line per evaluation instead, free of cursor and colour
    codes."""

    def __init__(self, recorder: EarlyStopRecorder, label: str = ""):
        super().__init__()
        self.recorder = recorder
        self.label = label
        self._bar: keras.utils.Progbar | None = None
        self._printed_iteration: int | None = None

    def on_train_begin(self, logs=None):
        if self.label:
            print(self.label, flush=True)
        if _live_display():
            self._bar = keras.utils.Progbar(self.recorder.iterations, unit_name="it",
                                            stateful_metrics=["val_loss", "val_acc"])

    def on_train_batch_end(self, batch, logs=None):
        latest = self.recorder.history[-1] if self.recorder.history else {}
        if self._bar is not None:
            values = [(key, latest[key]) for key in ("val_loss", "val_acc") if key in latest]
            self._bar.update(self._step(), values=values)
        elif latest and latest["iteration"] != self._printed_iteration:  # a new evaluation: read the step only then
            self._printed_iteration = latest["iteration"]
            print(f"  iteration {self._step()}/{self.recorder.iterations} · val_loss {latest['val_loss']:.4f} · "
                  f"val_acc {latest['val_acc']:.2f}", flush=True)

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())


class WeightsAt(keras.callbacks.Callback):
    """Keeps a masked model's state (`MaskedModel.state_variables`), by variable path, after step `step` (a
    late-rewinding point θ_K); train with
    `pause_at=[step]` so that the compiled loop stops there."""

    def __init__(self, step: int):
        super().__init__()
        self.step = step
        self.weights: dict[str, np.ndarray] | None = None

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.step:
            self.weights = {v.path: keras.ops.convert_to_numpy(v) for v in self.model.state_variables()}

    def get_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """What a mid-round checkpoint keeps (`checkpoint.ResumableCallback`)."""
        return {"kept": self.weights is not None}, dict(self.weights or {})

    def set_state(self, values: dict, arrays: dict[str, np.ndarray]) -> None:
        kept = bool(values["kept"])
        if kept and sorted(arrays) != sorted(v.path for v in self.model.state_variables()):
            raise ValueError("its rewind point does not fit the model")
        self.weights = dict(arrays) if kept else None
