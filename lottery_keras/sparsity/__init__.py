"""Pruning for any Keras 3 model with tensorflow-model-optimization's API: `prune_low_magnitude`,
`strip_pruning`, `prune_scope`, the `ConstantSparsity` and `PolynomialDecay` schedules, the `UpdatePruningStep`
and `PruningSummaries` callbacks, the `PrunableLayer` protocol; and `sparsity_report`."""

from lottery_keras.sparsity.callbacks import PruningSummaries, UpdatePruningStep
from lottery_keras.sparsity.layer import PruneLowMagnitude, PruningError
from lottery_keras.sparsity.prunable import PrunableLayer, prunable_weights, register_prunable
from lottery_keras.sparsity.schedules import ConstantSparsity, PolynomialDecay, PruningSchedule
from lottery_keras.sparsity.summary import pruned_layers, sparsity_report
from lottery_keras.sparsity.wrapper import prune_low_magnitude, prune_scope, strip_pruning

__all__ = ["ConstantSparsity", "PolynomialDecay", "PrunableLayer", "PruneLowMagnitude", "PruningError",
           "PruningSchedule", "PruningSummaries", "UpdatePruningStep", "prunable_weights", "prune_low_magnitude",
           "prune_scope", "pruned_layers", "register_prunable", "sparsity_report", "strip_pruning"]
