"""`PruneLowMagnitude`: any Keras layer with a magnitude mask on each of its prunable weights (`prunable.py`).

The wrapper applies its masks before every call, as tfmot's does (plain `fit` has no step that would), and updates
them to its schedule's sparsity by magnitude (`update_masks`, which `UpdatePruningStep` calls during `fit`); each
weight keeps its own share, like tfmot's per-weight masks. Training a wrapped layer without the callback is an
error at the first training call, since its masks would never change.
"""

from __future__ import annotations

import keras
import numpy as np

from lottery_keras.lottery.pruning import keep_largest, target_count
from lottery_keras.sparsity.prunable import prunable_weights, refusal
from lottery_keras.sparsity.schedules import ConstantSparsity, PruningSchedule


class PruningError(ValueError):
    """A model or layer that cannot be pruned as asked (the message says why and what to do)."""


@keras.saving.register_keras_serializable(package="lottery_keras")
class PruneLowMagnitude(keras.layers.Wrapper):
    """A layer whose prunable weights carry magnitude masks (non-trainable variables `mask_0`, `mask_1`, …).

    Args:
        layer: The layer to prune; built, or buildable from its first call.
        pruning_schedule: When and how far to prune (default: tfmot's, 50 % from step 0, every 100 steps).
        **kwargs: `keras.layers.Wrapper`'s (`name` defaults to `prune_low_magnitude_<layer name>`).
    """

    def __init__(self, layer: keras.layers.Layer, pruning_schedule: PruningSchedule | None = None, **kwargs):
        if not isinstance(layer, keras.layers.Layer) or isinstance(layer, keras.Model):
            raise PruningError(f"PruneLowMagnitude wraps one Keras layer, not {type(layer).__name__}; prune a model "
                               "with lottery_keras.prune_low_magnitude(model)")
        if pruning_schedule is not None and not isinstance(pruning_schedule, PruningSchedule):
            raise PruningError(f"pruning_schedule must be a lottery_keras schedule (ConstantSparsity, "
                               f"PolynomialDecay), not {type(pruning_schedule).__name__}")
        kwargs.setdefault("name", f"prune_low_magnitude_{layer.name}")
        super().__init__(layer, **kwargs)
        self.pruning_schedule = pruning_schedule or ConstantSparsity(0.5, begin_step=0, frequency=100)
        self.masks: list[keras.Variable] = []
        self.updated_by_callback = False  # set by `UpdatePruningStep` before training starts
        self.refused_training = False  # a training call was refused: the model's train function is broken

    def build(self, input_shape=None):
        if not self.layer.built:
            try:
                self.layer.build(input_shape)
            except TypeError:  # a layer of several inputs (MultiHeadAttention) builds from all their shapes
                raise PruningError(f"layer {self.layer.name} ({type(self.layer).__name__}) builds from the shapes "
                                   "of several inputs: build it (call it once on its inputs) before wrapping it"
                                   ) from None
        weights = prunable_weights(self.layer)
        reason = refusal(self.layer) or (None if weights else f"layer {self.layer.name} "
                                         f"({type(self.layer).__name__}) has no weight to prune")
        if reason:
            raise PruningError(reason)
        self.masks = [self.add_weight(name=f"mask_{i}", shape=weight.shape, initializer="ones", trainable=False)
                      for i, weight in enumerate(weights)]
        self.built = True

    @property
    def pruned_weights(self) -> list[tuple[keras.Variable, keras.Variable]]:
        """(weight, mask) pairs, in the order of `prunable.prunable_weights`."""
        return list(zip(prunable_weights(self.layer), self.masks))

    def apply_masks(self) -> None:
        """Zero every pruned weight (the optimizer's last step may have moved them)."""
        for weight, mask in self.pruned_weights:
            weight.assign(weight * mask)

    def call(self, inputs, *args, training=None, **kwargs):
        if training and not self.updated_by_callback:
            error = PruningError(f"layer {self.name} is being trained without the UpdatePruningStep callback, so "
                                 "its masks would never follow the schedule: fit(..., callbacks=["
                                 "lottery_keras.UpdatePruningStep()])")
            error._keras_call_info_injected = True  # one line: Keras would append the call's arguments
            self.refused_training = True
            raise error
        self.apply_masks()
        if "training" in self.layer._call_signature.parameters:
            kwargs["training"] = training
        return self.layer(inputs, *args, **kwargs)

    def compute_output_spec(self, inputs, *args, training=None, **kwargs):
        return self.layer.compute_output_spec(inputs, *args, **kwargs)

    def update_masks(self, step: int) -> bool:
        """Prune to the schedule's sparsity at `step` if the schedule says so: each weight keeps its largest |w|
        (ties by position); pruned weights never come back. Returns whether the masks were updated."""
        should_prune, sparsity = self.pruning_schedule(step)
        if not should_prune:
            return False
        for weight, mask in self.pruned_weights:
            values = keras.ops.convert_to_numpy(weight)
            old = keras.ops.convert_to_numpy(mask)
            keep = min(int(np.count_nonzero(old)), target_count(old.size, sparsity, 1))
            new = keep_largest(np.abs(values), old, keep)
            mask.assign(new)
            weight.assign(values * new)
        return True

    def stripped_weights(self) -> list[np.ndarray]:
        """The wrapped layer's weights in its own order, each pruned weight times its mask."""
        masks = {id(weight): mask for weight, mask in self.pruned_weights}
        return [keras.ops.convert_to_numpy(weight * masks[id(weight)] if id(weight) in masks else weight)
                for weight in self.layer.weights]

    def get_config(self):
        return {**super().get_config(),
                "pruning_schedule": keras.saving.serialize_keras_object(self.pruning_schedule)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        layer = keras.layers.deserialize(config.pop("layer"))  # built from its saved build configuration
        schedule = keras.saving.deserialize_keras_object(config.pop("pruning_schedule"))
        return cls(layer, schedule, **config)
