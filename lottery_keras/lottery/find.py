"""Lottery tickets for a model and data of one's own: `find_ticket`, and what `run.py --model/--data` shares
with it.

Nothing here trains. A Keras model becomes a masked network (`nn/network.py`), data becomes splits, and both
enter an `Experiment` by their fingerprints, so the run directory derives from them: calling again with the same
model, data and settings resumes, any difference starts a new directory. Then `controller.run_experiment` runs
it, the path every built-in run takes, with the same strategies, resume, reports and export.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import textwrap
from pathlib import Path
from typing import Sequence

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from lottery_keras import config, data
from lottery_keras.lottery import controller
from lottery_keras.lottery.paths import RunFolder
from lottery_keras.lottery.strategies import RANDOM_PRUNING_CONTROL, REINIT_CONTROL, WINNING_TICKET
from lottery_keras.nn.network import LayerChoice, check_cloneable, mask_network, network_fingerprint

DEFAULT_STRATEGIES = (WINNING_TICKET, REINIT_CONTROL, RANDOM_PRUNING_CONTROL)
_READ_BATCH = 4096  # samples per read when materialising a tf.data.Dataset


@dataclasses.dataclass(frozen=True)
class OwnRun:
    """An experiment on a model or data of one's own, with what `controller.run_experiment` needs for it."""

    experiment: config.Experiment
    network: dict | None  # the masked network's configuration, for a model of one's own
    splits: data.Splits | None  # the data, for data of one's own


def prepare(model: keras.Model | str, dataset: str | data.Splits, *, layers: LayerChoice = None,
            **protocol) -> OwnRun:
    """The experiment for `model` (a Keras model, or a built-in architecture's name) on `dataset` (splits of
    one's own, or a built-in dataset's name), with `protocol` overriding `config.for_own`'s defaults; `layers`
    chooses the prunable layers of a Keras model (default: all)."""
    network = fingerprint = None
    arch = model
    if isinstance(model, keras.Model):
        network = mask_network(model, layers).get_config()
        fingerprint, arch = network_fingerprint(network), _stable_name(model.name)
    if isinstance(dataset, data.Splits):
        arrays = (dataset.x_train, dataset.y_train, dataset.x_val, dataset.y_val, dataset.x_test, dataset.y_test)
        return OwnRun(config.for_own(arch, dataset.name, len(dataset.x_train), fingerprint, data.fingerprint(*arrays),
                                     **protocol), network, dataset)
    train_size = data.DATASETS[data.canonical_name(dataset)].num_train
    return OwnRun(config.for_own(arch, dataset, train_size, fingerprint, None, **protocol), network, None)


def _stable_name(name: str) -> str:
    """A model's name without the number Keras appends to default names in a process ('functional_3'), so the
    same model built again names the same run directory."""
    return re.sub(r"_\d+$", "", name) if re.fullmatch(r"(functional|sequential)(_\d+)?", name) else name


@dataclasses.dataclass(frozen=True)
class TicketSearch:
    """What `find_ticket` found: the run directory, and one row per finished (trial, strategy, round) with its
    results (the columns of `run.py`'s results.csv) and the paths of its tickets (`ticket_init`: the subnetwork at
    its starting weights; `ticket_trained`: after training)."""

    run_dir: Path
    results: pd.DataFrame

    def ticket(self, strategy: str = WINNING_TICKET, round_index: int | None = None, trial: int = 0,
               trained: bool = False) -> Path:
        """The ticket of (trial, strategy, round) — default: the last finished round."""
        rows = self.results[(self.results["trial"] == trial) & (self.results["strategy"] == strategy)]
        if round_index is not None:
            rows = rows[rows["round"] == round_index]
        which = "round" if round_index is None else f"round {round_index}"
        if rows.empty:
            raise ValueError(f"no finished {which} of {strategy} in trial {trial} of {self.run_dir}")
        path = rows.iloc[-1]["ticket_trained" if trained else "ticket_init"]
        if path is None:
            raise ValueError(f"the last finished {which} of {strategy} in trial {trial} of {self.run_dir} has no "
                             "ticket file here (published runs keep their results, not their tickets)")
        return Path(path)


