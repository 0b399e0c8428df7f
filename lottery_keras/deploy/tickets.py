"""Tickets: find one in a run folder, load it safely, strip its masks into a plain Keras model.

- `resolve_ticket` turns a run folder, a round folder or a `.keras` file into the ticket file it names.
- `load_ticket` (from `nn/saving.py`) opens a `.keras` ticket and turns every way a file can fail to be one
  (missing, not a zip, truncated, some other model) into a `TicketError` naming the file.
- `strip_masks` rebuilds a masked model as a standard functional Keras model of `Dense` / `Conv2D` (plus the
  weightless layers the architecture uses) with kernel = kernel ⊙ mask: the graph comes from the subclassed
  model's own `call` applied to a `keras.Input`, then `keras.models.clone_model` swaps each masked layer for its
  plain counterpart (`PLAIN_LAYERS`). The result loads with `keras.models.load_model` and no custom objects.
- A ticket of one's own network (`nn.network.MaskedNetwork`) strips to its functional network with plain layers.
- `compact` drops from a stripped model the units (neurons, channels) whose outgoing weights are all zero, as
  structured pruning leaves them: the ticket becomes the smaller dense network it is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import keras
import numpy as np

from lottery_keras.lottery.paths import RunFolder, RunFolderError
from lottery_keras.lottery.strategies import WINNING_TICKET
from lottery_keras.nn.layers import MaskedConv2D, MaskedDense, MaskedLayer
from lottery_keras.nn.models import MaskedModel
from lottery_keras.nn.network import MaskedNetwork, plain_network
from lottery_keras.nn.saving import TicketError


# ----------------------------------------------------------------------------------------------- stripping

def _plain_dense(layer: MaskedDense) -> keras.layers.Layer:
    plain = keras.layers.Dense(layer.units, activation=layer.activation, name=layer.name)
    plain.build((None, layer.kernel.shape[0]))
    return plain


def _plain_conv2d(layer: MaskedConv2D) -> keras.layers.Layer:
    plain = keras.layers.Conv2D(layer.filters, layer.kernel_size, strides=layer.strides, padding=layer.padding,
                                activation=layer.activation, name=layer.name)
    plain.build((None, None, None, layer.kernel.shape[2]))
    return plain


# The standard Keras layer each masked layer becomes (built, with the same kernel layout): a new masked layer
# type needs one entry here.
PLAIN_LAYERS: dict[type, Callable[[MaskedLayer], keras.layers.Layer]] = {
    MaskedDense: _plain_dense,
    MaskedConv2D: _plain_conv2d,
}


def _to_plain(layer: keras.layers.Layer) -> keras.layers.Layer:
    if isinstance(layer, MaskedLayer):
        factory = PLAIN_LAYERS.get(type(layer))
        if factory is None:
            raise TypeError(f"strip_masks has no plain Keras counterpart for {type(layer).__name__} "
                            f"(layer {layer.name}); add one to deploy.tickets.PLAIN_LAYERS")
        plain = factory(layer)
        plain.set_weights([keras.ops.convert_to_numpy(layer.kernel * layer.mask),
                           keras.ops.convert_to_numpy(layer.bias)])
        return plain
    return layer.__class__.from_config(layer.get_config())


def model_input_shape(model: keras.Model) -> tuple[int, ...]:
    """The per-example input shape a built model was built for (e.g. (28, 28, 1))."""
    build_config = model.get_build_config() or {}
    shape = build_config.get("input_shape")
    if not shape:
        raise ValueError(f"model {model.name} is not built; build it (or load a saved ticket) first")
    return tuple(int(d) for d in shape[1:])


def strip_masks(model: MaskedModel, input_shape: Sequence[int] | None = None) -> keras.Model:
    """A standard functional Keras model computing the same function as `model` with kernel = kernel ⊙ mask.

    Its layers are built-in Keras layers only (`Dense`, `Conv2D` and the weightless layers of the architecture),
    so it saves and loads with `keras.models.load_model` in a process that never imports lottery_keras. The
    masked model is left untouched (the graph is traced from a copy).
    """
    if isinstance(model, MaskedNetwork):
        return plain_network(model)
    input_shape = tuple(input_shape) if input_shape is not None else model_input_shape(model)
    copy = model.__class__.from_config(model.get_config())
    copy.build((None, *input_shape))
    copy.set_weights(model.get_weights())
    inputs = keras.Input(input_shape, name="input")
    traced = keras.Model(inputs, copy.call(inputs), name=model.name)
    return keras.models.clone_model(traced, clone_function=_to_plain)


def _used_units(layer: keras.layers.Layer, following: keras.layers.Layer) -> np.ndarray:
    """Which output units of `layer` reach `following` through a nonzero weight (through a flatten, a channel's
    every position: Keras flattens channels-last maps channel fastest)."""
    units, kernel = layer.kernel.shape[-1], keras.ops.convert_to_numpy(following.kernel)
    if isinstance(following, keras.layers.Dense):
        used = np.abs(kernel).reshape(kernel.shape[0] // units, units, -1).sum(axis=(0, 2)) > 0
    else:
        used = np.abs(kernel).sum(axis=(0, 1, 3)) > 0
    if not used.any():
        used[0] = True  # a layer keeps one unit, whose output nothing reads
    return used


def _resized(layer: keras.layers.Layer, inputs: np.ndarray | None, outputs: np.ndarray | None) -> keras.layers.Layer:
    """A copy of a Dense / Conv2D layer keeping only the `inputs` and `outputs` units (None: all)."""
    kernel, bias = (keras.ops.convert_to_numpy(weight) for weight in (layer.kernel, layer.bias))
    if inputs is not None:
        if kernel.ndim == 2:
            kernel = kernel.reshape(-1, inputs.size, kernel.shape[-1])[:, inputs, :].reshape(-1, kernel.shape[-1])
        else:
            kernel = kernel[:, :, inputs, :]
    if outputs is not None:
        kernel, bias = kernel[..., outputs], bias[outputs]
    config = layer.get_config()
    config["units" if kernel.ndim == 2 else "filters"] = int(kernel.shape[-1])
    resized = layer.__class__.from_config(config)
    resized.build((None, kernel.shape[0]) if kernel.ndim == 2 else (None, None, None, kernel.shape[2]))
    resized.set_weights([kernel, bias])
    return resized


def compact(plain: keras.Model) -> keras.Model:
    """`plain` (a stripped chain of Dense / Conv2D layers) without the units whose outgoing weights are all zero,
    and their incoming weights and biases, repeated until no unit can go: the same function as a smaller dense
    network. `plain` itself when no unit can go, or when the model is not such a chain (the smaller network must
    give the same outputs on a random batch, or is not used)."""
    current = plain
    try:
        while (smaller := _compact_once(current)) is not current:
            current = smaller
    except ValueError:  # a branched model: removed units do not line up with the layers that read them
        return plain
    if current is plain:
        return plain
    probe = np.random.default_rng(0).standard_normal((4, *plain.inputs[0].shape[1:])).astype(np.float32)
    expected = keras.ops.convert_to_numpy(plain(probe))
    same = np.allclose(keras.ops.convert_to_numpy(current(probe)), expected, atol=1e-4 * (1 + np.abs(expected).max()))
    return current if same else plain


def _compact_once(plain: keras.Model) -> keras.Model:
    weighted = [layer for layer in plain.layers if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D))]
    outputs = {layer.name: _used_units(layer, following) for layer, following in zip(weighted, weighted[1:])}
    if all(used.all() for used in outputs.values()):
        return plain
    inputs = {following.name: outputs[layer.name] for layer, following in zip(weighted, weighted[1:])}

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if layer.name in outputs or layer.name in inputs:
            return _resized(layer, inputs.get(layer.name), outputs.get(layer.name))
        return layer.__class__.from_config(layer.get_config())

    return keras.models.clone_model(plain, clone_function=clone)


# ----------------------------------------------------------------------------------------------- finding tickets

def resolve_ticket(path: str | os.PathLike, round_index: int | None = None, strategy: str = WINNING_TICKET,
                   trial: int = 0) -> Path:
    """The ticket file `path` names: a `.keras` file itself, a round folder's trained ticket, or, for a run
    folder, the trained ticket of (`trial`, `strategy`, `round_index`) — round_index counts from 0 like the
    folder names; default: the last finished round. Raises TicketError when absent."""
    path = Path(path)
    if not path.exists():
        raise TicketError(f"{path}: no such ticket file or run directory")
    if path.is_file():
        return path
    try:
        run = RunFolder.containing(path)
    except RunFolderError:
        raise TicketError(f"{path} is neither a ticket file nor a run directory (no config.json)") from None
    if run.directory.resolve() != path.resolve():  # a folder inside a run: it must be a round folder
        try:
            unit = run.unit_at(path)
        except RunFolderError as err:
            raise TicketError(str(err)) from None
        if not unit.ticket_trained.is_file():
            raise TicketError(f"{path} has no {unit.ticket_trained.name}")
        return unit.ticket_trained
    return _run_ticket(run, round_index, strategy, trial)


def _run_ticket(run: RunFolder, round_index: int | None, strategy: str, trial: int) -> Path:
    if trial not in run.trials():
        trials = ", ".join(map(str, run.trials()))
        raise TicketError(f"{run.directory} has no trial {trial}" + (f"; it holds trials {trials}" if trials else
                                                                      " (no trial folders)"))
    if strategy not in run.strategies(trial):
        raise TicketError(f"{run.trial_dir(trial)} has no strategy {strategy!r}; it holds: "
                          f"{', '.join(run.strategies(trial)) or 'none'}")
    finished = {unit.round: unit for unit in run.finished_units(trial, strategy) if unit.ticket_trained.is_file()}
    if not finished:
        raise TicketError(f"{run.strategy_dir(trial, strategy)} has no finished round with a trained ticket yet")
    if round_index is None:
        round_index = max(finished)
    elif round_index < 0:
        raise TicketError(f"round index must be 0 or more, not {round_index}")
    elif round_index not in finished:
        raise TicketError(f"{run.strategy_dir(trial, strategy)} has no finished round {round_index}; finished "
                          f"rounds: {', '.join(map(str, sorted(finished)))}")
    return finished[round_index].ticket_trained
