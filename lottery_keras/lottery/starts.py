"""Start rules: which weights a strategy's round starts from, in an open registry.

A start rule is one small class: the units of the same trial it needs (`dependencies`), whether it rewinds
(`rewinds`: rounds after the dense one start from θ0, or from θ_K under late rewinding, and train the steps after
K), and the starting weights by variable path (`weights`). `register_start` adds one; a strategy
(`strategies.py`) names it by its key.

Built in:
- `theta0`: rewind to the trial's initial weights θ0 (or, with `--rewind-iteration K`, to θ_K, the strategy's dense
  round's weights after K steps, and train the remaining steps);
- `reinit`: fresh weights every round (the same draw for every `reinit` strategy at a round, so the two
  reinitialisation controls differ only in their masks);
- `trained`: the previous round's trained weights (Renda et al. 2020).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

from lottery_keras.lottery.masks import Needed, Trial
from lottery_keras.lottery.seeds import derived_seed
from lottery_keras.registry import Registry

if TYPE_CHECKING:
    from lottery_keras.lottery.paths import Unit
    from lottery_keras.lottery.strategies import Strategy

State = dict[str, np.ndarray]  # every variable but the masks, by variable path


class StartTrial(Trial, Protocol):
    """What start rules may use of the trial beyond what mask sources may (`controller.TrialRun`)."""

    def rewind_point(self, strategy: str) -> State: ...

    def trained_state(self, unit: Unit) -> State: ...

    def fresh_state(self, seed: int) -> State: ...


class StartRule:
    """Which weights a strategy's round starts from.

    Attributes:
        rewinds: rounds after the dense one rewind (train from step `rewind_iteration`), and a dense round from
            θ0 keeps θ_K for them.
    """

    rewinds = False

    def dependencies(self, strategy: Strategy, round_index: int) -> list[tuple[str, int]]:
        """The (strategy, round) units of the same trial the starting weights come from."""
        return []

    def weights(self, trial: StartTrial, strategy: Strategy, round_index: int, needed: Needed) -> State:
        """The starting weights of round `round_index`, by variable path."""
        raise NotImplementedError


class Theta0(StartRule):
    """The trial's initial weights θ0, or under late rewinding θ_K, kept by the strategy's dense round (its own,
    or that of `dense_round_from`, which it copies)."""

    rewinds = True

    def weights(self, trial, strategy, round_index, needed):
        if round_index and trial.experiment.rewind_iteration:
            return trial.rewind_point(strategy.dense_round_from or strategy.name)
        return trial.theta0


class Reinit(StartRule):
    """A fresh draw from the architecture's initializers, the same for every strategy at a round."""

    def weights(self, trial, strategy, round_index, needed):
        return trial.fresh_state(derived_seed(trial.seed, round_index, "reinit"))


class Trained(StartRule):
    """The trained weights of the strategy's own previous round."""

    def dependencies(self, strategy, round_index):
        return [(strategy.name, round_index - 1)] if round_index else []

    def weights(self, trial, strategy, round_index, needed):
        return trial.trained_state(needed[strategy.name, round_index - 1])


STARTS: Registry[StartRule] = Registry("start rule", StartRule,
                                      {"theta0": Theta0(), "reinit": Reinit(), "trained": Trained()})
# `register_start(name, rule)`: strategies take `rule` as `start=name` from then on.
register_start = STARTS.register
