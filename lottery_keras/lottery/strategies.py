"""The strategy registry: what each IMP chain (the winning ticket and its controls) is, as data.

A strategy combines a mask source (`masks.py`: where each round's masks come from) with a start rule
(`starts.py`: which weights a round starts from), which together say which other units of the same trial it
depends on; the controller, the reports and the command line read this registry. A new strategy is one
`register_strategy` call, and a new criterion one `masks.register_mask_source` (or `starts.register_start`) call
beside it.

Rounds train with the configured learning-rate schedule from its start, or, with `final_rate`, at the rate it
ends at (fine-tuning). With a constant rate, as in both presets, `lr_rewind` and `finetune` are the same
computation, so `finetune`'s rounds are copied from `lr_rewind`'s.

The two reinitialisation controls answer different questions. The paper's (`magnitude_random`) trains the winning
ticket's own masks from a fresh init: is it the masks or the weights? The ES667 study's (`reinit_chain`) is a
pruning chain of its own: prune the reinitialised network's trained weights, reinitialise again, round after round.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from lottery_keras.config import NAME_PATTERN
from lottery_keras.lottery.masks import MASK_SOURCES, MaskSource
from lottery_keras.lottery.starts import STARTS, StartRule


@dataclasses.dataclass(frozen=True)
class Strategy:
    """One IMP chain of a trial.

    Args:
        name: the registry key (a folder name in run directories, a `--strategy` choice).
        label: how reports and figures name it.
        color: its matplotlib color in figures.
        masks: the key of its mask source (`masks.MASK_SOURCES`).
        start: the key of its start rule (`starts.STARTS`).
        masks_from: whose masks a `borrowed` source takes.
        counts_from: whose per-layer counts `random` masks match under global pruning.
        dense_round_from: round 0 is the same computation as this strategy's round 0, so it is copied.
        final_rate: train at the learning-rate schedule's final rate (fine-tuning).
        same_at_constant_rate: the strategy whose computation this is when the rate is constant (copied then).
    """

    name: str
    label: str
    color: str
    masks: str
    start: str
    masks_from: str | None = None
    counts_from: str | None = None
    dense_round_from: str | None = None
    final_rate: bool = False
    same_at_constant_rate: str | None = None

    def __post_init__(self):
        if self.masks not in MASK_SOURCES or self.start not in STARTS:
            raise ValueError(f"strategy {self.name}: masks must be one of {tuple(MASK_SOURCES)}, start one of "
                             f"{tuple(STARTS)}")
        if self.mask_source.needs_masks_from != (self.masks_from is not None):
            raise ValueError(f"strategy {self.name}: borrowed masks, and only they, need masks_from")
        if self.mask_source.needs_dense_round_from and self.dense_round_from is None:
            raise ValueError(f"strategy {self.name}: {self.masks} masks prune the dense round of dense_round_from")

    @property
    def mask_source(self) -> MaskSource:
        return MASK_SOURCES[self.masks]

    @property
    def start_rule(self) -> StartRule:
        return STARTS[self.start]

    def dependencies(self, round_index: int, pruning_scope: str = "layerwise") -> list[tuple[str, int]]:
        """The (strategy, round) units of the same trial that must be finished before this round can run."""
        if round_index == 0:
            return [(self.dense_round_from, 0)] if self.dense_round_from else []
        needed = [*self.mask_source.dependencies(self, round_index, pruning_scope),
                  *self.start_rule.dependencies(self, round_index)]
        return list(dict.fromkeys(needed))


WINNING_TICKET = "magnitude_rewind"
REINIT_CONTROL = "magnitude_random"
RANDOM_PRUNING_CONTROL = "random_rewind"
REINIT_CHAIN = "reinit_chain"
LR_REWIND = "lr_rewind"
FINETUNE = "finetune"
ONESHOT = "oneshot"
SNIP = "snip"
STRUCTURED = "structured"

STRATEGIES: dict[str, Strategy] = {strategy.name: strategy for strategy in (
    Strategy(WINNING_TICKET, "winning ticket", "tab:blue", masks="magnitude", start="theta0"),
    Strategy(REINIT_CONTROL, "random reinit", "tab:orange", masks="borrowed", start="reinit",
             masks_from=WINNING_TICKET),
    Strategy(RANDOM_PRUNING_CONTROL, "random pruning", "tab:green", masks="random", start="theta0",
             counts_from=WINNING_TICKET, dense_round_from=WINNING_TICKET),
    Strategy(REINIT_CHAIN, "reinit chain (ES667)", "tab:red", masks="magnitude", start="reinit",
             dense_round_from=REINIT_CONTROL),
    Strategy(LR_REWIND, "LR rewinding", "tab:purple", masks="magnitude", start="trained",
             dense_round_from=WINNING_TICKET),
    Strategy(FINETUNE, "fine-tuning", "tab:brown", masks="magnitude", start="trained",
             dense_round_from=WINNING_TICKET, final_rate=True, same_at_constant_rate=LR_REWIND),
    Strategy(ONESHOT, "one-shot pruning", "tab:gray", masks="oneshot", start="theta0",
             dense_round_from=WINNING_TICKET),
    Strategy(SNIP, "SNIP (pruning at init)", "tab:olive", masks="snip", start="theta0",
             dense_round_from=WINNING_TICKET),
    Strategy(STRUCTURED, "structured (units)", "tab:cyan", masks="structured", start="theta0",
             dense_round_from=WINNING_TICKET),
)}


GROUPS = {"all": tuple(STRATEGIES),  # every registered strategy
          "core": (WINNING_TICKET, REINIT_CONTROL, RANDOM_PRUNING_CONTROL, REINIT_CHAIN)}  # the ticket, its controls


def register_strategy(strategy: Strategy) -> Strategy:
    """Add a strategy to the registry: `run.py --strategy NAME`, `find_ticket(strategies=[NAME])`, the group
    `all`, and the reports (by its label and color) take it from then on.

    Args:
        strategy: a `Strategy` whose name is free, can name a folder, and whose `masks_from`, `counts_from`,
            `dense_round_from` and `same_at_constant_rate` name registered strategies.

    Returns:
        `strategy`.
    """
    if not isinstance(strategy, Strategy):
        raise TypeError(f"register_strategy takes a lottery_keras Strategy, not {type(strategy).__name__}")
    if strategy.name in STRATEGIES or strategy.name in GROUPS:
        raise ValueError(f"a strategy or group named {strategy.name!r} is registered already")
    if not NAME_PATTERN.fullmatch(strategy.name):
        raise ValueError(f"strategy name {strategy.name!r} cannot name a folder: use letters, digits and _ . -")
    references = (strategy.masks_from, strategy.counts_from, strategy.dense_round_from,
                  strategy.same_at_constant_rate)
    unknown = [name for name in references if name is not None and name not in STRATEGIES]
    if unknown:
        raise ValueError(f"strategy {strategy.name} refers to unregistered strategies: {', '.join(unknown)}")
    STRATEGIES[strategy.name] = strategy
    GROUPS["all"] = tuple(STRATEGIES)
    return strategy


def resolve(names: Sequence[str]) -> list[str]:
    """Validate strategy names and groups (`GROUPS`), in registry order (the order units run)."""
    wanted = {member for name in names for member in GROUPS.get(name, (name,))}
    unknown = wanted - set(STRATEGIES)
    if unknown or not wanted:
        raise ValueError(f"unknown strategy {', '.join(sorted(unknown)) or '(none)'}; choose from: "
                         f"{', '.join(STRATEGIES)}, or a group: {', '.join(GROUPS)}")
    return [name for name in STRATEGIES if name in wanted]


def ordered(names) -> list[str]:
    """Registered strategies in registry order, then any others (e.g. from an older run) alphabetically."""
    names = set(names)
    return [name for name in STRATEGIES if name in names] + sorted(names - set(STRATEGIES))
