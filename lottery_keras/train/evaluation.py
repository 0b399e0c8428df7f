"""Evaluating a model: loss and accuracy of a whole split in one device call, logits batch by batch, calibration,
and robustness (common corruptions, FGSM). Shared by the early-stop recorder (every `eval_every` steps), the
controller (robustness per round) and export (Keras vs TFLite)."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from lottery_keras.config import CORRUPTIONS

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


# ---------------------------------------------------------------------------------------------- robustness
# Common corruptions, generated on the fly in pixel space ([0, 1], before normalisation) with the parameters of
# `config.CORRUPTIONS`, and FGSM. The maintained corruption libraries (imagecorruptions, ImageNet-C) target ≥ 32-pixel
# colour photographs; these four are defined for any image size and channel count.


def _gaussian_noise(pixels: tf.Tensor, sigma: float) -> tf.Tensor:
    return pixels + sigma * tf.random.stateless_normal(tf.shape(pixels), seed=[0, 0])  # the same draw every time


def _gaussian_blur(pixels: tf.Tensor, sigma: float) -> tf.Tensor:
    offsets = np.arange(-int(np.ceil(2 * sigma)), int(np.ceil(2 * sigma)) + 1, dtype=np.float32)
    taps = np.exp(-offsets**2 / (2 * sigma**2))
    kernel = np.outer(taps, taps) / np.outer(taps, taps).sum()
    channels = int(pixels.shape[-1])
    filters = tf.constant(np.tile(kernel[:, :, None, None], (1, 1, channels, 1)), tf.float32)
    return tf.nn.depthwise_conv2d(pixels, filters, strides=[1, 1, 1, 1], padding="SAME")


def _contrast(pixels: tf.Tensor, factor: float) -> tf.Tensor:
    mean = tf.reduce_mean(pixels, axis=[1, 2, 3], keepdims=True)
    return (pixels - mean) * factor + mean


def _rotation(pixels: tf.Tensor, degrees: float) -> tf.Tensor:
    angle = np.deg2rad(degrees)
    cy, cx = (int(pixels.shape[1]) - 1) / 2, (int(pixels.shape[2]) - 1) / 2
    cos, sin = np.cos(angle), np.sin(angle)  # output (x, y) samples input (cos·x − sin·y + …, sin·x + cos·y + …)
    transform = [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0]
    transforms = tf.tile(tf.constant([transform], tf.float32), [tf.shape(pixels)[0], 1])
    return keras.ops.image.affine_transform(pixels, transforms, interpolation="bilinear", fill_mode="constant")


_CORRUPT = {"gaussian_noise": _gaussian_noise, "gaussian_blur": _gaussian_blur, "contrast": _contrast,
            "rotation": _rotation}


@dataclasses.dataclass(frozen=True)
class Normalisation:
    """The dataset's per-channel mean and std: model inputs are (pixels − mean) / std."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def spanning(cls, x: np.ndarray) -> "Normalisation":
        """The map of each channel's range in `x` onto [0, 1], for images with no known pixel scale: pixels
        (x − low) / span are (x − mean) / std with mean = −low / span, std = 1 / span (a constant channel, span 1,
        maps to 0)."""
        axes = tuple(range(x.ndim - 1))
        low = x.min(axis=axes).astype(np.float64)
        span = x.max(axis=axes) - low
        span = np.where(span > 0, span, 1.0)
        return cls(tuple(map(float, -low / span)), tuple(map(float, 1 / span)))

    def to_pixels(self, x):
        return x * np.asarray(self.std, np.float32) + np.asarray(self.mean, np.float32)

    def to_inputs(self, pixels):
        return (pixels - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)


def corruption_accuracies(model: keras.Model, x: np.ndarray, y: np.ndarray, normalisation: Normalisation,
                          batch_size: int = EVAL_BATCH) -> dict[tuple[str, int], float]:
    """Accuracy (percent) under every corruption at every severity, keyed by (corruption, severity)."""
    pixels = normalisation.to_pixels(tf.constant(x))
    scores = {}
    for name, (_, parameters) in CORRUPTIONS.items():
        for severity, parameter in enumerate(parameters, start=1):
            corrupted = normalisation.to_inputs(tf.clip_by_value(_CORRUPT[name](pixels, parameter), 0.0, 1.0))
            scores[name, severity] = accuracy(batched_logits(model, corrupted, batch_size), y)
    return scores


def fgsm_accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray, normalisation: Normalisation, epsilon: float,
                  batch_size: int = EVAL_BATCH) -> float:
    """Accuracy (percent) under the fast gradient sign attack (Goodfellow et al., 2015) of pixel size `epsilon`."""
    hits = 0
    for start in range(0, len(x), batch_size):
        inputs = tf.constant(x[start:start + batch_size])
        labels = tf.constant(y[start:start + batch_size], tf.int32)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            logits = tf.cast(model(inputs, training=False), tf.float32)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        step = epsilon * tf.sign(tape.gradient(loss, inputs))  # the sign is that of the pixel-space gradient
        attacked = normalisation.to_inputs(tf.clip_by_value(normalisation.to_pixels(inputs) + step, 0.0, 1.0))
        predictions = tf.argmax(model(attacked, training=False), axis=1, output_type=tf.int32)
        hits += int(tf.reduce_sum(tf.cast(predictions == labels, tf.int32)))
    return 100.0 * hits / len(x)


# ---------------------------------------------------------------------------------------------- stability

INTERPOLATION_POINTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def interpolation_accuracies(model: keras.Model, first: list[np.ndarray], second: list[np.ndarray], x: np.ndarray,
                             y: np.ndarray) -> dict[float, float]:
    """Accuracy (percent) of `model` at weights (1 − α)·first + α·second for each α of `INTERPOLATION_POINTS`
    (`get_weights()` lists); the model is left at `first`."""
    accuracies = {}
    for alpha in INTERPOLATION_POINTS:
        model.set_weights([(1.0 - alpha) * a + alpha * b for a, b in zip(first, second)])
        accuracies[alpha] = accuracy(batched_logits(model, x), y)
    model.set_weights(first)
    return accuracies


def error_barrier(accuracies: dict[float, float]) -> float:
    """Instability (Frankle et al., 2020, "Linear Mode Connectivity and the Lottery Ticket Hypothesis"): how far
    the error along the path rises above the mean error of its two ends, in points (about 0: stable)."""
    errors = {alpha: 100.0 - acc for alpha, acc in accuracies.items()}
    ends = (errors[INTERPOLATION_POINTS[0]] + errors[INTERPOLATION_POINTS[-1]]) / 2
    return max(errors.values()) - ends
