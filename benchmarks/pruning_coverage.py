"""How much of a model `prune_low_magnitude` actually prunes: for twelve models of the kinds Keras 3 users bring
(text, attention, RNNs, regression, segmentation, Keras Applications), the share of the weights held in weight
matrices (every weight of two or more dimensions) that are zero after one `fit` step at a constant 80 % target.

Each model is wrapped, trained one step on random inputs of its shape (mean squared error against zeros, so any
model trains) with `UpdatePruningStep`, stripped with `strip_pruning`, and its exact zeros counted; a share of
0.80 means nothing was left dense (a little under it where biases are matrices: `MultiHeadAttention`'s are).
Warnings `prune_low_magnitude` gives are printed with their model, and a model it refuses is a row saying why. Only the
tfmot-style API is used, so the same script measures older versions of the toolkit
(`PYTHONPATH=<old checkout> python benchmarks/pruning_coverage.py`).

Run from the repository root:
    python benchmarks/pruning_coverage.py            # a table, and the mean share
    python benchmarks/pruning_coverage.py --json     # one JSON list on stdout, nothing else
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
logging.getLogger("tensorflow").setLevel(logging.ERROR)  # each model's first fit traces anew, as it should

import keras  # noqa: E402
import numpy as np  # noqa: E402

import lottery_keras as lk  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from prunable_models import (ScaledDense, TransformerBlock, convnext_model, lstm_model, token_model,  # noqa: E402
                             vit_model)

TARGET = 0.8


def gru_text_classifier() -> keras.Model:
    tokens = keras.Input((64,), dtype="int32")
    x = keras.layers.Embedding(5000, 64)(tokens)
    x = keras.layers.Bidirectional(keras.layers.GRU(32))(x)
    return keras.Model(tokens, keras.layers.Dense(1)(x))


def transformer_text_classifier() -> keras.Model:
    tokens = keras.Input((64,), dtype="int32")
    x = keras.layers.Embedding(5000, 64)(tokens)
    x = TransformerBlock(64, 4)(TransformerBlock(64, 4)(x))
    return keras.Model(tokens, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(x)))


def unet_segmenter() -> keras.Model:
    images = keras.Input((32, 32, 3))
    down = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(images)
    x = keras.layers.SeparableConv2D(32, 3, strides=2, padding="same", activation="relu")(down)
    x = keras.layers.Conv2DTranspose(16, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Concatenate()([x, down])
    return keras.Model(images, keras.layers.Conv2D(4, 1)(x))


def regression_mlp() -> keras.Model:
    features = keras.Input((20,))
    trunk = keras.Sequential([ScaledDense(64, activation="relu"), keras.layers.BatchNormalization(),
                              keras.layers.Dense(64, activation="relu")])
    return keras.Model(features, keras.layers.Dense(1)(trunk(features)))


def sequence_autoencoder() -> keras.Model:
    frames = keras.Input((10, 16))
    x = keras.layers.TimeDistributed(keras.layers.Dense(32, activation="relu"))(frames)
    x = keras.layers.LSTM(16)(x)
    x = keras.layers.RepeatVector(10)(x)
    x = keras.layers.SimpleRNN(16, return_sequences=True)(x)
    return keras.Model(frames, keras.layers.TimeDistributed(keras.layers.Dense(16))(x))


MODELS = {
    "row LSTM (tests)": lstm_model,
    "ViT, custom block (tests)": vit_model,
    "token embedding (tests)": token_model,
    "ConvNeXt-style nested (tests)": convnext_model,
    "GRU text classifier": gru_text_classifier,
    "transformer text classifier": transformer_text_classifier,
    "U-Net-style segmenter": unet_segmenter,
    "regression MLP, nested": regression_mlp,
    "sequence autoencoder": sequence_autoencoder,
    "ConvNeXtTiny (Applications)": lambda: keras.applications.ConvNeXtTiny(weights=None, input_shape=(32, 32, 3),
                                                                          classes=10),
    "MobileNetV2 (Applications)": lambda: keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3),
                                                                        alpha=0.35, classes=10),
    "EfficientNetB0 (Applications)": lambda: keras.applications.EfficientNetB0(weights=None, input_shape=(32, 32, 3),
                                                                              classes=10),
}


def random_batch(model: keras.Model, size: int = 4):
    rng = np.random.default_rng(0)
    inputs = [rng.integers(0, 100, (size, *spec.shape[1:])).astype(spec.dtype) if "int" in str(spec.dtype)
              else rng.standard_normal((size, *spec.shape[1:])).astype("float32") for spec in model.inputs]
    targets = [np.zeros((size, *output.shape[1:]), "float32") for output in model.outputs]
    return (inputs[0] if len(inputs) == 1 else inputs), (targets[0] if len(targets) == 1 else targets)


def share_pruned(make) -> tuple[int, float, list[str]]:
    """(weights in matrices, the share of them zero after one pruned step, the warnings given)."""
    model = make()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruned = lk.prune_low_magnitude(model, lk.ConstantSparsity(TARGET, begin_step=0, frequency=1))
    pruned.compile(optimizer="adam", loss="mse")
    inputs, targets = random_batch(model)
    pruned.fit(inputs, targets, epochs=1, verbose=0, callbacks=[lk.UpdatePruningStep()])
    matrices = [keras.ops.convert_to_numpy(weight) for weight in lk.strip_pruning(pruned).weights
                if len(weight.shape) >= 2]
    size = sum(matrix.size for matrix in matrices)
    notes = [str(warning.message) for warning in caught if "prune_low_magnitude" in str(warning.message)]
    return size, sum(int((matrix == 0).sum()) for matrix in matrices) / size, notes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print only a JSON list of the rows")
    args = parser.parse_args(argv)
    rows = []
    for name, make in MODELS.items():
        try:
            size, share, notes = share_pruned(make)
        except Exception as error:  # an older toolkit refusing the model: a row saying so
            size, share, notes = 0, float("nan"), [f"refused: {type(error).__name__}: {str(error)[:200]}"]
        rows.append({"model": name, "matrix_weights": size, "share_pruned": round(share, 4), "warnings": notes})
    if args.json:
        print(json.dumps(rows))
        return
    print(f"share of the weight matrices pruned at a {TARGET:.0%} target, one fit step")
    for row in rows:
        print(f"{row['model']:<32}{row['matrix_weights']:>12,}{row['share_pruned']:>8.3f}")
        for note in row["warnings"]:
            print(f"    warning: {note}")
    shares = [row["share_pruned"] for row in rows if row["matrix_weights"]]
    print(f"{f'mean over the {len(shares)} models pruned':<44}{np.mean(shares):>8.3f}")


if __name__ == "__main__":
    main()
