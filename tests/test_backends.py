"""The pruning API under the JAX backend, in a process where TensorFlow, tf-keras and tfmot cannot be imported
(as for a JAX user who has none of them): an LSTM, attention and an embedding on MNIST rows prune during `fit`,
report, strip and reload."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import sys

    class NoTensorFlow:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "tf_keras", "tensorflow_model_optimization"):
                raise ImportError(f"{name} is not installed here")

    sys.meta_path.insert(0, NoTensorFlow())
    import keras
    import numpy as np
    import lottery_keras
    from lottery_keras import data

    assert keras.backend.backend() == "jax"
    splits = data.load("mnist").head(train=1200)
    rows, labels = splits.x_train[..., 0], splits.y_train
    inputs = keras.Input((28, 28))
    x = keras.layers.LSTM(16, return_sequences=True, name="lstm")(inputs)
    x = keras.layers.MultiHeadAttention(2, 8, name="attention")(x, x)
    tokens = keras.layers.Embedding(8, 4, name="embedding")(
        keras.ops.cast(keras.ops.clip((x[..., 0] + 1) * 4, 0, 7), "int32"))
    x = keras.layers.Concatenate()([keras.layers.Flatten()(x), keras.layers.Flatten()(tokens)])
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))
    def pruned_model():
        pruned = lottery_keras.prune_low_magnitude(model, lottery_keras.ConstantSparsity(0.7, frequency=5))
        pruned.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return pruned

    try:
        pruned_model().fit(rows, labels, verbose=0)
        raise SystemExit("trained without UpdatePruningStep")
    except lottery_keras.PruningError:
        pass
    pruned = pruned_model()
    pruned.fit(rows, labels, batch_size=60, epochs=1, verbose=0, callbacks=[lottery_keras.UpdatePruningStep()])
    report = lottery_keras.sparsity_report(pruned)
    print(report[["layer", "weight", "sparsity"]].to_json(orient="records"))
    plain = lottery_keras.strip_pruning(pruned)
    np.testing.assert_allclose(plain.predict(rows[:64], verbose=0), pruned.predict(rows[:64], verbose=0),
                               atol=1e-5)
    pruned.save(sys.argv[1])
    keras.models.load_model(sys.argv[1])
    assert "tensorflow" not in sys.modules
    print("ok")
""")


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed (the test extra has it)")
def test_the_pruning_api_runs_under_jax_without_tensorflow(tmp_path):
    environment = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "pruned.keras")], capture_output=True,
                            text=True, env=environment, timeout=600)
    assert result.stdout.strip().endswith("ok"), result.stderr[-3000:]
    rows = json.loads(result.stdout.strip().splitlines()[-2])
    pruned = {(row["layer"], row["weight"]): row["sparsity"] for row in rows if row["layer"] != "total"}
    assert {layer for layer, _ in pruned} == {"prune_low_magnitude_lstm", "prune_low_magnitude_attention",
                                              "prune_low_magnitude_embedding", "prune_low_magnitude_logits"}
    assert all(abs(sparsity - 0.7) < 0.02 for sparsity in pruned.values()), pruned  # 0.7 of a table of 32: 0.69
