"""Pruning any Keras 3 model with tfmot's API (`lottery_keras.sparsity`): schedules that agree with tfmot's, a
residual functional model and MobileNetV2 pruned during `fit` on real data, stripped back to plain Keras layers and
exported to TFLite, and clear errors for what cannot be pruned."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import lottery_keras
from lottery_keras import data
from lottery_keras.deploy.tflite import TFLiteRunner, to_tflite
from lottery_keras.sparsity import (ConstantSparsity, PolynomialDecay, PruneLowMagnitude, PruningError,
                                    UpdatePruningStep, prune_low_magnitude, pruned_layers, strip_pruning)


def test_schedules_agree_with_tfmot():
    import tensorflow as tf
    from tensorflow_model_optimization.python.core.sparsity.keras import pruning_schedule as tfmot

    pairs = [(ConstantSparsity(0.7, begin_step=20, end_step=200, frequency=30),
              tfmot.ConstantSparsity(0.7, begin_step=20, end_step=200, frequency=30)),
             (PolynomialDecay(0.1, 0.9, begin_step=10, end_step=250, power=3, frequency=25),
              tfmot.PolynomialDecay(0.1, 0.9, begin_step=10, end_step=250, power=3, frequency=25))]
    for ours, theirs in pairs:
        for step in range(0, 300, 5):
            should_prune, sparsity = theirs(tf.constant(step, tf.int64))
            assert ours(step)[0] == bool(should_prune), (type(ours).__name__, step)
            assert ours(step)[1] == pytest.approx(float(sparsity), abs=1e-6), (type(ours).__name__, step)


def residual_model() -> keras.Model:
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    y = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="branch")(x)
    x = keras.layers.MaxPooling2D()(keras.layers.Add()([x, y]))
    x = keras.layers.Dense(64, activation="relu", name="hidden")(keras.layers.Flatten()(x))
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))


def compile_for_fit(model: keras.Model) -> keras.Model:
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def test_a_residual_model_prunes_during_fit_and_strips_to_plain_keras(tmp_path):
    splits = data.load("mnist").head(train=6000)
    model = residual_model()
    pruned = lottery_keras.prune_low_magnitude(model, PolynomialDecay(0.0, 0.8, begin_step=0, end_step=150,
                                                                      frequency=10))
    for original, wrapped in zip(model.layers[1:3], pruned.layers[1:3]):  # weights kept
        np.testing.assert_array_equal(original.get_weights()[0], wrapped.layer.get_weights()[0])
    compile_for_fit(pruned).fit(splits.x_train, splits.y_train, batch_size=60, epochs=2, verbose=0,
                                callbacks=[UpdatePruningStep()])
    for layer in pruned_layers(pruned):
        (kernel, mask), = layer.pruned_weights
        kernel = keras.ops.convert_to_numpy(kernel)
        assert (kernel == 0).mean() == pytest.approx(0.8, abs=0.01), layer.name
        np.testing.assert_array_equal(kernel == 0, keras.ops.convert_to_numpy(mask) == 0)
    assert pruned.evaluate(splits.x_test, splits.y_test, verbose=0)[1] > 0.8
    plain = strip_pruning(pruned)
    assert not any(isinstance(layer, PruneLowMagnitude) for layer in plain.layers)
    assert {type(layer).__module__.split(".")[0] for layer in plain.layers} == {"keras"}
    x = splits.x_test[:300]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(plain(x)), keras.ops.convert_to_numpy(pruned(x)),
                               atol=1e-5)
    plain.save(tmp_path / "plain.keras")
    reloaded = keras.models.load_model(tmp_path / "plain.keras")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded(x)), keras.ops.convert_to_numpy(plain(x)))
    pruned.save(tmp_path / "pruned.keras")  # the wrapped model round-trips too, masks included
    again = keras.models.load_model(tmp_path / "pruned.keras")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(again.get_layer("prune_low_magnitude_hidden").masks[0]),
                                  keras.ops.convert_to_numpy(pruned.get_layer("prune_low_magnitude_hidden").masks[0]))


def test_mobilenet_v2_prunes_strips_and_exports_to_tflite():
    splits = data.load("cifar10").head(train=600)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), alpha=0.35, classes=10,
                                           classifier_activation=None)
    pruned = prune_low_magnitude(model, ConstantSparsity(0.5, begin_step=0, frequency=5))
    depthwise = [layer for layer in pruned_layers(pruned) if isinstance(layer.layer, keras.layers.DepthwiseConv2D)]
    assert len(depthwise) == 17 and len(pruned_layers(pruned)) == 53
    compile_for_fit(pruned).fit(splits.x_train, splits.y_train, batch_size=60, epochs=1, verbose=0,
                                callbacks=[UpdatePruningStep()])
    for layer in pruned_layers(pruned):
        kernel = layer.pruned_weights[0][0]
        assert (keras.ops.convert_to_numpy(kernel) == 0).mean() == pytest.approx(0.5, abs=0.02)
    plain = strip_pruning(pruned)
    x = splits.x_test[:64]
    reference = keras.ops.convert_to_numpy(plain(x, training=False))
    np.testing.assert_allclose(reference, keras.ops.convert_to_numpy(pruned(x, training=False)), atol=1e-4)
    logits = TFLiteRunner(to_tflite(plain, "float"), batch_size=64).predict(x)
    np.testing.assert_allclose(logits, reference, atol=1e-3)


@pytest.mark.parametrize("sparsity, expected", [
    (0.25, [0, 0, 1, 1, 1, 1, 1, 1]),   # keeps all six survivors
    (0.375, [0, 0, 1, 0, 1, 1, 1, 1]),  # drops one of the two zero survivors: the later one (ties by position)
])
def test_update_mask_never_revives_a_pruned_weight_tied_with_a_zero_survivor(sparsity, expected):
    """Surviving weights that are exactly 0.0 tie with the pruned positions (|0| = 0) before them in the flat
    order; only survivors may be kept, so the mask only shrinks."""
    layer = PruneLowMagnitude(keras.layers.Dense(4, use_bias=False), ConstantSparsity(sparsity, frequency=1))
    layer.build((None, 2))
    (kernel, mask), = layer.pruned_weights
    old_mask = np.array([0, 0, 1, 1, 1, 1, 1, 1], np.float32).reshape(2, 4)
    mask.assign(old_mask)
    kernel.assign(np.array([0, 0, 0, 0, 1, 2, 3, 4], np.float32).reshape(2, 4))
    assert layer.update_masks(0)
    new_mask = keras.ops.convert_to_numpy(mask)
    assert np.all(new_mask <= old_mask)
    assert new_mask.sum() == round(8 * (1 - sparsity))
    np.testing.assert_array_equal(new_mask.reshape(-1), expected)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(kernel),
                                  np.array([0, 0, 0, 0, 1, 2, 3, 4], np.float32).reshape(2, 4) * new_mask)


def test_layers_can_be_chosen_by_name_or_predicate():
    model = residual_model()
    for choice in (["hidden"], "hidden"):
        only = prune_low_magnitude(model, layers=choice)
        assert [layer.name for layer in pruned_layers(only)] == ["prune_low_magnitude_hidden"]
    with pytest.raises(PruningError, match=r"cannot prune add(_\d+)? \(Add\); prunable layers are those with a kernel"):
        prune_low_magnitude(model, layers=["hidden", next(layer.name for layer in model.layers
                                                          if isinstance(layer, keras.layers.Add))])
    convs = prune_low_magnitude(model, layers=lambda layer: isinstance(layer, keras.layers.Conv2D))
    assert len(pruned_layers(convs)) == 2
    with pytest.raises(PruningError, match="no layer named hiden"):
        prune_low_magnitude(model, layers=["hiden"])


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(3)

    def call(self, inputs):
        return self.dense(inputs)


@pytest.mark.parametrize("make, message", [
    (lambda: Subclassed()(np.zeros((1, 4))) and None, None),
    (lambda: keras.Sequential([keras.Input((4,)), keras.layers.Flatten(), keras.layers.Activation("relu")]),
     "has no layer to prune"),
    (lambda: "dense", "takes a Keras model, a layer or a list of layers, not str"),
])
def test_what_cannot_be_pruned_is_one_clear_error(make, message):
    if message is None:  # a subclassed model without get_config
        model = Subclassed()
        model(np.zeros((1, 4), np.float32))
        make, message = (lambda: model), "needs a Sequential or functional model"
    with pytest.raises(PruningError, match=message):
        prune_low_magnitude(make())
    with pytest.raises(PruningError, match=r"batch_normalization(_\d+)? \(BatchNormalization\) has no weight to prune"):
        PruneLowMagnitude(keras.layers.BatchNormalization()).build((None, 4))
    with pytest.raises(ValueError, match="target_sparsity must lie in"):
        ConstantSparsity(1.2)
