"""The step schedule both training paths share: which samples each step sees, its learning rate, where a call
returns to the host, and a fresh optimizer per round. `loop.CompiledLoop` and `sparse.SparseMlpTrainer` follow it
exactly, so they train on the same batches in the same order at the same rates."""

from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator

import keras
import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class LearningRateSchedule:
    """The learning rate of each step: a linear warm-up over the first `warmup` steps, then `base`, multiplied by
    `factor` at each step of `drops` (step decay). Step s (0-based) trains at `at(s)`."""

    base: float
    warmup: int = 0
    drops: tuple[int, ...] = ()
    factor: float = 0.1

    @property
    def is_constant(self) -> bool:
        return self.warmup == 0 and not self.drops

    def final(self) -> "LearningRateSchedule":
        """The rate the schedule ends at, held constant (fine-tuning continues there)."""
        return LearningRateSchedule(self.base * self.factor ** len(self.drops))

    def at(self, steps: Iterable[int]) -> np.ndarray:
        """The rates of `steps`, float32: every training path reads its rates from here."""
        steps = np.asarray(steps, np.int64)
        warm = np.minimum(1.0, (steps + 1) / self.warmup) if self.warmup else np.ones(steps.shape)
        decay = self.factor ** np.searchsorted(np.asarray(self.drops, np.int64), steps, side="right")
        return (self.base * warm * decay).astype(np.float32)

    def table(self, steps: int) -> np.ndarray:
        """The rates of steps 0 … steps − 1, as a compiled loop indexes them; one entry when constant (a step
        beyond the table trains at its last rate)."""
        return self.at(range(1 if self.is_constant else steps))


def reset_optimizer(model: keras.Model) -> None:
    """Zero Adam's step count and moments (a new IMP round starts with a fresh optimizer)."""
    for variable in model.optimizer.variables:
        if variable is not model.optimizer.learning_rate:
            variable.assign(tf.zeros_like(variable))


def steps_per_epoch(num_samples: int, batch_size: int) -> int:
    """Batches per epoch; the last partial batch of an epoch is dropped."""
    if num_samples < batch_size:
        raise ValueError(f"the training split has {num_samples} samples, fewer than one batch of {batch_size}")
    return num_samples // batch_size


def epoch_permutation(seed: int, epoch, num_samples: int) -> tf.Tensor:
    """The sample order of one epoch: a deterministic function of (seed, epoch)."""
    # Integer keys: stateless float draws differ between XLA and plain TensorFlow, integer draws do not.
    seed = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
    keys = tf.random.stateless_uniform([num_samples], seed=seed, minval=None, maxval=None, dtype=tf.int64)
    return tf.argsort(keys, stable=True)


def chunk_ends(iterations: int, eval_every: int, also: Iterable[int] = ()) -> Iterator[int]:
    """Step counts at which the loop returns to the host: every evaluation point, the steps of `also` (where a
    callback wants the weights), and the end."""
    extra = sorted({step for step in also if 0 < step < iterations and step % eval_every})
    for end in range(eval_every, iterations, eval_every):
        while extra and extra[0] < end:
            yield extra.pop(0)
        yield end
    yield from extra
    yield iterations
