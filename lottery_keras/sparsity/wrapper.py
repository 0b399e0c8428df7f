"""Pruning any Keras 3 model: tensorflow-model-optimization's `prune_low_magnitude` / `strip_pruning` API, for
Keras 3 models (tfmot's wrappers accept only tf_keras models).

`PruneLowMagnitude` wraps a `Dense`, `Conv1D`, `Conv2D`, `Conv3D` or `DepthwiseConv2D` layer: a non-trainable
mask of its kernel's shape, applied to the kernel before every call, and updated to the schedule's sparsity by
magnitude (`update_mask`, which `UpdatePruningStep` calls during `fit`). `prune_low_magnitude(model)` returns a
clone of a Sequential or functional model with its prunable layers wrapped and every weight kept;
`strip_pruning(model)` returns the plain layers again, kernels masked, loading with no custom objects.
"""

from __future__ import annotations

from typing import Callable, Iterable

import keras
import numpy as np
from keras.src.models.functional import Functional  # what clone_model rebuilds besides Sequential; not exported

from lottery_keras.lottery.pruning import target_count
from lottery_keras.sparsity.schedules import ConstantSparsity, PruningSchedule

PRUNABLE_WEIGHTS = {keras.layers.Dense: "kernel", keras.layers.Conv1D: "kernel", keras.layers.Conv2D: "kernel",
                    keras.layers.Conv3D: "kernel", keras.layers.DepthwiseConv2D: "kernel"}
LayerChoice = Iterable[str] | Callable[[keras.layers.Layer], bool] | None


class PruningError(ValueError):
    """A model or layer that cannot be pruned as asked (the message says why and what to do)."""


def prunable_weight(layer: keras.layers.Layer) -> str | None:
    """The name of the weight `layer` is pruned by, or None for layers this package does not prune."""
    for layer_type, weight in PRUNABLE_WEIGHTS.items():
        if type(layer) is layer_type:  # subclasses may compute something else with the kernel
            return weight
    return None


@keras.saving.register_keras_serializable(package="lottery_keras")
class PruneLowMagnitude(keras.layers.Wrapper):
    """A prunable layer with a magnitude mask on its kernel (see the module docstring)."""

    def __init__(self, layer: keras.layers.Layer, pruning_schedule: PruningSchedule | None = None, **kwargs):
        if prunable_weight(layer) is None:
            raise PruningError(f"layer {layer.name} ({type(layer).__name__}) cannot be pruned; prunable: "
                               f"{', '.join(t.__name__ for t in PRUNABLE_WEIGHTS)}")
        kwargs.setdefault("name", f"prune_low_magnitude_{layer.name}")
        super().__init__(layer, **kwargs)
        self.pruning_schedule = pruning_schedule or ConstantSparsity(0.5, begin_step=0, frequency=100)

    @property
    def pruned_weight(self) -> keras.Variable:
        return getattr(self.layer, prunable_weight(self.layer))

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        self.mask = self.add_weight(name="mask", shape=self.pruned_weight.shape, initializer="ones",
                                    trainable=False)
        self.built = True

    def apply_mask(self) -> None:
        self.pruned_weight.assign(self.pruned_weight * self.mask)

    def call(self, inputs, *args, **kwargs):
        self.apply_mask()  # the optimizer's last step may have moved pruned weights
        return self.layer(inputs, *args, **kwargs)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def update_mask(self, step: int) -> bool:
        """Prune to the schedule's sparsity at `step` if the schedule says so: keep the largest |w| (ties by
        position); pruned weights never come back. Returns whether the mask was updated."""
        should_prune, sparsity = self.pruning_schedule(step)
        if not should_prune:
            return False
        weight = keras.ops.convert_to_numpy(self.pruned_weight)
        mask = keras.ops.convert_to_numpy(self.mask)
        keep = min(int(mask.sum()), target_count(mask.size, sparsity, 1))
        order = np.argsort(-np.abs(weight * mask).reshape(-1), kind="stable")
        new_mask = np.zeros(mask.size, np.float32)
        new_mask[order[:keep]] = 1.0
        self.mask.assign(new_mask.reshape(mask.shape))
        self.pruned_weight.assign(weight * new_mask.reshape(mask.shape))
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


def _chosen(layers: LayerChoice) -> Callable[[keras.layers.Layer], bool]:
    if layers is None:
        return lambda layer: True
    if callable(layers):
        return layers
    names = set(layers)
    return lambda layer: layer.name in names