def find_ticket(model: keras.Model, train, validation=None, test=None, *,
                strategies: Sequence[str] = DEFAULT_STRATEGIES, trials: int | Sequence[int] = 1,
                layers: LayerChoice = None, name: str = "data", output_dir: str | os.PathLike = "outputs",
                data_dir: str | os.PathLike | None = None, workers: int = 1, robustness: bool = False,
                stability: bool = False, checkpoint_minutes: float = 10.0, verbose: bool = True,
                **protocol) -> TicketSearch:
    """Iterative magnitude pruning with rewinding, and its controls, on one's own Keras 3 model.

    Args:
        model: A built Sequential or functional classifier ending in logits (its current weights are not used:
            each trial draws θ0 from the layers' own initializers, seeded by `seed` + trial).
        train: A pair (x, y) of arrays or a `tf.data.Dataset` of (x, y) pairs, inputs as the model takes them,
            labels as class indices or one-hot rows (held in memory); or the name of a built-in dataset
            ('mnist', 'fashion_mnist', 'cifar10').
        validation: Like `train`; default: 10 % of `train`, held out.
        test: Like `train`; default: the validation split.
        strategies: Names or groups of the strategy registry (default: the winning ticket and the paper's two
            controls).
        trials: A number of trials (0 … N−1), or the trials to run (trial t uses seed + t).
        layers: Which prunable layers to prune (names or a predicate; default all `Dense` and convolution layers).
        name: The data's name in the run directory's name.
        output_dir: Where the run directory goes: `<output_dir>/<name>-<model name>-<hash>/`, the layout of
            `run.py`'s; a call with the same model, data and settings resumes after the last finished round.
        data_dir: Where the built-in datasets are (as `run.py --data-dir`).
        workers: Trials side by side on this many local Ray worker processes.
        robustness: Also score every trained ticket under corruptions and FGSM.
        stability: Also measure each round's instability (a second copy on another data order).
        checkpoint_minutes: A round in training saves a checkpoint this often, to resume from (0: never).
        verbose: Progress bars.
        **protocol: The protocol's fields (below), each default the ES667 study's value.

    Returns:
        The run directory and its results, with the paths of the tickets.
    """
    unknown = sorted(set(protocol) - set(PROTOCOL))
    if unknown:
        raise TypeError(f"find_ticket() got unexpected keyword argument(s) {', '.join(unknown)}; the protocol's "
                        f"are: {', '.join(PROTOCOL)}")
    _check_protocol_types(protocol)
    check_cloneable(model, "find_ticket")
    if isinstance(train, str):
        if validation is not None or test is not None:
            raise ValueError(f"the built-in dataset {train!r} has its own splits; leave out validation and test")
        dataset: str | data.Splits = train
    else:
        rank = len(model.inputs[0].shape) - 1
        dataset = data.own_splits(name, *(_materialise(split, what, rank) for split, what in (
            (train, "the training data"), (validation, "the validation data"), (test, "the test data"))),
            source="tf.data" if isinstance(train, tf.data.Dataset) else "arrays")
    run = prepare(model, dataset, layers=layers, **protocol)
    options = controller.RunOptions(strategies=(strategies,) if isinstance(strategies, str) else tuple(strategies),
                                    trials=tuple(range(trials)) if isinstance(trials, int) else tuple(trials),
                                    verbose=verbose, workers=workers, robustness=robustness, stability=stability,
                                    checkpoint_minutes=checkpoint_minutes)
    folder = controller.run_experiment(run.experiment, output_dir, data_dir, options, network=run.network,
                                       splits=run.splits)
    return TicketSearch(folder.directory, with_tickets(folder))


# The protocol fields `find_ticket` takes as keywords: the declared ones (`config.protocol_options`) but those a
# model of one's own decides itself.
PROTOCOL = {name: option for name, option in config.protocol_options().items() if name not in config.OWN_MODEL_KEEPS}


def _check_protocol_types(protocol: dict[str, object]) -> None:
    """A TypeError naming the first protocol keyword whose value is not of its declared kind (None: the default)."""
    for name, value in protocol.items():
        kind = config.KINDS[PROTOCOL[name].kind]
        if value is not None and not kind.fits(value):
            raise TypeError(f"find_ticket(): {name} must be {kind.noun}, not {type(value).__name__} {value!r}")


def _protocol_defaults() -> dict[str, object]:
    """Each protocol keyword's default as the ES667 study sets it (an evaluation every epoch)."""
    fields = {field.name: field.default for field in dataclasses.fields(config.Experiment)}
    study = config.es667_protocol(train_size=0, augment=False)
    return {name: "one epoch" if name == "eval_every" else study.get(name, fields.get(name))
            for name in PROTOCOL if name != "prune_rate"} | {"prune_rate": study["prune_fc"]}


def _declare_protocol(function):
    """Give `function` the protocol's keywords in its signature and its docstring, from the one declaration."""
    defaults = _protocol_defaults()
    signature = inspect.signature(function)
    parameters = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    parameters += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None) for name in PROTOCOL]
    function.__signature__ = signature.replace(parameters=parameters)
    lines = [textwrap.fill(f"{name}: {option.help[0].upper()}{option.help[1:]} (default: {defaults[name]}).",
                           width=116, initial_indent=" " * 8, subsequent_indent=" " * 12)
             for name, option in PROTOCOL.items()]
    function.__doc__ += "\n    Protocol keywords:\n" + "\n".join(lines) + "\n"
    return function


find_ticket = _declare_protocol(find_ticket)


def with_tickets(folder: RunFolder) -> pd.DataFrame:
    """The run's results with each round's ticket paths (None where a round has no ticket file here)."""
    table = folder.results()
    units = [folder.unit(int(row.trial), row.strategy, int(row.round)) for row in table.itertuples()]
    for column in ("ticket_init", "ticket_trained"):
        paths = [getattr(unit, column) for unit in units]
        table[column] = [str(path) if path.is_file() else None for path in paths]
    return table


def _materialise(split, what: str, input_rank: int):
    """A pair (x, y) from a pair, or from a finite `tf.data.Dataset` of (x, y) elements or batches."""
    if split is None or not isinstance(split, tf.data.Dataset):
        return split
    spec = split.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise data.DataError(f"{what}: a tf.data.Dataset must give (x, y) pairs, not elements {spec}")
    if split.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise data.DataError(f"{what}: the tf.data.Dataset repeats forever; pass it without .repeat()")
    if spec[0].shape.rank != input_rank + 1:  # single samples: read them in batches
        split = split.batch(_READ_BATCH)
    batches = list(split.as_numpy_iterator())
    if not batches:
        raise data.DataError(f"{what}: the tf.data.Dataset is empty")
    return np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])
