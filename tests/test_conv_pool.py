"""The fused conv-pool kernels (lottery_keras/nn/conv_pool.py): built from source, equal to TensorFlow's own
convolution → bias → ReLU → max-pool and its gradients, and used by the compiled loop where it should."""

from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from lottery_keras.nn import conv_pool, models, native
from lottery_keras.train import loop as training
from lottery_keras.train import plan as execution

pytestmark = pytest.mark.skipif(not native.available(), reason="no C++ compiler to build the fused kernels")

# (input side, input channels, kernel size, filters, padding): LeNet-5's two blocks, an odd side (the pool drops
# the last row and column), an even kernel under SAME (TensorFlow pads one more pixel after than before), and a
# kernel row longer than the kernels' compile-time sizes.
GEOMETRIES = [(28, 1, 5, 6, "same"), (14, 6, 5, 16, "valid"), (13, 3, 3, 5, "same"), (9, 2, 4, 3, "same"),
              (8, 12, 3, 7, "valid")]


def reference(x, kernel, bias, padding):
    return tf.nn.max_pool2d(tf.nn.relu(tf.nn.conv2d(x, kernel, 1, padding.upper()) + bias), 2, 2, "VALID")


def value_and_gradients(block, x, kernel, bias, padding, d_pooled):
    with tf.GradientTape() as tape:
        tape.watch([x, kernel, bias])
        pooled = block(x, kernel, bias, padding)
        loss = tf.reduce_sum(pooled * d_pooled)
    return [pooled, *tape.gradient(loss, [x, kernel, bias])]


@pytest.mark.parametrize("side, channels, size, filters, padding", GEOMETRIES)
def test_fused_block_and_gradients_equal_tensorflows(mnist_small, side, channels, size, filters, padding):
    rng = np.random.default_rng(side)
    images = mnist_small.x_train[:12]  # real images, tiled and cropped to the geometry's shape
    x = tf.constant(np.tile(images, (1, 1, 1, channels))[:, :side, :side] + 0.1 * rng.normal(
        size=(12, side, side, channels)), tf.float32)
    kernel = tf.constant(rng.normal(scale=0.3, size=(size, size, channels, filters)), tf.float32)
    bias = tf.constant(rng.normal(loc=-0.5, scale=0.3, size=filters), tf.float32)
    expected_shape = reference(x, kernel, bias, padding).shape
    d_pooled = tf.constant(rng.normal(size=expected_shape), tf.float32)

    fused = value_and_gradients(conv_pool.conv_relu_pool, x, kernel, bias, padding, d_pooled)
    plain = value_and_gradients(reference, x, kernel, bias, padding, d_pooled)
    assert 0.05 < float(tf.reduce_mean(tf.cast(plain[0] > 0, tf.float32))) < 0.95  # ReLU zeroes some, not all
    np.testing.assert_array_equal(fused[0].numpy(), plain[0].numpy())  # the same float operations
    for name, got, want in zip(["d_x", "d_kernel", "d_bias"], fused[1:], plain[1:]):
        scale = float(tf.reduce_max(tf.abs(want)))
        assert scale > 0, name
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-5 * scale, err_msg=name)


