"""Checkpoints inside a round: a long round that is interrupted (Ctrl-C, a crash, a session's time limit) goes on
from its last checkpoint instead of its first step, with the results an uninterrupted round gives.

A checkpoint holds everything the rest of the round depends on: the model's variables, the optimizer's (its step
count and moments), whatever state the training engine keeps outside them (the sparse kernels' moments), the
callbacks' state (`ResumableCallback`), the step reached and the training seconds spent. The compiled loop draws
each step's batch from (seed, step) alone, so nothing else is needed. It is written atomically at an evaluation
point once `every_seconds` have passed since the last one, and deleted when the round is finished. It is resumed
from only by the same training: the same identity (seed, steps), engine and starting state (a digest of the model's
variables when training starts, masks included), so a round whose start changed trains from its start.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import keras
import numpy as np

from lottery_keras.storage import DamagedFileError, read_npz, write_npz

FORMAT = 1  # bumped whenever what a checkpoint holds changes: older ones are then not resumed from
_META = "meta"


@runtime_checkable
class ResumableCallback(Protocol):
    """A callback whose state a checkpoint keeps: JSON-able values and named arrays. `set_state` raises
    (KeyError, TypeError or ValueError) on a state it cannot take, before changing anything."""

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]: ...

    def set_state(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None: ...


class UnusableCheckpoint(ValueError):
    pass


class RoundCheckpoint:
    """The checkpoint file of one training run (a round, or its stability copy). `identity` names what is
    trained (seed, steps, first step); a checkpoint of anything else is not resumed from."""

    def __init__(self, path: str | Path, identity: dict[str, Any], every_seconds: float = 600.0,
                 verbose: bool = False):
        if not every_seconds > 0:
            raise ValueError(f"checkpoints are written every so many seconds, more than 0, not {every_seconds}")
        self.path = Path(path)
        self.identity = identity
        self.every_seconds = every_seconds
        self.verbose = verbose
        self.seconds_before = 0.0  # training seconds spent before the checkpoint resumed from
        self._started = self._last_save = time.perf_counter()
        self._run: dict[str, Any] = {}

    def restore(self, model: keras.Model, callbacks: Sequence[keras.callbacks.Callback], engine: str,
                engine_shapes: dict[str, tuple[int, ...]] | None = None) -> tuple[int, dict[str, np.ndarray]]:
        """At the start of training (`model` holds its starting state): load the checkpoint, if there is a usable
        one, into the model, its optimizer and the callbacks. Returns the step reached (0 without a checkpoint)
        and the arrays `engine` (`Trainer.last_engine`) keeps outside the model, of `engine_shapes`."""
        self._started = self._last_save = time.perf_counter()
        self._run = {"format": FORMAT, "identity": self.identity, "engine": engine, "start": _digest(model)}
        if not self.path.is_file():
            return 0, {}
        try:
            values, arrays = self._read()
            self._check(values, engine)
            variables = _variables(model)
            stored = [_array(arrays, f"variable/{index}", tuple(v.shape)) for index, v in enumerate(variables)]
            own = {name: _array(arrays, f"engine/{name}", shape) for name, shape in (engine_shapes or {}).items()}
            _set_callback_states(_resumable(callbacks), values["callbacks"], arrays)
            step, seconds = int(values["step"]), float(values["seconds"])
        except UnusableCheckpoint as why:
            print(f"warning: ignoring the checkpoint {self.path}: {why}; training this run from its start",
                  file=sys.stderr, flush=True)
            return 0, {}
        for variable, value in zip(variables, stored):
            variable.assign(value)
        self.seconds_before = seconds
        if self.verbose:
            print(f"going on from the checkpoint at iteration {step} ({self.path})", flush=True)
        return step, own

    def maybe_save(self, model: keras.Model, step: int, callbacks: Sequence[keras.callbacks.Callback],
                   engine_arrays: Callable[[], dict[str, np.ndarray]] | None = None) -> None:
        """`save` if `every_seconds` have passed since the last save (or the start)."""
        if time.perf_counter() - self._last_save >= self.every_seconds:
            self.save(model, step, callbacks, engine_arrays() if engine_arrays else None)

    def save(self, model: keras.Model, step: int, callbacks: Sequence[keras.callbacks.Callback],
             engine_arrays: dict[str, np.ndarray] | None = None) -> None:
        """Write the state after `step` steps (atomically: an interrupted write leaves the previous checkpoint)."""
        if not self._run:
            raise RuntimeError("restore() first: it records which training the checkpoint belongs to")
        arrays = {f"variable/{index}": keras.ops.convert_to_numpy(variable)
                  for index, variable in enumerate(_variables(model))}
        arrays.update({f"engine/{name}": value for name, value in (engine_arrays or {}).items()})
        states = []
        for index, callback in enumerate(_resumable(callbacks)):
            values, callback_arrays = callback.get_state()
            states.append(values)
            arrays.update({f"callback/{index}/{name}": value for name, value in callback_arrays.items()})
        meta = {**self._run, "step": step, "seconds": self.seconds_spent(), "callbacks": states}
        arrays[_META] = np.array(json.dumps(meta))
        write_npz(self.path, arrays)
        self._last_save = time.perf_counter()

    def seconds_spent(self) -> float:
        """Training seconds of this run so far, before and after the checkpoint it resumed from."""
        return self.seconds_before + time.perf_counter() - self._started

    def _read(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        try:
            arrays = read_npz(self.path)
            values = json.loads(str(arrays.pop(_META)))
        except (DamagedFileError, KeyError, json.JSONDecodeError) as err:
            raise UnusableCheckpoint(f"it cannot be read ({err})") from None
        if not isinstance(values, dict) or not {"step", "seconds", "callbacks"} <= values.keys():
            raise UnusableCheckpoint("it is not a checkpoint of this version of lottery_keras")
        return values, arrays

    def _check(self, values: dict[str, Any], engine: str) -> None:
        if values.get("format") != FORMAT:
            raise UnusableCheckpoint("it was written by another version of lottery_keras")
        if values.get("identity") != self.identity:
            raise UnusableCheckpoint("it belongs to another training run")
        if values.get("engine") != engine:
            raise UnusableCheckpoint(f"it was written by the {values.get('engine')} engine, and this run trains on "
                                     f"the {engine} one")
        if values.get("start") != self._run["start"]:
            raise UnusableCheckpoint("the round it belongs to started from other weights or masks")


def _digest(model: keras.Model) -> str:
    """A fingerprint of the model's variables: weights, masks and random-generator states."""
    digest = hashlib.sha256()
    for variable in model.variables:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(variable)).tobytes())
    return digest.hexdigest()


