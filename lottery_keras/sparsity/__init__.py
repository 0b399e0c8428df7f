"""Pruning for any Keras 3 model with tensorflow-model-optimization's API: `prune_low_magnitude`,
`strip_pruning`, the `ConstantSparsity` and `PolynomialDecay` schedules and the `UpdatePruningStep` callback."""

from lottery_keras.sparsity.callbacks import UpdatePruningStep
from lottery_keras.sparsity.schedules import ConstantSparsity, PolynomialDecay, PruningSchedule
from lottery_keras.sparsity.wrapper import (PruneLowMagnitude, PruningError, prune_low_magnitude, pruned_layers,
                                            strip_pruning)

__all__ = ["ConstantSparsity", "PolynomialDecay", "PruneLowMagnitude", "PruningError", "PruningSchedule",
           "UpdatePruningStep", "prune_low_magnitude", "pruned_layers", "strip_pruning"]
