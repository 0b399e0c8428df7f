"""The models Keras 3 users bring, pruned end to end on MNIST slices (`prunable_models.py`): a row-by-row LSTM
with a `TimeDistributed` layer, a ViT-style model whose transformer block is a custom layer, an `Embedding` model
on token sequences and a ConvNeXt-style model of nested blocks. Every weight matrix each holds is pruned to the
schedule's sparsity with nothing left dense, pruned weights stay zero after every step, and the stripped model is
plain Keras that reloads; a custom layer prunes through `get_prunable_weights()` or through `register_prunable`."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

from lottery_keras import data
from lottery_keras.sparsity import (PolynomialDecay, UpdatePruningStep, prune_low_magnitude, pruned_layers,
                                    register_prunable, sparsity_report, strip_pruning)
from prunable_models import MODELS, Declared, Opaque, Registered

register_prunable(Registered, lambda layer: [layer.w])  # as one would for a layer type one cannot edit

TARGET = 0.8
PRUNED = {  # model → {pruned layer → the weights pruned in it}
    "lstm": {"row_embedding": ["row_dense/kernel"], "lstm": ["lstm_cell/kernel", "lstm_cell/recurrent_kernel"],
             "logits": ["kernel"]},
    "vit": {"patch_embedding": ["kernel"],
            "block": ["attention/query/kernel", "attention/key/kernel", "attention/value/kernel",
                      "attention/attention_output/kernel", "mlp_in/kernel", "mlp_out/kernel"],
            "logits": ["kernel"]},
    "tokens": {"embedding": ["embeddings"], "conv": ["kernel"], "logits": ["kernel"]},
    "convnext": {name: ["kernel"] for name in ["stem_conv", "stage1_depthwise", "stage1_expand", "stage1_project",
                                               "down_conv", "stage2_depthwise", "stage2_expand", "stage2_project",
                                               "logits"]},
}


class PrunedStayZero(keras.callbacks.Callback):
    """After every training step (and `UpdatePruningStep`): every pruned weight is zero, and no position pruned
    before has come back."""

    def __init__(self):
        super().__init__()
        self.previous: dict[str, np.ndarray] = {}
        self.steps_checked = 0

    def on_train_batch_end(self, batch, logs=None):
        for layer in pruned_layers(self.model):
            for weight, mask in layer.pruned_weights:
                values, kept = keras.ops.convert_to_numpy(weight), keras.ops.convert_to_numpy(mask)
                assert not values[kept == 0].any(), f"{weight.path}: a pruned weight is nonzero"
                assert (kept <= self.previous.get(weight.path, kept)).all(), f"{weight.path}: a pruned weight came back"
                self.previous[weight.path] = kept
        self.steps_checked += 1


@pytest.fixture(scope="module")
def mnist_slice() -> data.Splits:
    return data.load("mnist").head(train=3000, test=500)


@pytest.mark.filterwarnings("ignore:`build\\(\\)` was called on layer 'block'")  # Keras loading the plain ViT's block
@pytest.mark.parametrize("name", list(MODELS))
def test_each_weight_matrix_reaches_the_schedules_sparsity_and_strips_to_plain_keras(name, mnist_slice, tmp_path):
    make, inputs = MODELS[name]
    x, x_test = inputs(mnist_slice.x_train), inputs(mnist_slice.x_test)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left dense, so no warning
        pruned = prune_low_magnitude(make(), PolynomialDecay(0.0, TARGET, begin_step=0, end_step=100, frequency=10))
    pruned.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=["accuracy"],
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    watch = PrunedStayZero()
    pruned.fit(x, mnist_slice.y_train, batch_size=50, epochs=3, verbose=0, callbacks=[UpdatePruningStep(), watch])
    assert watch.steps_checked == 180

    report = sparsity_report(pruned)
    weights = report[report["layer"] != "total"]
    assert weights["pruned"].all()
    assert {layer.removeprefix("prune_low_magnitude_"): list(group["weight"])
            for layer, group in weights.groupby("layer", sort=False)} == PRUNED[name]
    assert weights["sparsity"].between(TARGET - 0.01, TARGET + 0.01).all(), weights
    assert pruned.evaluate(x_test, mnist_slice.y_test, verbose=0)[1] > 0.2  # it learned while pruning (chance 0.1)

    pruned.save(tmp_path / "pruned.keras")  # and the unstripped model reloads, masks and all
    again = keras.models.load_model(tmp_path / "pruned.keras")
    np.testing.assert_array_equal(again.predict(x_test, verbose=0), pruned.predict(x_test, verbose=0))

    plain = strip_pruning(pruned)
    assert not pruned_layers(plain)
    plain.save(tmp_path / "plain.keras")
    reloaded = keras.models.load_model(tmp_path / "plain.keras")  # no custom_objects: plain (or registered) layers
    np.testing.assert_allclose(reloaded.predict(x_test, verbose=0), pruned.predict(x_test, verbose=0), atol=1e-5)
    assert sparsity_report(reloaded)["zeros"].sum() == report["zeros"].sum()


@pytest.mark.parametrize("layer_type", [Declared, Registered])
def test_a_custom_layer_prunes_by_protocol_or_by_registration(layer_type, mnist_slice):
    images = keras.Input((28, 28, 1))
    hidden = layer_type(32, name="custom")(keras.layers.Flatten()(images))
    model = keras.Model(images, keras.layers.Dense(10, name="logits")(keras.ops.relu(hidden)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pruned = prune_low_magnitude(model, PolynomialDecay(0.0, TARGET, begin_step=0, end_step=20, frequency=5))
    pruned.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(mnist_slice.x_train[:1000], mnist_slice.y_train[:1000], batch_size=50, epochs=2, verbose=0,
               callbacks=[UpdatePruningStep()])
    report = sparsity_report(pruned).set_index("layer")
    assert report.loc["prune_low_magnitude_custom", "weight"] == "w"
    assert report.loc["prune_low_magnitude_custom", "sparsity"] == pytest.approx(TARGET, abs=0.01)
    undeclared = keras.layers.Dense(10)(Opaque(32)(keras.layers.Flatten()(images)))
    with pytest.warns(UserWarning, match=r"leaves 99% of the model's weight matrices dense: layers of type Opaque"):
        prune_low_magnitude(keras.Model(images, undeclared))


LAYER_TABLE = [  # (layer, input shape, the weights it prunes): the rows of docs/api.md's table
    (keras.layers.EinsumDense("abc,cd->abd", output_shape=(None, 4)), (5, 3), ["kernel"]),
    (keras.layers.Conv3D(2, 2), (4, 4, 4, 1), ["kernel"]),
    (keras.layers.Conv2DTranspose(2, 3), (6, 6, 2), ["kernel"]),
    (keras.layers.Conv3DTranspose(2, 2), (3, 3, 3, 1), ["kernel"]),
    (keras.layers.DepthwiseConv1D(3), (8, 2), ["kernel"]),
    (keras.layers.SeparableConv2D(4, 3), (6, 6, 2), ["depthwise_kernel", "pointwise_kernel"]),
    (keras.layers.SimpleRNN(4), (5, 3), ["simple_rnn_cell/kernel", "simple_rnn_cell/recurrent_kernel"]),
    (keras.layers.ConvLSTM2D(2, 3), (3, 6, 6, 1), ["conv_lstm_cell/kernel", "conv_lstm_cell/recurrent_kernel"]),
    (keras.layers.Bidirectional(keras.layers.LSTM(3)), (5, 2),
     ["forward_lstm/lstm_cell/kernel", "forward_lstm/lstm_cell/recurrent_kernel",
      "backward_lstm/lstm_cell/kernel", "backward_lstm/lstm_cell/recurrent_kernel"]),
    (keras.layers.TimeDistributed(keras.layers.Conv2D(2, 3, name="conv")), (2, 6, 6, 1), ["conv/kernel"]),
]


@pytest.mark.parametrize("layer, input_shape, expected", LAYER_TABLE, ids=lambda value: type(value).__name__)
def test_each_row_of_the_layer_table_prunes_those_weights(layer, input_shape, expected):
    inputs = keras.Input(input_shape)
    pruned = prune_low_magnitude(keras.Model(inputs, layer(inputs)), PolynomialDecay(0.0, 0.5, 0, 1, frequency=1))
    for wrapper in pruned_layers(pruned):
        wrapper.update_masks(1)
    report = sparsity_report(pruned)
    weights = report[report["layer"] != "total"]
    assert list(weights["weight"]) == expected and weights["pruned"].all()
    assert weights["sparsity"].between(0.45, 0.55).all(), weights


def test_keras_applications_convnext_is_pruned_whole():
    model = keras.applications.ConvNeXtTiny(weights=None, input_shape=(32, 32, 3), classes=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pruned = prune_low_magnitude(model, PolynomialDecay(0.0, TARGET, 0, 1, frequency=1))
    for wrapper in pruned_layers(pruned):  # the stem and downsampling layers are in nested Sequential models
        wrapper.update_masks(1)
    matrices = sum(int(np.prod(weight.shape)) for weight in model.weights if len(weight.shape) >= 2)
    assert sparsity_report(pruned).iloc[-1]["zeros"] == pytest.approx(TARGET * matrices, rel=1e-4)


def test_a_weights_own_constraint_still_applies_before_its_mask(mnist_slice):
    images = keras.Input((28, 28, 1))
    hidden = keras.layers.Dense(16, activation="relu", kernel_constraint=keras.constraints.NonNeg(),
                                name="hidden")(keras.layers.Flatten()(images))
    model = keras.Model(images, keras.layers.Dense(10, name="logits")(hidden))
    pruned = prune_low_magnitude(model, PolynomialDecay(0.0, 0.5, begin_step=0, end_step=10, frequency=5))
    pruned.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    watch = PrunedStayZero()
    pruned.fit(mnist_slice.x_train[:1000], mnist_slice.y_train[:1000], batch_size=50, verbose=0,
               callbacks=[UpdatePruningStep(), watch])
    kernel = keras.ops.convert_to_numpy(pruned.get_layer("prune_low_magnitude_hidden").layer.kernel)
    assert (kernel >= 0).all() and (kernel == 0).mean() >= 0.5 and watch.steps_checked == 20
