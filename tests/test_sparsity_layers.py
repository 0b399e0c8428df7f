"""Every prunable layer a Keras 3 model brings: embeddings, 1-D and transposed and separable convolutions, RNNs
(kernel and recurrent kernel), attention (its EinsumDense kernels), subclasses of Keras's layers, nested models
and custom layers that declare their prunable weights; guard rails and the sparsity report. On MNIST rows, read as
28-step sequences."""

from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import pytest

import lottery_keras
from lottery_keras import data
from lottery_keras.sparsity import (ConstantSparsity, PolynomialDecay, PruneLowMagnitude, PruningError,
                                    UpdatePruningStep, prune_low_magnitude, pruned_layers, sparsity_report,
                                    strip_pruning)
from prunable_models import Declared, Opaque, ScaledDense


def sequence_model() -> keras.Model:
    """Rows of an MNIST digit as a sequence of 28 steps of 28 pixels, through every layer family."""
    rows = keras.Input((28, 28), name="rows")
    x = keras.layers.Conv1D(16, 3, padding="same", activation="relu", name="conv")(rows)
    x = keras.layers.SeparableConv1D(16, 3, padding="same", activation="relu", name="separable")(x)
    x = keras.layers.Conv1DTranspose(16, 3, padding="same", activation="relu", name="transposed")(x)
    x = keras.layers.Bidirectional(keras.layers.GRU(8, return_sequences=True), name="bigru")(x)
    attention = keras.layers.MultiHeadAttention(2, 8, name="attention")(x, x)
    x = keras.layers.LayerNormalization(name="norm")(keras.layers.Add()([x, attention]))
    x = keras.layers.LSTM(16, name="lstm")(x)
    x = keras.layers.EinsumDense("ab,bc->ac", output_shape=32, activation="relu", name="einsum")(x)
    head = keras.Sequential([keras.Input((32,)), Declared(24, name="bilinear"), ScaledDense(10, name="scaled")],
                            name="head")
    return keras.Model(rows, head(x), name="sequence_model")


def token_model() -> keras.Model:
    """Pixels quantised to 8 grey levels as tokens of a 196-step sequence, through an embedding table."""
    tokens = keras.Input((196,), dtype="int32")
    x = keras.layers.Embedding(8, 16, name="embedding")(tokens)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(tokens, keras.layers.Dense(10, name="logits")(x))


@pytest.fixture(scope="module")
def rows():
    splits = data.load("mnist").head(train=3000)
    return splits.x_train[..., 0], splits.y_train, splits.x_test[:500, ..., 0], splits.y_test[:500]


EXPECTED = {  # layer → the weights pruned in it
    "prune_low_magnitude_conv": ["kernel"], "prune_low_magnitude_separable": ["depthwise_kernel",
                                                                             "pointwise_kernel"],
    "prune_low_magnitude_transposed": ["kernel"],
    "prune_low_magnitude_bigru": ["forward_gru/gru_cell/kernel", "forward_gru/gru_cell/recurrent_kernel",
                                  "backward_gru/gru_cell/kernel", "backward_gru/gru_cell/recurrent_kernel"],
    "prune_low_magnitude_attention": ["query/kernel", "key/kernel", "value/kernel", "attention_output/kernel"],
    "prune_low_magnitude_lstm": ["lstm_cell/kernel", "lstm_cell/recurrent_kernel"],
    "prune_low_magnitude_einsum": ["kernel"], "prune_low_magnitude_bilinear": ["w"],
    "prune_low_magnitude_scaled": ["kernel"],
}


def compiled(model: keras.Model) -> keras.Model:
    model.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_every_layer_family_prunes_during_fit_strips_and_reloads(rows, tmp_path):
    x, y, x_test, y_test = rows
    model = sequence_model()
    pruned = prune_low_magnitude(model, PolynomialDecay(0.0, 0.6, begin_step=0, end_step=60, frequency=10))
    np.testing.assert_array_equal(pruned.get_layer("prune_low_magnitude_conv").layer.get_weights()[0],
                                  model.get_layer("conv").get_weights()[0])  # weights kept
    compiled(pruned).fit(x, y, batch_size=50, epochs=4, verbose=0, callbacks=[UpdatePruningStep()])
    report = sparsity_report(pruned)
    pruned_rows = report[report["pruned"] & (report["layer"] != "total")]
    assert {layer: list(group["weight"]) for layer, group in pruned_rows.groupby("layer", sort=False)} == EXPECTED
    assert pruned_rows["sparsity"].between(0.59, 0.61).all(), pruned_rows
    assert 0.55 < report.iloc[-1]["sparsity"] < 0.61 and report.iloc[-1]["layer"] == "total"
    assert pruned.evaluate(x_test, y_test, verbose=0)[1] > 0.4  # it learned while it pruned (chance: 0.1)

    plain = strip_pruning(pruned)
    assert not pruned_layers(plain) and isinstance(plain.get_layer("head"), keras.Sequential)
    np.testing.assert_allclose(plain.predict(x_test, verbose=0), pruned.predict(x_test, verbose=0), atol=1e-5)
    assert sparsity_report(plain)["zeros"].sum() == report["zeros"].sum()  # the zeros stay, the masks go
    pruned.save(tmp_path / "pruned.keras")
    again = keras.models.load_model(tmp_path / "pruned.keras")
    np.testing.assert_array_equal(again.predict(x_test, verbose=0), pruned.predict(x_test, verbose=0))
    for saved, loaded in zip(pruned.get_weights(), again.get_weights()):  # the masks included
        np.testing.assert_array_equal(saved, loaded)


