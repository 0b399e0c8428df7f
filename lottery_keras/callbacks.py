"""Callbacks: the early-stop-iteration recorder and a progress bar.

Both read the step count from `model.optimizer.iterations`, so they work the same under `keras.Model.fit`
(called every batch) and under the compiled loop of `training.py` (called once per chunk of steps).
"""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import tensorflow as tf


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE (Guo et al., 2017): the bin-weighted gap between confidence and accuracy, equal-width bins."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    gap = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            gap += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(gap)


class EarlyStopRecorder(keras.callbacks.Callback):
    """Evaluates every `eval_every` iterations, records the iteration of minimum validation loss and keeps the
    weights of that iteration.

    At the end of training `result` holds: `es_iteration`, `val_loss`, `val_acc`, `test_acc` (of the kept
    weights), `final_test_acc`, `train_acc` (kept weights, training split), `ece` (kept weights, test split),
    all accuracies in percent; `history` holds one row per evaluation, for learning curves. The test split is
    evaluated at every evaluation when `test_every_eval` (curves), else only for the kept and final weights.
    """

    def __init__(self, validation: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], *,
                 eval_every: int, iterations: int, train: tuple[np.ndarray, np.ndarray] | None = None,
                 test_every_eval: bool = True, eval_batch_size: int = 1000):
        super().__init__()
        self.eval_every = eval_every
        self.iterations = iterations
        self.test_every_eval = test_every_eval
        self.eval_batch_size = eval_batch_size
        splits = {"val": validation, "test": test, "train": train}
        self._splits = {name: (tf.constant(split[0]), np.asarray(split[1]))
                        for name, split in splits.items() if split is not None}
        self._labels = {name: tf.constant(labels, tf.int32) for name, (_, labels) in self._splits.items()}
        self.history: list[dict] = []
        self.best_weights: list[np.ndarray] | None = None
        self.result: dict = {}
        self._logits_fn = self._loss_and_correct_fn = None

    def on_train_begin(self, logs=None):
        self.history, self.best_weights, self.result = [], None, {}
        self._logits_fn = tf.function(lambda x: self.model(x, training=False))
        self._loss_and_correct_fn = tf.function(self._loss_and_correct)

    def on_train_batch_end(self, batch, logs=None):
        iteration = int(self.model.optimizer.iterations.numpy())
        if iteration % self.eval_every and iteration != self.iterations:
            return
        if self.history and self.history[-1]["iteration"] == iteration:
            return
        row = {"iteration": iteration, **self._metrics("val")}
        if self.test_every_eval:
            row.update(self._metrics("test"))
        if not self.history or row["val_loss"] < min(r["val_loss"] for r in self.history):
            self.best_weights = self.model.get_weights()
        self.history.append(row)

    def on_train_end(self, logs=None):
        if not self.history:
            raise RuntimeError("training ended before the first evaluation; nothing was recorded")
        best = min(self.history, key=lambda r: r["val_loss"])
        final_test = self.history[-1] if self.test_every_eval else self._metrics("test")
        final_weights = self.model.get_weights()
        self.model.set_weights(self.best_weights)
        try:
            test_probs, test_acc = self._probabilities_and_accuracy("test")
            train_acc = self._metrics("train")["train_acc"] if "train" in self._splits else float("nan")
        finally:
            self.model.set_weights(final_weights)
        self.result = {
            "es_iteration": best["iteration"], "val_loss": best["val_loss"], "val_acc": best["val_acc"],
            "test_acc": test_acc, "final_test_acc": final_test["test_acc"], "train_acc": train_acc,
            "ece": expected_calibration_error(test_probs, self._splits["test"][1]),
        }

    def history_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.history)

    def _logits(self, split: str) -> np.ndarray:
        x = self._splits[split][0]
        size = self.eval_batch_size
        return np.concatenate([self._logits_fn(x[i:i + size]).numpy() for i in range(0, int(x.shape[0]), size)])

    def _probabilities_and_accuracy(self, split: str) -> tuple[np.ndarray, float]:
        logits = self._logits(split).astype(np.float64)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        return probs, 100.0 * float(np.mean(probs.argmax(axis=1) == self._splits[split][1]))

    def _loss_and_correct(self, x: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Summed cross-entropy and number correct over a whole split, batch by batch, in one device call (only
        two numbers come back to the host: this runs every `eval_every` steps, on the validation and test
        splits, and costs about as much as the training steps in between)."""
        size = self.eval_batch_size
        full_batches, tail = divmod(int(x.shape[0]), size)
        total, correct = tf.constant(0.0, tf.float64), tf.constant(0, tf.int64)
        for i in tf.range(full_batches):  # a graph loop; static batch shapes (tf.slice) let the model shard them
            start = i * size
            images = tf.slice(x, [start] + [0] * (x.shape.rank - 1), [size, *x.shape[1:]])
            batch_total, batch_correct = self._batch_loss_and_correct(images, tf.slice(labels, [start], [size]))
            total, correct = total + batch_total, correct + batch_correct
        if tail:
            batch_total, batch_correct = self._batch_loss_and_correct(x[-tail:], labels[-tail:])
            total, correct = total + batch_total, correct + batch_correct
        return total, correct

    def _batch_loss_and_correct(self, images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        logits = tf.cast(self.model(images, training=False), tf.float32)
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        hits = tf.argmax(logits, axis=1, output_type=tf.int32) == labels
        return tf.reduce_sum(tf.cast(losses, tf.float64)), tf.reduce_sum(tf.cast(hits, tf.int64))

    def _metrics(self, split: str) -> dict[str, float]:
        total, correct = self._loss_and_correct_fn(self._splits[split][0], self._labels[split])
        count = len(self._splits[split][1])
        return {f"{split}_loss": float(total) / count, f"{split}_acc": 100.0 * int(correct) / count}


class ProgressBar(keras.callbacks.Callback):
    """A `keras.utils.Progbar` over iterations showing the latest validation loss and accuracy."""

    def __init__(self, recorder: EarlyStopRecorder, label: str = ""):
        super().__init__()
        self.recorder = recorder
        self.label = label
        self._bar: keras.utils.Progbar | None = None

    def on_train_begin(self, logs=None):
        if self.label:
            print(self.label, flush=True)
        self._bar = keras.utils.Progbar(self.recorder.iterations, unit_name="it",
                                        stateful_metrics=["val_loss", "val_acc"])

    def on_train_batch_end(self, batch, logs=None):
        latest = self.recorder.history[-1] if self.recorder.history else {}
        values = [(key, latest[key]) for key in ("val_loss", "val_acc") if key in latest]
        self._bar.update(int(self.model.optimizer.iterations.numpy()), values=values)
