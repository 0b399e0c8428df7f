"""FusedAdam: Keras's Adam arithmetic in TensorFlow's fused kernel."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from lottery_keras.nn import models
from lottery_keras.train import loop as training
from lottery_keras.train.optimizers import FusedAdam


def numpy_adam(theta, grads, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    """Adam exactly as Keras writes it, in float64."""
    m, v = np.zeros_like(theta), np.zeros_like(theta)
    for t, g in enumerate(grads, start=1):
        m += (g - m) * (1 - beta_1)
        v += (g * g - v) * (1 - beta_2)
        theta = theta - lr * np.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t) * m / (np.sqrt(v) + epsilon)
    return theta


@pytest.mark.parametrize("jit, strategy", [(False, None), (True, None), (False, "one_device")])
def test_fused_adam_follows_the_adam_formula(jit, strategy):
    """Both update paths: per variable as gradients arrive (no strategy), and Keras's all-reduce first."""
    rng = np.random.default_rng(0)
    theta0 = rng.normal(size=(4, 3))
    grads = [rng.normal(size=(4, 3)) for _ in range(5)]
    scope = tf.distribute.OneDeviceStrategy("/cpu:0") if strategy else tf.distribute.get_strategy()
    with scope.scope():
        variable = keras.Variable(theta0.astype("float32"))
        optimizer = FusedAdam(learning_rate=0.01)
        optimizer.build([variable])

    @tf.function(jit_compile=jit)
    def apply(gradient):
        scope.run(lambda g: optimizer.apply([g], [variable]), args=(gradient,))

    for g in grads:
        apply(tf.constant(g, tf.float32))
    expected = numpy_adam(theta0, grads, lr=0.01)
    assert np.max(np.abs(expected - theta0)) > 0.03  # it moved
    np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), expected, rtol=1e-5, atol=1e-6)
    assert int(optimizer.iterations.numpy()) == len(grads)


def test_fused_adam_trains_lenet5_like_keras_adam(mnist_small):
    """50 steps of LeNet-5 on real MNIST: the same weights as Keras's own Adam, within float round-off."""
    x, y = mnist_small.x_train[:3000], mnist_small.y_train[:3000]
    trained = []
    for optimizer in (FusedAdam(1.2e-3), keras.optimizers.Adam(1.2e-3)):
        model = models.build_model("lenet5", (28, 28, 1), seed=3)
        model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=60, epochs=1, shuffle=False, verbose=0)
        trained.append(model.get_weights())
    theta0 = models.build_model("lenet5", (28, 28, 1), seed=3).get_weights()
    assert max(float(np.max(np.abs(w - w0))) for w, w0 in zip(trained[0], theta0)) > 1e-2
    for fused, reference in zip(*trained):
        np.testing.assert_allclose(fused, reference, rtol=1e-4, atol=1e-5)


def test_compile_model_uses_fused_adam_and_it_round_trips():
    model = models.build_model("lenet300_100", (28, 28, 1), seed=0)
    training.compile_model(model, learning_rate=1.2e-3, epsilon=1e-8)
    assert isinstance(model.optimizer, FusedAdam)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(model.optimizer))
    assert isinstance(restored, FusedAdam)
    assert restored.get_config() == model.optimizer.get_config()


def test_each_update_waits_only_for_its_own_gradient():
    """No all-reduce op between the gradients and the updates (on one device Keras's is an IdentityN that holds
    every update until the last gradient), and the step's β powers are computed once, not per variable."""
    model = models.build_model("lenet5", (28, 28, 1), seed=0)
    training.compile_model(model, learning_rate=1.2e-3)
    step = tf.function(model.train_step).get_concrete_function(
        (tf.TensorSpec([60, 28, 28, 1], tf.float32), tf.TensorSpec([60], tf.int32)))
    operations = step.graph.get_operations()
    updates = [op for op in operations if op.type == "ResourceApplyAdam"]
    assert len(updates) == len(model.trainable_variables) == 10
    assert not [op for op in operations if op.type == "IdentityN"]
    assert sum(op.type == "Pow" for op in operations) == 2