def _cloneable(model: keras.Model, operation: str) -> None:
    if not isinstance(model, keras.Model):
        raise PruningError(f"{operation} takes a Keras model, not {type(model).__name__}")
    if not isinstance(model, (keras.Sequential, Functional)):
        raise PruningError(f"{operation} needs a Sequential or functional model (what keras.models.clone_model "
                           f"can rebuild), not the subclassed {type(model).__name__}; build it functionally, or "
                           "wrap its layers in PruneLowMagnitude yourself")
    if not model.built:
        raise PruningError(f"{operation}: model {model.name} is not built; call it on data or build it first")


def _clone_with_weights(model: keras.Model, replace: Callable[[keras.layers.Layer], keras.layers.Layer]
                        ) -> keras.Model:
    """`keras.models.clone_model` with `replace` for each layer, keeping every weight of the original."""
    originals = {}

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        new = replace(layer)
        originals[new.name] = layer
        return new

    cloned = keras.models.clone_model(model, clone_function=clone)
    for new in cloned.layers:
        original = originals.get(new.name)
        if original is not None and original.weights:
            _copy_weights(original, new)
    return cloned


def _copy_weights(source: keras.layers.Layer, target: keras.layers.Layer) -> None:
    """Weights by role: a wrapper's inner layer takes the plain layer's, a plain layer the masked kernel."""
    if isinstance(target, PruneLowMagnitude) and not isinstance(source, PruneLowMagnitude):
        target.layer.set_weights(source.get_weights())
    elif isinstance(source, PruneLowMagnitude) and not isinstance(target, PruneLowMagnitude):
        source.apply_mask()
        target.set_weights(source.layer.get_weights())
    else:
        target.set_weights(source.get_weights())


def prune_low_magnitude(to_prune: keras.Model, pruning_schedule: PruningSchedule | None = None, *,
                        layers: LayerChoice = None) -> keras.Model:
    """A clone of a Sequential or functional Keras 3 model whose prunable layers (`PRUNABLE_WEIGHTS`) are wrapped
    in `PruneLowMagnitude` with `pruning_schedule` (default: tfmot's, 50 % from step 0, every 100 steps); weights
    are kept. `layers`: names, or a predicate, choosing which prunable layers to wrap (default: all). Train with
    the `UpdatePruningStep` callback so that the masks follow the schedule."""
    _cloneable(to_prune, "prune_low_magnitude")
    if layers is not None and not callable(layers):
        layers = [layers] if isinstance(layers, str) else list(layers)
        by_name = {layer.name: layer for layer in to_prune.layers}
        unknown = [name for name in layers if name not in by_name]
        if unknown:
            raise PruningError(f"no layer named {', '.join(unknown)} in model {to_prune.name}")
        unprunable = [f"{name} ({type(by_name[name]).__name__})" for name in layers
                      if not prunable_weight(by_name[name])]
        if unprunable:
            raise PruningError(f"cannot prune {', '.join(unprunable)}; prunable layers are "
                               f"{', '.join(t.__name__ for t in PRUNABLE_WEIGHTS)}")
    chosen = _chosen(layers)
    wanted = [layer.name for layer in to_prune.layers if prunable_weight(layer) and chosen(layer)]
    if not wanted:
        raise PruningError(f"model {to_prune.name} has no layer to prune: prunable layers are "
                           f"{', '.join(t.__name__ for t in PRUNABLE_WEIGHTS)}"
                           + (" (and none of them was chosen by `layers`)" if layers is not None else ""))

    def wrap(layer: keras.layers.Layer) -> keras.layers.Layer:
        copy = layer.__class__.from_config(layer.get_config())
        return PruneLowMagnitude(copy, pruning_schedule) if layer.name in wanted else copy

    return _clone_with_weights(to_prune, wrap)


def strip_pruning(model: keras.Model) -> keras.Model:
    """The model with every `PruneLowMagnitude` replaced by its plain layer, kernel ⊙ mask: standard Keras layers
    only, so it saves and loads with no custom objects."""
    _cloneable(model, "strip_pruning")

    def unwrap(layer: keras.layers.Layer) -> keras.layers.Layer:
        inner = layer.layer if isinstance(layer, PruneLowMagnitude) else layer
        return inner.__class__.from_config(inner.get_config())

    return _clone_with_weights(model, unwrap)


def pruned_layers(model: keras.Model) -> list[PruneLowMagnitude]:
    return [layer for layer in model.layers if isinstance(layer, PruneLowMagnitude)]
