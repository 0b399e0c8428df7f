"""Evaluating a model: loss and accuracy of a whole split in one device call, logits batch by batch, and
calibration. Shared by the early-stop recorder (every `eval_every` steps) and by export (Keras vs TFLite)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

EVAL_BATCH = 1000


def batched_logits(model, x, batch_size: int = EVAL_BATCH) -> np.ndarray:
    """`model`'s logits (a Keras model, or a function of a batch) for all of `x`, `batch_size` samples per call."""
    call = model if not isinstance(model, keras.Model) else lambda batch: model(batch, training=False)
    return np.concatenate([keras.ops.convert_to_numpy(call(x[i:i + batch_size]))
                           for i in range(0, int(x.shape[0]), batch_size)])


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * float(np.mean(np.argmax(logits, axis=1) == labels))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities in float64 (stable for large logits)."""
    logits = np.asarray(logits, np.float64)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    return probabilities / probabilities.sum(axis=1, keepdims=True)


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


class SplitEvaluator:
    """Loss and accuracy of one model on fixed named splits, each kept on the device.

    `metrics(name)` sums the cross-entropy and counts hits over a whole split batch by batch inside one
    `tf.function` call, so only two numbers come back to the host: it runs every `eval_every` training steps on
    the validation and test splits and would otherwise cost as much as the steps in between.
    """

    def __init__(self, model: keras.Model, splits: dict[str, tuple[np.ndarray, np.ndarray]],
                 batch_size: int = EVAL_BATCH):
        self.model = model
        self.batch_size = batch_size
        self.labels = {name: np.asarray(labels) for name, (_, labels) in splits.items()}
        self._images = {name: tf.constant(images) for name, (images, _) in splits.items()}
        self._labels = {name: tf.constant(labels, tf.int32) for name, labels in self.labels.items()}
        self._loss_and_correct = tf.function(self._split_loss_and_correct)
        self._inference = tf.function(lambda images: self.model(images, training=False))

    def metrics(self, name: str) -> dict[str, float]:
        """`{name}_loss` (mean cross-entropy) and `{name}_acc` (percent) of the model's current weights."""
        total, correct = self._loss_and_correct(self._images[name], self._labels[name])
        count = len(self.labels[name])
        return {f"{name}_loss": float(total) / count, f"{name}_acc": 100.0 * int(correct) / count}

    def logits(self, name: str) -> np.ndarray:
        return batched_logits(self._inference, self._images[name], self.batch_size)

    def _split_loss_and_correct(self, x: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        size = self.batch_size
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
