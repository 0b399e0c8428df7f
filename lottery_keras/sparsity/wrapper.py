"""Pruning any Keras 3 model: tensorflow-model-optimization's `prune_low_magnitude` / `strip_pruning` API, for
Keras 3 models (tfmot's wrappers accept only tf_keras models).

`PruneLowMagnitude` is a masked wrapper (`nn.layers.MaskedWrapper`) of a `Dense`, `Conv1D`, `Conv2D`, `Conv3D` or
`DepthwiseConv2D` layer that applies its mask before every call, as tfmot's does (plain `fit` has no step that
would), and updates it to its schedule's sparsity by magnitude (`update_mask`, which `UpdatePruningStep` calls
during `fit`). `prune_low_magnitude(model)` returns a clone of a Sequential or functional model with its prunable
layers wrapped and every weight kept; `strip_pruning(model)` returns the plain layers again, kernels masked,
loading with no custom objects.
"""

from __future__ import annotations

import keras
import numpy as np

from lottery_keras.lottery.pruning import target_count
from lottery_keras.nn.layers import MaskedWrapper
from lottery_keras.nn.network import (LayerChoice, MaskedNetwork, NetworkError, check_cloneable, chosen_layers,
                                      clone_with_weights, plain_network)
from lottery_keras.sparsity.schedules import ConstantSparsity, PruningSchedule


class PruningError(NetworkError):
    """A model or layer that cannot be pruned as asked (the message says why and what to do)."""


@keras.saving.register_keras_serializable(package="lottery_keras")
class PruneLowMagnitude(MaskedWrapper):
    """A prunable layer with a magnitude mask on its kernel (see the module docstring)."""

    def __init__(self, layer: keras.layers.Layer, pruning_schedule: PruningSchedule | None = None, **kwargs):
        kwargs.setdefault("name", f"prune_low_magnitude_{layer.name}")
        try:
            super().__init__(layer, **kwargs)
        except ValueError as err:
            raise PruningError(str(err)) from None
        self.pruning_schedule = pruning_schedule or ConstantSparsity(0.5, begin_step=0, frequency=100)

    def call(self, inputs, *args, **kwargs):
        self.apply_mask()  # the optimizer's last step may have moved pruned weights
        return self.layer(inputs, *args, **kwargs)

    def update_mask(self, step: int) -> bool:
        """Prune to the schedule's sparsity at `step` if the schedule says so: keep the largest |w| (ties by
        position); pruned weights never come back. Returns whether the mask was updated."""
        should_prune, sparsity = self.pruning_schedule(step)
        if not should_prune:
            return False
        weight = keras.ops.convert_to_numpy(self.kernel)
        mask = keras.ops.convert_to_numpy(self.mask)
        keep = min(int(mask.sum()), target_count(mask.size, sparsity, 1))
        order = np.argsort(-np.abs(weight * mask).reshape(-1), kind="stable")
        new_mask = np.zeros(mask.size, np.float32)
        new_mask[order[:keep]] = 1.0
        self.mask.assign(new_mask.reshape(mask.shape))
        self.kernel.assign(weight * new_mask.reshape(mask.shape))
        return True

    def get_config(self):
        return {**super().get_config(),
                "pruning_schedule": keras.saving.serialize_keras_object(self.pruning_schedule)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["layer"] = keras.layers.deserialize(config["layer"])
        config["pruning_schedule"] = keras.saving.deserialize_keras_object(config["pruning_schedule"])
        return cls(**config)


def prune_low_magnitude(to_prune: keras.Model, pruning_schedule: PruningSchedule | None = None, *,
                        layers: LayerChoice = None) -> keras.Model:
    """A clone of a Sequential or functional Keras 3 model whose prunable layers (`nn.layers.PRUNABLE_LAYERS`) are
    wrapped in `PruneLowMagnitude` with `pruning_schedule` (default: tfmot's, 50 % from step 0, every 100 steps);
    weights are kept. `layers`: names, or a predicate, choosing which prunable layers to wrap (default: all).
    Train with the `UpdatePruningStep` callback so that the masks follow the schedule."""
    try:
        check_cloneable(to_prune, "prune_low_magnitude")
        wanted = set(chosen_layers(to_prune, layers))
    except NetworkError as err:
        raise PruningError(str(err)) from None

    def wrap(layer: keras.layers.Layer) -> keras.layers.Layer:
        copy = layer.__class__.from_config(layer.get_config())
        return PruneLowMagnitude(copy, pruning_schedule) if layer.name in wanted else copy

    return clone_with_weights(to_prune, wrap)


def strip_pruning(model: keras.Model) -> keras.Model:
    """The model with every masked layer (`PruneLowMagnitude`, or the wrappers of a lottery ticket of one's own
    model) replaced by its plain layer, kernel ⊙ mask: standard Keras layers only, so it saves and loads with no
    custom objects."""
    if not isinstance(model, MaskedNetwork):
        try:
            check_cloneable(model, "strip_pruning")
        except NetworkError as err:
            raise PruningError(str(err)) from None
    return plain_network(model)


def pruned_layers(model: keras.Model) -> list[PruneLowMagnitude]:
    return [layer for layer in model.layers if isinstance(layer, PruneLowMagnitude)]