def _array(arrays: dict[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
    value = arrays.get(name)
    if value is None or value.shape != shape:
        raise UnusableCheckpoint(f"its {name} does not fit ("
                                 f"{'missing' if value is None else f'shape {value.shape}, not {shape}'})")
    return value


def _set_callback_states(callbacks: list[ResumableCallback], states: list, arrays: dict[str, np.ndarray]) -> None:
    """Give each callback its state, all or none: on a state one cannot take, the others get theirs back."""
    if not isinstance(states, list) or len(states) != len(callbacks):
        raise UnusableCheckpoint("it was written with other callbacks")
    before = [callback.get_state() for callback in callbacks]
    try:
        for index, (callback, values) in enumerate(zip(callbacks, states)):
            prefix = f"callback/{index}/"
            callback.set_state(values, {name.removeprefix(prefix): value for name, value in arrays.items()
                                        if name.startswith(prefix)})
    except (KeyError, TypeError, ValueError) as err:
        for callback, state in zip(callbacks, before):
            callback.set_state(*state)
        raise UnusableCheckpoint(f"a callback's state does not fit ({type(err).__name__}: {err})") from None


def _variables(model: keras.Model) -> list[keras.Variable]:
    """The model's variables (masks and random-generator states too), then its optimizer's."""
    return [*model.variables, *model.optimizer.variables]


def _resumable(callbacks: Sequence[keras.callbacks.Callback]) -> list[ResumableCallback]:
    return [callback for callback in callbacks if isinstance(callback, ResumableCallback)]
