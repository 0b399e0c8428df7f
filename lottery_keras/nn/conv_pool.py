"""Fused CPU kernels for a convolution block: stride-1 convolution → bias → ReLU → 2×2 max-pool.

TensorFlow runs that block as five operations forward and six backward, each over every position of the
convolution's output. `conv_relu_pool` keeps TensorFlow's (oneDNN's) convolution and replaces the rest with the
custom operations of `csrc/conv_pool.cc`: one pass computes bias, ReLU and the pool and records which position of
each 2×2 window won; the backward pass scatters each pooled gradient from that one position straight into the
kernel, bias and input gradients. At most one convolution output in four receives a gradient, so this does at
most a quarter of the backward arithmetic, in two operations instead of six (what that saves:
benchmarks/README.md). Results equal the layers' own up to float summation order (tests/test_conv_pool.py).

The C++ source is built with the package's other native kernels (`native.py`); where they cannot be built the
models run the plain layers.
"""

from __future__ import annotations

import tensorflow as tf

from lottery_keras.nn.native import native_ops


def conv_relu_pool(x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor, padding: str) -> tf.Tensor:
    """max_pool_2x2(relu(conv2d(x, kernel, stride 1, padding) + bias)), NHWC, float32, square kernel, with the
    fused gradient. Requires `available()`."""
    ops = native_ops()
    if ops is None:
        raise RuntimeError("the fused conv-pool kernels are not available here (see the warning above)")
    padding = padding.upper()

    @tf.custom_gradient
    def block(x, kernel, bias):
        pooled, window = ops.lottery_bias_relu_max_pool(tf.nn.conv2d(x, kernel, 1, padding), bias)

        def gradient(d_pooled):
            d_kernel, d_bias = ops.lottery_conv_pool_filter_grad(x, window, d_pooled, kernel_size=kernel.shape[0],
                                                                 padding=padding)
            d_x = ops.lottery_conv_pool_input_grad(kernel, window, d_pooled, tf.shape(x), padding=padding)
            return d_x, d_kernel, d_bias  # TensorFlow prunes d_x where nothing needs it (the first layer)
        return pooled, gradient

    return block(x, kernel, bias)
