"""Checkpoints inside a round: a long round that is interrupted (Ctrl-C, a crash, a session's time limit) goes on
from its last checkpoint instead of its first step, with the results an uninterrupted round gives.

A checkpoint holds everything the rest of the round depends on: the model's variables, the optimizer's (its step
count and moments), whatever state the training engine keeps outside them (the sparse kernels' moments), the
callbacks' state (`ResumableCallback`), the step reached and the training seconds spent. The compiled loop draws
each step's batch from (seed, step) alone, so nothing else is needed. It is written atomically at an evaluation
point once `every_seconds` have passed since the last one, and deleted when the round is finished.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import keras
import numpy as np

from lottery_keras.storage import DamagedFileError, read_npz, write_npz

_META = "meta"


@runtime_checkable
class ResumableCallback(Protocol):
    """A callback whose state a checkpoint keeps: JSON-able values and named arrays."""

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]: ...

    def set_state(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None: ...


class RoundCheckpoint:
    """The checkpoint file of one training run (a round, or its stability copy). `identity` names what is
    trained (seed, steps, first step); a checkpoint of anything else is not resumed from."""

    def __init__(self, path: str | Path, identity: dict[str, Any], every_seconds: float = 600.0,
                 verbose: bool = False):
        if every_seconds <= 0:
            raise ValueError(f"checkpoints are written every so many seconds, more than 0, not {every_seconds}")
        self.path = Path(path)
        self.identity = identity
        self.every_seconds = every_seconds
        self.verbose = verbose
        self.seconds_before = 0.0  # training seconds spent before the checkpoint resumed from
        self._started = self._last_save = time.perf_counter()
        self._engine: str | None = None

    def restore(self, model: keras.Model, callbacks: Sequence[keras.callbacks.Callback], engine: str
                ) -> tuple[int, dict[str, np.ndarray]]:
        """Load the checkpoint, if there is a usable one, into the model, its optimizer and the callbacks; returns
        the step reached (0 without a checkpoint) and the arrays of the engine (`Trainer.last_engine`) that trains
        on, which must be the one that wrote them."""
        self._started = self._last_save = time.perf_counter()
        self._engine = engine
        if not self.path.is_file():
            return 0, {}
        try:
            arrays = read_npz(self.path)
            values = json.loads(str(arrays.pop(_META)))
        except (DamagedFileError, KeyError, json.JSONDecodeError) as err:
            return self._unusable(f"it cannot be read ({err})")
        if values.get("identity") != self.identity:
            return self._unusable("it belongs to another training run")
        if values.get("engine") != engine:
            return self._unusable(f"it was written by the {values.get('engine')} engine, and this round trains on "
                                  f"the {engine} one")
        resumable = _resumable(callbacks)
        if len(values.get("callbacks", [])) != len(resumable):
            return self._unusable("it was written with other callbacks")
        variables = _variables(model)
        stored = [arrays.get(f"variable/{index}") for index in range(len(variables))]
        if any(value is None or value.shape != tuple(v.shape) for value, v in zip(stored, variables)):
            return self._unusable("its variables do not fit the model")
        for variable, value in zip(variables, stored):
            variable.assign(value)
        for index, callback in enumerate(resumable):
            prefix = f"callback/{index}/"
            callback.set_state(values["callbacks"][index],
                               {key.removeprefix(prefix): value for key, value in arrays.items()
                                if key.startswith(prefix)})
        self.seconds_before = float(values["seconds"])
        engine = {key.removeprefix("engine/"): value for key, value in arrays.items() if key.startswith("engine/")}
        if self.verbose:
            print(f"going on from the checkpoint at iteration {values['step']} ({self.path})", flush=True)
        return int(values["step"]), engine

    def maybe_save(self, model: keras.Model, step: int, callbacks: Sequence[keras.callbacks.Callback],
                   engine: dict[str, np.ndarray] | None = None) -> None:
        """Save at `step` if `every_seconds` have passed since the last save (or the start)."""
        if time.perf_counter() - self._last_save >= self.every_seconds:
            self.save(model, step, callbacks, engine)

    def save(self, model: keras.Model, step: int, callbacks: Sequence[keras.callbacks.Callback],
             engine: dict[str, np.ndarray] | None = None) -> None:
        arrays = {f"variable/{index}": keras.ops.convert_to_numpy(variable)
                  for index, variable in enumerate(_variables(model))}
        arrays.update({f"engine/{key}": value for key, value in (engine or {}).items()})
        states = []
        for index, callback in enumerate(_resumable(callbacks)):
            values, callback_arrays = callback.get_state()
            states.append(values)
            arrays.update({f"callback/{index}/{key}": value for key, value in callback_arrays.items()})
        meta = {"identity": self.identity, "engine": self._engine, "step": step, "seconds": self.seconds_spent(),
                "callbacks": states}
        arrays[_META] = np.array(json.dumps(meta))
        write_npz(self.path, arrays)
        self._last_save = time.perf_counter()

    def seconds_spent(self) -> float:
        """Training seconds of this run so far, before and after the checkpoint it resumed from."""
        return self.seconds_before + time.perf_counter() - self._started

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)

    def _unusable(self, why: str) -> tuple[int, dict[str, np.ndarray]]:
        print(f"warning: ignoring the checkpoint {self.path}: {why}; training this round from its start",
              file=sys.stderr, flush=True)
        return 0, {}


def _variables(model: keras.Model) -> list[keras.Variable]:
    """The model's variables (masks and random-generator states too), then its optimizer's."""
    return [*model.variables, *model.optimizer.variables]


def _resumable(callbacks: Sequence[keras.callbacks.Callback]) -> list[ResumableCallback]:
    return [callback for callback in callbacks if isinstance(callback, ResumableCallback)]
