"""Mask sources: where a strategy's masks come from at each round after the dense one, in an open registry.

A mask source is one small class: the units of the same trial it needs (`dependencies`), the unit whose trained
weights it prunes if any (`pruned_unit`: a diverged one stops the chain), what it refuses to run on (`refusal`),
and the masks themselves (`masks`), computed from what the trial offers (`Trial`). Round 0 is always the dense
network, every mask all ones. `register_mask_source` adds one; a strategy (`strategies.py`) names it by its key.

Built in:
- `magnitude`: prune the smallest surviving weights of the strategy's own previous round, once trained;
- `random`: prune random survivors of its own previous round (the same per-layer counts as magnitude pruning;
  under global pruning, the counts of `counts_from` at the same round);
- `borrowed`: the masks of `masks_from` at the same round;
- `oneshot`: prune the dense round's trained weights (of `dense_round_from`) once, straight to the round's level;
- `structured`: prune whole units (neurons, channels) of its own previous round by the L1 norm of their trained
  weights, `pruning.structured_unit_rate` of them per round so that inner layers keep the weights unstructured
  pruning keeps (the first layer, whose inputs all stay, keeps more); the output layer keeps its units;
- `snip`: prune at initialisation, straight to the round's level, by SNIP's connection sensitivity at θ0
  (`saliency.py`): no training informs the masks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

from lottery_keras.lottery import pruning
from lottery_keras.lottery.seeds import derived_seed
from lottery_keras.registry import Registry

if TYPE_CHECKING:
    from lottery_keras import data
    from lottery_keras.config import Experiment
    from lottery_keras.lottery.paths import Unit
    from lottery_keras.lottery.strategies import Strategy
    from lottery_keras.nn.models import MaskedModel

Needed = dict[tuple[str, int], "Unit"]  # the finished units a round depends on, by (strategy, round)


class Trial(Protocol):
    """What mask sources and start rules may use of the trial they work for (`controller.TrialRun`)."""

    experiment: Experiment
    seed: int  # the trial's seed: derive every random draw from it (`seeds.derived_seed`)
    model: MaskedModel
    splits: data.Splits
    theta0: dict[str, np.ndarray]  # the trial's initial weights, by variable path
    layer_names: list[str]  # the masked layers in forward order; the last is the output layer
    rates: dict[str, float]  # each masked layer's pruning rate per round (layerwise scope)

    def dense_masks(self) -> pruning.Masks: ...

    def read_masks(self, unit: Unit) -> pruning.Masks: ...

    def trained_kernels(self, unit: Unit) -> pruning.Weights: ...

    def set_start(self, weights: dict[str, np.ndarray], masks: pruning.Masks) -> None: ...

    def cross_check(self, old_masks: pruning.Masks, new_masks: pruning.Masks, round_index: int,
                    scores: pruning.Weights | None = None) -> None: ...


class MaskSource:
    """Where a strategy's masks come from at round `round_index` ≥ 1. Subclasses implement `masks`; the defaults
    prune the strategy's own previous round.

    Attributes:
        needs_masks_from: whether a strategy using it must name `masks_from` (and only then may).
        needs_dense_round_from: whether a strategy using it must name `dense_round_from`.
    """

    needs_masks_from = False
    needs_dense_round_from = False

    def dependencies(self, strategy: Strategy, round_index: int, pruning_scope: str) -> list[tuple[str, int]]:
        """The (strategy, round) units of the same trial the masks are computed from."""
        return [(strategy.name, round_index - 1)]

    def pruned_unit(self, strategy: Strategy, round_index: int, needed: Needed) -> Unit | None:
        """The unit whose trained weights the masks are cut from, if any."""
        return None

    def refusal(self, experiment: Experiment) -> str | None:
        """Why the source cannot run `experiment` (one line), or None."""
        return None

    def masks(self, trial: Trial, strategy: Strategy, round_index: int, needed: Needed) -> pruning.Masks:
        """The masks of round `round_index` ≥ 1, one 0/1 array per masked layer."""
        raise NotImplementedError


def magnitude_masks(trial: Trial, scores: pruning.Weights, old_masks: pruning.Masks,
                    round_index: int) -> pruning.Masks:
    """Keep the highest `scores` among the survivors of `old_masks`, to the level `round_index` prunings reach
    (layerwise at each layer's rate and cross-checked against tfmot, or globally at the fc rate)."""
    experiment = trial.experiment
    if experiment.pruning_scope == "global":
        return pruning.global_magnitude_prune(scores, old_masks, experiment.prune_fc, round_index)
    new_masks = pruning.magnitude_prune(scores, old_masks, pruning.layerwise_counts(old_masks, trial.rates,
                                                                                   round_index))
    trial.cross_check(old_masks, new_masks, round_index, scores)
    return new_masks


class Magnitude(MaskSource):
    """The smallest surviving weights of the strategy's own previous round, once trained, are pruned."""

    def pruned_unit(self, strategy, round_index, needed):
        return needed.get((strategy.name, round_index - 1))

    def masks(self, trial, strategy, round_index, needed):
        previous = needed[strategy.name, round_index - 1]
        return magnitude_masks(trial, trial.trained_kernels(previous), trial.read_masks(previous), round_index)


class Random(MaskSource):
    """Random survivors of the previous round are pruned: magnitude pruning's per-layer counts, positions
    independent of the weights."""

    def dependencies(self, strategy, round_index, pruning_scope):
        own = super().dependencies(strategy, round_index, pruning_scope)
        if pruning_scope == "global" and strategy.counts_from:
            own.append((strategy.counts_from, round_index))
        return own

    def masks(self, trial, strategy, round_index, needed):
        old_masks = trial.read_masks(needed[strategy.name, round_index - 1])
        global_scope = trial.experiment.pruning_scope == "global"
        if global_scope:  # match the reference's per-layer counts at this level
            reference = trial.read_masks(needed[strategy.counts_from, round_index])
            counts = {name: int(mask.sum()) for name, mask in reference.items()}
        else:
            counts = pruning.layerwise_counts(old_masks, trial.rates, round_index)
        rng = np.random.default_rng(derived_seed(trial.seed, round_index, "random_masks"))
        new_masks = pruning.random_prune(old_masks, counts, rng)
        if not global_scope:
            trial.cross_check(old_masks, new_masks, round_index)
        return new_masks


class Borrowed(MaskSource):
    """The masks of `strategy.masks_from` at the same round."""

    needs_masks_from = True

    def dependencies(self, strategy, round_index, pruning_scope):
        return [(strategy.masks_from, round_index)]

    def masks(self, trial, strategy, round_index, needed):
        return trial.read_masks(needed[strategy.masks_from, round_index])


class OneShot(MaskSource):
    """The dense round's trained weights (of `strategy.dense_round_from`) pruned once to the round's level."""

    needs_dense_round_from = True

    def dependencies(self, strategy, round_index, pruning_scope):
        return [(strategy.dense_round_from, 0)]

    def pruned_unit(self, strategy, round_index, needed):
        return needed[strategy.dense_round_from, 0]

    def masks(self, trial, strategy, round_index, needed):
        dense = needed[strategy.dense_round_from, 0]
        return magnitude_masks(trial, trial.trained_kernels(dense), trial.dense_masks(), round_index)


class Snip(MaskSource):
    """θ0 pruned by SNIP's connection sensitivity, straight to the round's level (under late rewinding the
    survivors still start from θ_K)."""

    def dependencies(self, strategy, round_index, pruning_scope):
        return []

    def masks(self, trial, strategy, round_index, needed):
        from lottery_keras.lottery import saliency

        ones = trial.dense_masks()
        trial.set_start(trial.theta0, ones)
        samples = min(saliency.SNIP_SAMPLES, len(trial.splits.x_train))
        scores = saliency.snip_scores(trial.model, trial.splits.x_train[:samples], trial.splits.y_train[:samples])
        return magnitude_masks(trial, scores, ones, round_index)  # tfmot's threshold, on the scores


class Structured(MaskSource):
    """Whole units of the strategy's own previous round pruned by the L1 norm of their trained weights."""

    def pruned_unit(self, strategy, round_index, needed):
        return needed.get((strategy.name, round_index - 1))

    def refusal(self, experiment):
        if experiment.pruning_scope == "global":
            return ("the structured strategy prunes whole units layer by layer; run it with layerwise pruning "
                    "(no --pruning-scope global)")
        if experiment.model:
            return ("the structured strategy follows units through a chain of layers, which only the built-in "
                    "architectures declare; leave it out for a model of one's own")
        return None

    def masks(self, trial, strategy, round_index, needed):
        previous = needed[strategy.name, round_index - 1]
        old_masks = trial.read_masks(previous)
        kinds = trial.model.layer_kinds()
        counts = {name: pruning.target_count(mask.shape[-1], pruning.structured_unit_rate(trial.rates[name]),
                                             round_index)
                  for name, mask in old_masks.items() if kinds[name] != "output"}
        in_order = {name: old_masks[name] for name in trial.layer_names}  # units feed the next layer's inputs
        return pruning.structured_prune(trial.trained_kernels(previous), in_order, counts)


MASK_SOURCES: Registry[MaskSource] = Registry(
    "mask source", MaskSource, {"magnitude": Magnitude(), "random": Random(), "borrowed": Borrowed(),
                                "oneshot": OneShot(), "snip": Snip(), "structured": Structured()})
# `register_mask_source(name, source)`: strategies take `source` as `masks=name` from then on.
register_mask_source = MASK_SOURCES.register
