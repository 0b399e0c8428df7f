"""`PruneLowMagnitude`: any Keras layer with a magnitude mask on each of its prunable weights (`prunable.py`).

The optimizer applies the masks after each of its steps (`MaskConstraint`: Keras's optimizers apply every weight's
constraint after its update, inside the train function), so pruned weights are zero at rest; the wrapper updates
the masks to its schedule's sparsity by magnitude (`update_masks`, which `UpdatePruningStep` calls during `fit`);
each weight keeps its own share, like tfmot's per-weight masks. Training a wrapped layer without the callback is
an error at the first training call, since its masks would never change.
"""

from __future__ import annotations

import keras
import numpy as np

from lottery_keras.lottery.pruning import keep_largest, target_count
from lottery_keras.sparsity.prunable import prunable_weights, refusal
from lottery_keras.sparsity.schedules import ConstantSparsity, PruningSchedule


class PruningError(ValueError):
    """A model or layer that cannot be pruned as asked (the message says why and what to do)."""


def has_own_build(layer: keras.layers.Layer) -> bool:
    """Whether `layer` creates its weights in a `build` of its own (Keras's layers do; a custom layer that only
    holds sublayers usually does not, and Keras builds it by tracing its first call)."""
    return type(layer).build is not keras.layers.Layer.build


def build_layer(layer: keras.layers.Layer, input_shape) -> None:
    """Build `layer`, sublayers included, for inputs of `input_shape`, as its first call would.

    A layer without a `build` of its own is marked built at construction, its sublayers not: they are built by
    tracing its `call` on a symbolic input.
    """
    if has_own_build(layer):
        if not layer.built:
            try:
                layer.build(input_shape)
            except TypeError:  # a layer of several inputs (MultiHeadAttention) builds from all their shapes
                raise PruningError(f"layer {layer.name} ({type(layer).__name__}) builds from the shapes of several "
                                   "inputs: build it (call it once on its inputs) before wrapping it") from None
    elif input_shape is not None:
        layer.compute_output_spec(keras.KerasTensor(input_shape))


def build_from_config(layer: keras.layers.Layer, build_config: dict | None) -> None:
    """Build a fresh `layer` from a saved build configuration (`get_build_config()`), tracing its `call` where it
    has no `build` of its own (`build_layer`; Keras's `build_from_config` would only warn it cannot build it)."""
    build_config = build_config or {}
    if "input_shape" in build_config:
        build_layer(layer, build_config["input_shape"])
    elif build_config:
        layer.build_from_config(build_config)


# Whether the optimizer zeroes the pruned weights after each of its steps, in the train function (through the
# weights' constraints), so that they are zero at rest. JAX's train function reads no variable outside its state,
# so a constraint there would keep the masks of the moment it was traced: under JAX the layer zeroes them before
# every call and `UpdatePruningStep` after every step instead. Elsewhere the call does not assign them again.
OPTIMIZER_APPLIES_MASKS = keras.backend.backend() != "jax"


class MaskConstraint(keras.constraints.Constraint):
    """A pruned weight's constraint: the weight's own constraint (if any), then its mask. Keras's optimizers apply
    constraints after every update, so the pruned weights are zero at rest, at no cost outside the train step.

    Args:
        mask: The weight's mask variable (read at every step, so mask updates take effect).
        inner: The constraint the weight had, applied first.
    """

    def __init__(self, mask: keras.Variable, inner=None):
        self.mask, self.inner = mask, inner

    def __call__(self, weight):
        if self.inner is not None:
            weight = self.inner(weight)
        return weight * keras.ops.cast(self.mask, weight.dtype)


@keras.saving.register_keras_serializable(package="lottery_keras")
class PruneLowMagnitude(keras.layers.Wrapper):
    """A layer whose prunable weights carry magnitude masks (non-trainable variables `mask_0`, `mask_1`, …).

    Pruned weights are zero at rest: the optimizer masks them after each step, a mask update masks them, and
    weights set from outside (`set_weights`) are masked when training starts (`UpdatePruningStep`).

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
        self._pruned_weights: list[tuple[keras.Variable, keras.Variable]] = []
        self.updated_by_callback = False  # set by `UpdatePruningStep` before training starts
        self.refused_training = False  # a training call was refused: the model's train function is broken

    def build(self, input_shape=None):
        build_layer(self.layer, input_shape)
        weights = prunable_weights(self.layer)
        reason = refusal(self.layer) or (None if weights else f"layer {self.layer.name} "
                                         f"({type(self.layer).__name__}) has no weight to prune")
        if reason:
            raise PruningError(reason)
        self.masks = [self.add_weight(name=f"mask_{i}", shape=weight.shape, initializer="ones", trainable=False)
                      for i, weight in enumerate(weights)]
        self._pruned_weights = list(zip(weights, self.masks))
        if OPTIMIZER_APPLIES_MASKS:
            for weight, mask in self._pruned_weights:
                weight.constraint = MaskConstraint(mask, weight.constraint)
        self.built = True

    @property
    def pruned_weights(self) -> list[tuple[keras.Variable, keras.Variable]]:
        """(weight, mask) pairs, in the order of `prunable.prunable_weights`."""
        return list(self._pruned_weights)

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
        if not OPTIMIZER_APPLIES_MASKS:  # else the weights at rest are masked already (`MaskConstraint`)
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
        layer_config = dict(config.pop("layer"))
        build_config = layer_config.pop("build_config", None)
        layer = keras.layers.deserialize(layer_config)
        build_from_config(layer, build_config)
        schedule = keras.saving.deserialize_keras_object(config.pop("pruning_schedule"))
        return cls(layer, schedule, **config)
