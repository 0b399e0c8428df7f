"""`sparsity_report(model)`: how sparse each prunable weight of a model is, as a pandas table."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd

from lottery_keras.sparsity.layer import PruneLowMagnitude
from lottery_keras.sparsity.prunable import prunable_weights

COLUMNS = ["layer", "weight", "shape", "size", "zeros", "sparsity", "pruned"]


def leaf_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers of `model` and of the models nested in it, a `PruneLowMagnitude` counting as one layer."""
    leaves = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            leaves += leaf_layers(layer)
        else:
            leaves.append(layer)
    return leaves


def pruned_layers(model: keras.Model) -> list[PruneLowMagnitude]:
    """The `PruneLowMagnitude` layers of `model`, nested models included."""
    return [layer for layer in leaf_layers(model) if isinstance(layer, PruneLowMagnitude)]


def sparsity_report(model: keras.Model) -> pd.DataFrame:
    """Per prunable weight of `model` (pruned or not, nested models included): its size, how many of its values
    are exactly zero and the share they make, and whether a `PruneLowMagnitude` masks it; a last row `total`
    sums them.

    Args:
        model: Any built Keras model, pruned (`prune_low_magnitude`), stripped or plain.

    Returns:
        A DataFrame with columns `layer`, `weight`, `shape`, `size`, `zeros`, `sparsity` (0–1), `pruned`.
    """
    rows = []
    for layer in leaf_layers(model):
        pruned = isinstance(layer, PruneLowMagnitude)
        inner = layer.layer if pruned else layer
        for weight in prunable_weights(inner):
            values = keras.ops.convert_to_numpy(weight)
            zeros = int(np.count_nonzero(values == 0))
            rows.append({"layer": layer.name, "weight": weight.path.split(f"{inner.name}/", 1)[-1],
                         "shape": tuple(weight.shape), "size": values.size, "zeros": zeros,
                         "sparsity": zeros / values.size, "pruned": pruned})
    table = pd.DataFrame(rows, columns=COLUMNS)
    size, zeros = int(table["size"].sum()), int(table["zeros"].sum())
    total = {"layer": "total", "weight": "", "shape": (), "size": size, "zeros": zeros,
             "sparsity": zeros / size if size else 0.0, "pruned": bool(table["pruned"].any())}
    return pd.concat([table, pd.DataFrame([total], columns=COLUMNS)], ignore_index=True)
