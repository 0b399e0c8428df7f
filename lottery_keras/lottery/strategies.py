"""The strategy registry: what each IMP chain (the winning ticket and its controls) is, as data.

A strategy says where each round's masks come from, which weights a round starts from, and so which other units
of the same trial it depends on. The controller, the reports and the command line read this registry; a new
strategy is one new entry.

Masks (round 0 is always the dense network, every mask all ones):
- `magnitude`: prune the smallest surviving weights of the strategy's own previous round, once trained;
- `random`: prune random survivors of its own previous round (the same per-layer counts as magnitude pruning;
  under global pruning, the counts of `counts_from` at the same round);
- `borrowed`: the masks of `masks_from` at the same round;
- `oneshot`: prune the dense round's trained weights (of `dense_round_from`) once, straight to the round's level;
- `structured`: prune whole units (neurons, channels) of its own previous round by the L1 norm of their trained
  weights, `pruning.structured_unit_rate` of them per round so that inner layers keep the weights unstructured
  pruning keeps (the first layer, whose inputs all stay, keeps more); the output layer keeps its units;
- `snip`: prune at initialisation, straight to the round's level, by SNIP's connection sensitivity at θ0
  (`saliency.py`): no training informs the masks (under late rewinding the survivors still start from θ_K).
Start: `theta0` rewinds to the trial's initial weights θ0 (or, with `--rewind-iteration K`, to θ_K, the dense
round's weights after K steps, and trains the remaining steps); `reinit` draws fresh weights every round (the same
draw for every `reinit` strategy at a round, so the two reinitialisation controls differ only in their masks);
`trained` keeps the previous round's trained weights (Renda et al. 2020). Rounds train with the configured
learning-rate schedule from its start, or, with `final_rate`, at the rate it ends at (fine-tuning). With a
constant rate, as in both presets, `lr_rewind` and `finetune` are the same computation, so `finetune`'s rounds are
copied from `lr_rewind`'s.

The two reinitialisation controls answer different questions. The paper's (`magnitude_random`) trains the winning
ticket's own masks from a fresh init: is it the masks or the weights? The ES667 study's (`reinit_chain`) is a
pruning chain of its own: prune the reinitialised network's trained weights, reinitialise again, round after round.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

MASK_SOURCES = ("magnitude", "random", "borrowed", "oneshot", "snip", "structured")
STARTS = ("theta0", "reinit", "trained")


@dataclasses.dataclass(frozen=True)
class Strategy:
    name: str
    label: str  # in reports and figures
    color: str  # matplotlib color in figures
    masks: str
    start: str
    masks_from: str | None = None  # `borrowed` masks: whose
    counts_from: str | None = None  # `random` masks under global pruning: whose per-layer counts
    dense_round_from: str | None = None  # round 0 is the same computation as this strategy's round 0: copied
    final_rate: bool = False  # train at the schedule's final learning rate (fine-tuning)
    same_at_constant_rate: str | None = None  # the strategy whose computation this is when the rate is constant

    def __post_init__(self):
        if self.masks not in MASK_SOURCES or self.start not in STARTS:
            raise ValueError(f"strategy {self.name}: masks must be one of {MASK_SOURCES}, start one of {STARTS}")
        if (self.masks == "borrowed") != (self.masks_from is not None):
            raise ValueError(f"strategy {self.name}: borrowed masks, and only they, need masks_from")
        if self.masks == "oneshot" and self.dense_round_from is None:
            raise ValueError(f"strategy {self.name}: one-shot masks prune the dense round of dense_round_from")

    def dependencies(self, round_index: int, pruning_scope: str = "layerwise") -> list[tuple[str, int]]:
        """The (strategy, round) units of the same trial that must be finished before this round can run."""
        if round_index == 0:
            return [(self.dense_round_from, 0)] if self.dense_round_from else []
        if self.masks == "borrowed":
            return [(self.masks_from, round_index)]
        if self.masks == "oneshot":
            return [(self.dense_round_from, 0)]
        if self.masks == "snip":
            return []
        own = [(self.name, round_index - 1)]
        if self.masks == "random" and pruning_scope == "global" and self.counts_from:
            own.append((self.counts_from, round_index))
        return own


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
