"""Pruning schedules with tensorflow-model-optimization's semantics: called with a training step, they return
whether the masks are updated at that step and the sparsity they are updated to.

A tfmot script ports by changing the import: `ConstantSparsity(0.8, begin_step=0, frequency=100)` and
`PolynomialDecay(0.0, 0.8, begin_step=0, end_step=2000, power=3, frequency=100)` mean the same here. Plain Python
(the masks are updated between steps, on the host), so they run under any Keras backend and in tests without
TensorFlow's graph machinery.
"""

from __future__ import annotations

import keras


class PruningSchedule:
    """Masks are updated at `begin_step`, then every `frequency` steps, until `end_step` (−1: never ends)."""

    def __init__(self, begin_step: int = 0, end_step: int = -1, frequency: int = 100):
        if begin_step < 0 or frequency < 1 or (end_step != -1 and end_step < begin_step):
            raise ValueError(f"a pruning schedule needs 0 <= begin_step <= end_step (or end_step = -1) and "
                             f"frequency >= 1, not begin_step={begin_step}, end_step={end_step}, "
                             f"frequency={frequency}")
        self.begin_step, self.end_step, self.frequency = begin_step, end_step, frequency

    def should_prune(self, step: int) -> bool:
        in_range = step >= self.begin_step and (self.end_step == -1 or step <= self.end_step)
        return in_range and (step - self.begin_step) % self.frequency == 0

    def sparsity(self, step: int) -> float:
        raise NotImplementedError

    def __call__(self, step: int) -> tuple[bool, float]:
        return self.should_prune(step), self.sparsity(step)

    def get_config(self) -> dict:
        return {"begin_step": self.begin_step, "end_step": self.end_step, "frequency": self.frequency}

    @classmethod
    def from_config(cls, config: dict) -> "PruningSchedule":
        return cls(**config)


def _check_sparsity(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must lie in [0, 1) (the fraction of weights pruned), not {value}")


@keras.saving.register_keras_serializable(package="lottery_keras")
class ConstantSparsity(PruningSchedule):
    """`target_sparsity` from `begin_step` on."""

    def __init__(self, target_sparsity: float, begin_step: int = 0, end_step: int = -1, frequency: int = 100):
        super().__init__(begin_step, end_step, frequency)
        _check_sparsity("target_sparsity", target_sparsity)
        self.target_sparsity = target_sparsity

    def sparsity(self, step: int) -> float:
        return self.target_sparsity

    def get_config(self) -> dict:
        return {**super().get_config(), "target_sparsity": self.target_sparsity}


@keras.saving.register_keras_serializable(package="lottery_keras")
class PolynomialDecay(PruningSchedule):
    """From `initial_sparsity` at `begin_step` to `final_sparsity` at `end_step` along a polynomial of degree
    `power` (Zhu & Gupta, 2017): fast at first, slowly at the end."""

    def __init__(self, initial_sparsity: float, final_sparsity: float, begin_step: int, end_step: int,
                 power: float = 3, frequency: int = 100):
        if end_step == -1:
            raise ValueError("PolynomialDecay needs an end_step (the step at which final_sparsity is reached)")
        super().__init__(begin_step, end_step, frequency)
        _check_sparsity("initial_sparsity", initial_sparsity)
        _check_sparsity("final_sparsity", final_sparsity)
        if final_sparsity < initial_sparsity:
            raise ValueError(f"final_sparsity {final_sparsity} is below initial_sparsity {initial_sparsity}: pruned "
                             "weights stay pruned, so sparsity can only grow")
        self.initial_sparsity, self.final_sparsity, self.power = initial_sparsity, final_sparsity, power

    def sparsity(self, step: int) -> float:
        span = max(1, self.end_step - self.begin_step)
        progress = min(1.0, max(0.0, (step - self.begin_step) / span))
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (1.0 - progress) ** self.power

    def get_config(self) -> dict:
        return {**super().get_config(), "initial_sparsity": self.initial_sparsity,
                "final_sparsity": self.final_sparsity, "power": self.power}