def test_an_embedding_table_prunes(rows, tmp_path):
    x, y, _, _ = rows
    tokens = np.clip(((x[:, ::2, ::2] + 0.43) / 3.26 * 8).astype("int32"), 0, 7).reshape(len(x), -1)
    pruned = prune_low_magnitude(token_model(), ConstantSparsity(0.8, begin_step=0, frequency=20))
    compiled(pruned).fit(tokens, y, batch_size=100, epochs=1, verbose=0, callbacks=[UpdatePruningStep()])
    report = sparsity_report(pruned).set_index("layer")
    assert report.loc["prune_low_magnitude_embedding", "weight"] == "embeddings"
    assert report.loc["prune_low_magnitude_embedding", "sparsity"] == pytest.approx(0.8, abs=0.01)
    pruned.save(tmp_path / "tokens.keras")  # and `import lottery_keras` is enough to load it, in either order
    for imports in ("import keras, lottery_keras", "import lottery_keras, keras"):
        loaded = subprocess.run([sys.executable, "-c", f"{imports}; m = keras.models.load_model("
                                 f"{str(tmp_path / 'tokens.keras')!r}); print(type(m.layers[1]).__name__)"],
                                capture_output=True, text=True)
        assert loaded.stdout.strip() == "PruneLowMagnitude", loaded.stderr[-2000:]


def test_training_without_the_callback_is_one_clear_error(rows):
    x, y, _, _ = rows
    pruned = compiled(prune_low_magnitude(token_model()))
    with pytest.raises(PruningError, match=r"^layer prune_low_magnitude_\w+ is being trained without the "
                                           r"UpdatePruningStep callback.*callbacks=\[lottery_keras"):
        pruned.fit(np.zeros((10, 196), "int32"), y[:10], verbose=0)
    pruned.fit(np.zeros((10, 196), "int32"), y[:10], verbose=0, callbacks=[UpdatePruningStep()])  # then it trains


def test_pruning_summaries_write_each_weights_sparsity_to_tensorboard(rows, tmp_path):
    import tensorflow as tf

    x, y, _, _ = rows
    tokens = np.zeros((200, 196), "int32")
    pruned = compiled(prune_low_magnitude(token_model(), ConstantSparsity(0.5, frequency=1)))
    pruned.fit(tokens, y[:200], batch_size=100, epochs=2, verbose=0,
               callbacks=[UpdatePruningStep(), lottery_keras.PruningSummaries(tmp_path)])
    scalars = {}
    for event_file in tmp_path.glob("events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(str(event_file)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                scalars[value.tag, event.step] = float(tf.make_ndarray(value.tensor))
    assert scalars[("sparsity/prune_low_magnitude_embedding/embeddings", 1)] == pytest.approx(0.5)
    assert scalars[("sparsity/total", 1)] == pytest.approx(0.5, abs=0.01)


def test_tfmots_other_forms_a_layer_a_list_and_prune_scope(tmp_path):
    dense = keras.layers.Dense(4)
    wrapped = prune_low_magnitude(dense, ConstantSparsity(0.5, frequency=1))
    assert isinstance(wrapped, PruneLowMagnitude) and wrapped.layer is dense
    layers = prune_low_magnitude([keras.layers.Conv2D(2, 3), keras.layers.Embedding(5, 3)])
    assert [type(layer.layer).__name__ for layer in layers] == ["Conv2D", "Embedding"]
    model = keras.Sequential([keras.Input((3,)), wrapped])
    model.save(tmp_path / "layer.keras")
    with lottery_keras.prune_scope():
        assert isinstance(keras.models.load_model(tmp_path / "layer.keras").layers[0], PruneLowMagnitude)


def test_what_stays_dense_is_said_once_and_bad_arguments_at_the_call():
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(2)(Opaque(40, name="opaque")(inputs)))
    with pytest.warns(UserWarning, match=r"leaves 75% of the model's weight matrices dense: layers of type Opaque "
                                         r"declare no prunable weight"):
        prune_low_magnitude(model)
    with pytest.raises(PruningError, match="cannot prune opaque \\(Opaque\\); prunable layers are those with a kernel"):
        prune_low_magnitude(model, layers=["opaque"])
    with pytest.raises(PruningError, match="pruning_schedule must be a lottery_keras schedule .* not str '0.5'"):
        prune_low_magnitude(model, "0.5")
    with pytest.raises(PruningError, match="layers must be layer names, one name or a predicate, not 5"):
        prune_low_magnitude(model, layers=5)
    with pytest.raises(ValueError, match="final_sparsity 0.1 is below initial_sparsity 0.9"):
        PolynomialDecay(0.9, 0.1, begin_step=0, end_step=100)
