"""Pruning-at-initialisation scores: which weights a criterion would keep before any training.

SNIP (Lee, Ajanthan & Torr, ICLR 2019, "SNIP: Single-shot Network Pruning based on Connection Sensitivity") scores
each weight by |∂L/∂w · w| at the initial weights, on a batch of training data: how much the loss would change
if the connection were removed. The ES667 study's future work asks for exactly this, an early prediction of
winning tickets, and the `snip` strategy holds it against IMP at the same per-layer sparsity.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from lottery_keras.nn.models import MaskedModel

SNIP_SAMPLES = 1000  # the first training samples the scores average over (SNIP used one batch; more is steadier)


def snip_scores(model: MaskedModel, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """|∂L/∂w · w| per kernel of every masked layer, at the model's current weights and masks, with L the mean
    cross-entropy over `x`, `y`."""
    layers = model.masked_layers()
    kernels = [layer.kernel for layer in layers]
    with tf.GradientTape() as tape:
        logits = tf.cast(model(tf.constant(x), training=False), tf.float32)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(tf.constant(y, tf.int32), logits))
    gradients = tape.gradient(loss, kernels)
    return {layer.name: np.abs(keras.ops.convert_to_numpy(gradient) * keras.ops.convert_to_numpy(kernel))
            for layer, kernel, gradient in zip(layers, kernels, gradients)}
