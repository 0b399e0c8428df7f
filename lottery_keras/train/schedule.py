"""The step schedule both training paths share: which samples each step sees, where a call returns to the host,
and a fresh optimizer per round. `loop.CompiledLoop` and `sparse.SparseMlpTrainer` follow it exactly, so they train
on the same batches in the same order."""

from __future__ import annotations

from typing import Iterator

import keras
import tensorflow as tf


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


def chunk_ends(iterations: int, eval_every: int) -> Iterator[int]:
    """Step counts at which the loop returns to the host: every evaluation point, and the end."""
    yield from range(eval_every, iterations, eval_every)
    yield iterations
