"""Pruning any Keras 3 model: tensorflow-model-optimization's `prune_low_magnitude` / `strip_pruning` /
`prune_scope` API, for Keras 3 models (tfmot's wrappers accept only tf_keras models).

`prune_low_magnitude(model)` returns a clone of a Sequential or functional model, nested models included, with
every layer that has prunable weights (`prunable.py`) wrapped in `PruneLowMagnitude` and every weight kept; given
a layer or a list of layers (tfmot's other form) it wraps them. What it leaves dense is said once, in a warning.
`strip_pruning(model)` returns the plain layers again, weights masked, loading with no custom objects.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import keras
import numpy as np
from keras.src.models.functional import Functional  # what clone_model rebuilds besides Sequential; not exported

from lottery_keras.nn.layers import MaskedWrapper
from lottery_keras.nn import network
from lottery_keras.nn.network import LayerChoice, MaskedNetwork, NetworkError, check_cloneable, plain_network
from lottery_keras.sparsity.layer import PruneLowMagnitude, PruningError, build_from_config
from lottery_keras.sparsity.prunable import is_prunable, refusal
from lottery_keras.sparsity.schedules import PruningSchedule
from lottery_keras.sparsity.summary import leaf_layers

PRUNABLE_HINT = ("prunable layers are those with a kernel or an embedding table, and custom layers that declare "
                 "their prunable weights (get_prunable_weights())")


def prune_low_magnitude(to_prune: keras.Model | keras.layers.Layer | Sequence[keras.layers.Layer],
                        pruning_schedule: PruningSchedule | None = None, *,
                        layers: LayerChoice = None) -> keras.Model | PruneLowMagnitude | list[PruneLowMagnitude]:
    """Wrap a model's prunable layers (or one layer, or a list of layers) in `PruneLowMagnitude`.

    Train the result with the `UpdatePruningStep` callback, so that the masks follow the schedule.

    Args:
        to_prune: A built Sequential or functional model (nested models are pruned too), a layer or a list of
            layers.
        pruning_schedule: A `ConstantSparsity` or `PolynomialDecay` (default: tfmot's, 50 % from step 0, every
            100 steps).
        layers: For a model: names, or a predicate, choosing which prunable layers to wrap (default: all).

    Returns:
        For a model, a clone with the chosen layers wrapped and every weight kept; else the wrapped layer(s).
    """
    if pruning_schedule is not None and not isinstance(pruning_schedule, PruningSchedule):
        raise PruningError(f"pruning_schedule must be a lottery_keras schedule (e.g. ConstantSparsity(0.5)), not "
                           f"{type(pruning_schedule).__name__} {pruning_schedule!r}")
    if isinstance(to_prune, keras.Model):
        return _prune_model(to_prune, pruning_schedule, layers)
    if layers is not None:
        raise PruningError("prune_low_magnitude: `layers` chooses layers of a model; give a model, or the layers "
                           "themselves")
    if isinstance(to_prune, keras.layers.Layer):
        return PruneLowMagnitude(to_prune, pruning_schedule)
    if isinstance(to_prune, (list, tuple)) and all(isinstance(layer, keras.layers.Layer) for layer in to_prune):
        return [PruneLowMagnitude(layer, pruning_schedule) for layer in to_prune]
    raise PruningError(f"prune_low_magnitude takes a Keras model, a layer or a list of layers, not "
                       f"{type(to_prune).__name__}")


def _prune_model(model: keras.Model, schedule: PruningSchedule | None, layers: LayerChoice) -> keras.Model:
    try:
        check_cloneable(model, "prune_low_magnitude")
    except NetworkError as err:
        raise PruningError(str(err)) from None
    wanted = set(chosen_layers(model, layers))
    pruned = _clone(model, lambda layer: PruneLowMagnitude(layer, schedule) if layer.name in wanted else layer)
    _warn_about_dense_weights(pruned)
    return pruned


def chosen_layers(model: keras.Model, layers: LayerChoice) -> list[str]:
    """The names of the prunable layers of `model` (nested models included) that `layers` chooses (names, one
    name, a predicate, or None for all); a PruningError for unknown, unprunable or refused layers, or when none is
    left."""
    candidates = [layer for layer in leaf_layers(model) if not isinstance(layer, PruneLowMagnitude)]
    try:
        names = network.chosen_layers(model, layers, candidates, is_prunable, PRUNABLE_HINT)
    except NetworkError as err:
        raise PruningError(str(err)) from None
    refused = [reason for reason in (refusal(layer) for layer in candidates if layer.name in names) if reason]
    if refused:
        raise PruningError(refused[0])
    return names


def _clone(model: keras.Model, replace) -> keras.Model:
    """`model` cloned, nested models too, each other layer a fresh copy with the original's weights passed
    through `replace` (which may wrap it)."""

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if not isinstance(layer, keras.layers.Layer):  # an operation (keras.ops) of a functional model: no state
            return layer
        if isinstance(layer, (keras.Sequential, Functional)):
            return _clone(layer, replace)
        return replace(_copy(layer))

    return keras.models.clone_model(model, clone_function=clone)


def _copy(layer: keras.layers.Layer) -> keras.layers.Layer:
    """A fresh, built copy of `layer` holding its weights (a pruned layer: its wrapped layer's, masked)."""
    source = layer.layer if isinstance(layer, PruneLowMagnitude) else layer
    copy = source.__class__.from_config(source.get_config())
    build_from_config(copy, source.get_build_config())
    if source.weights:
        copy.set_weights(layer.stripped_weights() if isinstance(layer, PruneLowMagnitude) else
                         source.get_weights())
    return copy


def _warn_about_dense_weights(model: keras.Model) -> None:
    """One warning naming the layer types whose weight matrices nothing prunes (no prunable weight declared)."""
    dense_types, dense_size, total = set(), 0, 0
    for layer in leaf_layers(model):
        weights = layer.layer.weights if isinstance(layer, PruneLowMagnitude) else layer.weights  # not the masks
        size = sum(int(np.prod(weight.shape)) for weight in weights if len(weight.shape) >= 2)
        total += size
        if size and not isinstance(layer, PruneLowMagnitude) and not is_prunable(layer):
            dense_types.add(type(layer).__name__)
            dense_size += size
    if dense_size:
        warnings.warn(f"prune_low_magnitude leaves {dense_size / total:.0%} of the model's weight matrices dense: "
                      f"layers of type {', '.join(sorted(dense_types))} declare no prunable weight (a custom layer "
                      "says which with get_prunable_weights(), any type with lottery_keras.register_prunable)",
                      stacklevel=4)


def strip_pruning(model: keras.Model) -> keras.Model:
    """The model with every masked layer (`PruneLowMagnitude`, or the wrappers of a lottery ticket of one's own
    model) replaced by its plain layer, weights ⊙ masks: standard Keras layers only, so it saves and loads with no
    custom objects.

    Args:
        model: A model returned by `prune_low_magnitude` (trained or not), or a ticket of one's own model.

    Returns:
        A clone with plain layers.
    """
    if isinstance(model, MaskedNetwork):
        return plain_network(model)
    try:
        check_cloneable(model, "strip_pruning")
    except NetworkError as err:
        raise PruningError(str(err)) from None
    if any(isinstance(layer, MaskedWrapper) for layer in model.layers):
        return plain_network(model)
    return _clone(model, lambda layer: layer)


def prune_scope() -> keras.saving.CustomObjectScope:
    """tfmot's `prune_scope`: a scope in which pruned models load (`import lottery_keras` registers them
    already, so it is only needed by code written for tfmot)."""
    return keras.saving.CustomObjectScope({"PruneLowMagnitude": PruneLowMagnitude})