def test_the_kernels_reject_shapes_that_do_not_fit():
    ops = native.native_ops()
    with pytest.raises(tf.errors.InvalidArgumentError, match="bias must have one value per channel"):
        ops.lottery_bias_relu_max_pool(tf.zeros([1, 4, 4, 3]), tf.zeros([2]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="does not match the input"):
        ops.lottery_conv_pool_filter_grad(tf.zeros([1, 8, 8, 1]), tf.zeros([1, 3, 3, 2], tf.int32),
                                          tf.zeros([1, 3, 3, 2]), kernel_size=3, padding="SAME")


def test_the_library_is_cached_and_a_missing_compiler_is_a_clear_error(tmp_path, monkeypatch):
    assert native.build_library().exists()  # built once per source, TensorFlow version and flags
    monkeypatch.setenv("LOTTERY_KERAS_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler 'no-such-compiler'.*install g\\+\\+"):
        native.build_library()
    assert list(tmp_path.iterdir()) == []


def test_without_the_kernels_models_warn_once_and_train_on_plain_layers():
    """A fresh process with no compiler: one warning, then the compiled loop runs TensorFlow's own ops."""
    script = """
import warnings, numpy as np
from lottery_keras.nn import conv_pool, models, native
from lottery_keras.train import loop as training
from lottery_keras.train import plan as execution
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    assert not native.available() and not native.available()
print(len(caught), str(caught[0].message))
model = models.build_model("lenet5", (28, 28, 1), seed=0)
training.compile_model(model, 1e-3)
x = np.zeros((120, 28, 28, 1), np.float32); y = np.zeros(120, np.int32)
from lottery_keras.train import plan
print(plan.decide("lenet5", device="cpu").fused_kernels)
training.CompiledLoop(model, x, y, 60).run(0, 0, 2)
print(int(model.optimizer.iterations.numpy()))
"""
    env = {"CXX": "no-such-compiler", "LOTTERY_KERAS_CACHE_DIR": "/nonexistent/cache", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    count, message = result.stdout.splitlines()[0].split(" ", 1)
    assert count == "1" and "native kernels unavailable" in message and "install g++" in message
    assert result.stdout.splitlines()[1:3] == ["False", "2"]


def test_lenet5_trains_the_same_weights_fused_as_with_the_layers(mnist_small):
    """30 real-MNIST Adam steps of a masked LeNet-5: fused kernels against the plain layers, same batches."""
    x, y = mnist_small.x_train[:3000], mnist_small.y_train[:3000]
    twins = []
    for fused_conv_pool in (True, False):
        model = models.build_model("lenet5", (28, 28, 1), seed=3,
                                   execution=models.Execution(fused_conv_pool=fused_conv_pool))
        rng = np.random.default_rng(4)
        model.set_masks({layer.name: (rng.random(layer.kernel.shape) < 0.5).astype(np.float32)
                         for layer in model.masked_layers()})
        training.compile_model(model, 1.2e-3)
        twins.append(model)
    fused, plain = twins
    theta0 = plain.get_weights()
    training.CompiledLoop(fused, x, y, 60).run(5, 0, 30)
    training.CompiledLoop(plain, x, y, 60).run(5, 0, 30)
    assert max(float(np.max(np.abs(w - w0))) for w, w0 in zip(plain.get_weights(), theta0)) > 1e-2
    for a, b in zip(fused.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    for layer in fused.masked_layers():  # pruned weights stay exactly zero
        assert np.all(keras.ops.convert_to_numpy(layer.kernel)[keras.ops.convert_to_numpy(layer.mask) == 0] == 0)


def test_the_plan_fuses_lenet5_on_cpu_by_default_and_never_under_xla():
    x, y = np.zeros((120, 28, 28, 1), np.float32), np.zeros(120, np.int32)
    plan = execution.decide("lenet5", device="cpu")
    assert plan.fused_kernels and not plan.jit_compile
    assert not execution.decide("lenet5", device="cpu", jit_compile=True).fused_kernels
    lenet5 = models.build_model("lenet5", (28, 28, 1), seed=0, execution=plan.model_execution)
    training.compile_model(lenet5, 1e-3)
    graph = tf.function(lenet5).get_concrete_function(tf.TensorSpec([60, 28, 28, 1], tf.float32)).graph
    assert sum(op.type == "LotteryBiasReluMaxPool" for op in graph.get_operations()) == 2 * plan.batch_shards
    assert not any(op.type == "MaxPool" for op in graph.get_operations())
    with pytest.raises(ValueError, match="XLA cannot compile"):
        training.CompiledLoop(lenet5, x, y, 60, jit_compile=True)
