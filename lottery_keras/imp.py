"""The IMP controller: rounds of train → prune → rewind, for the winning ticket and its controls.

Strategies (DESIGN.md §1):
- `magnitude_rewind`: prune the smallest surviving weights of the trained network, rewind survivors to θ0.
- `magnitude_random`: the masks of `magnitude_rewind` at each level (read from its finished round, run first
  when missing), with a fresh random initialisation per round.
- `random_rewind`: a random cumulative mask with the same per-layer counts, rewound to θ0.

Work is organised in (trial, round, strategy) units, each finished when its `metrics.json` exists; a run started
again with the same command skips finished units, so a killed run resumes after its last finished round. Every
unit depends only on files (θ0, earlier masks and tickets) and seeds derived from (seed, trial, round), so a
resumed run produces the same results as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Sequence

import keras
import numpy as np
import pandas as pd

from lottery_keras import data, pruning, results
from lottery_keras.callbacks import EarlyStopRecorder, ProgressBar
from lottery_keras.config import Experiment
from lottery_keras.layers import MaskedConv2D
from lottery_keras.models import MaskedModel, build_model
from lottery_keras.storage import atomic_path, read_json, read_npz, write_csv, write_json, write_npz
from lottery_keras.training import Trainer, compile_model

STRATEGIES = ("magnitude_rewind", "magnitude_random", "random_rewind")


def resolve_strategies(names: Sequence[str]) -> list[str]:
    """Validate strategy names ('all' = the three), in the order the controller runs them."""
    wanted = set(STRATEGIES) if "all" in names else set(names)
    unknown = wanted - set(STRATEGIES)
    if unknown or not wanted:
        raise ValueError(f"unknown strategy {', '.join(sorted(unknown)) or '(none)'}; choose from: "
                         f"{', '.join(STRATEGIES)}, all")
    return [name for name in STRATEGIES if name in wanted]


def derived_seed(*parts: int | str) -> int:
    """A seed below 2**20 determined by `parts` (trial seed, round, purpose)."""
    words = [p if isinstance(p, int) else int.from_bytes(p.encode(), "little") % 2**32 for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1)[0] % 2**20)


def run_dir_for(experiment: Experiment, output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / experiment.run_name


def prepare_run_dir(experiment: Experiment, output_dir: str | os.PathLike) -> Path:
    """Create (or re-open) the run directory and record the configuration; fails clearly when unwritable."""
    run_dir = run_dir_for(experiment, output_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        config_path = run_dir / "config.json"
        if not config_path.exists():
            write_json(config_path, {"experiment": experiment.to_dict(), "hash": experiment.hash})
    except OSError as err:
        raise OSError(f"cannot write the run directory {run_dir}: {err.strerror or err}; "
                      "choose another folder with --output-dir") from err
    return run_dir


def load_splits(experiment: Experiment, data_dir: str | os.PathLike | None) -> data.Splits:
    splits = data.load(experiment.dataset, data_dir)
    return splits.head(train=experiment.train_subset) if experiment.train_subset else splits


def save_ticket(model: MaskedModel, input_shape: tuple[int, ...], path: Path) -> None:
    """Save weights and masks as a `.keras` file without optimizer state (tickets are for loading, not resuming)."""
    clone = model.__class__.from_config(model.get_config())
    clone.build((None, *input_shape))
    clone.set_weights(model.get_weights())
    with atomic_path(path) as tmp:
        clone.save(tmp)


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How to execute an experiment (none of it changes results, so none of it is in the run hash)."""

    strategies: Sequence[str] = STRATEGIES
    trials: int = 1
    check_tfmot: bool = True
    loop: str = "compiled"
    verbose: bool = True


class TrialRun:
    """The rounds of all strategies for one trial (one seed): shares θ0, one model and one compiled loop."""

    def __init__(self, experiment: Experiment, splits: data.Splits, run_dir: Path, trial: int, options: RunOptions):
        self.exp, self.splits, self.run_dir, self.trial, self.options = experiment, splits, run_dir, trial, options
        self.seed = experiment.seed + trial
        self.model = build_model(experiment.arch, splits.input_shape, splits.num_classes, experiment.init,
                                 self.seed, experiment.precision)
        compile_model(self.model, experiment.learning_rate)
        self.layer_names = [layer.name for layer in self.model.masked_layers()]
        conv_names = {layer.name for layer in self.model.masked_layers() if isinstance(layer, MaskedConv2D)}
        kinds = pruning.layer_kinds(self.layer_names, conv_names)
        self.rates = {name: experiment.rates_by_kind[kind] for name, kind in kinds.items()}
        self.theta0 = self._load_or_save_theta0()
        self.trainer = Trainer(self.model, splits.x_train, splits.y_train, batch_size=experiment.batch_size,
                               augment=experiment.augment, loop=options.loop)

    # ------------------------------------------------------------------------------------------ schedule

    def run(self, strategies: Sequence[str]) -> None:
        for round_index in range(self.exp.rounds):
            for strategy in strategies:
                self.ensure_round(strategy, round_index)

    def ensure_round(self, strategy: str, round_index: int) -> Path:
        """Run one (strategy, round) unit unless it is finished; returns its directory."""
        directory = results.round_dir(self.run_dir, self.trial, strategy, round_index)
        if results.is_finished(directory):
            return directory
        if strategy == "random_rewind" and round_index == 0:  # θ0, a full mask, the same data: identical
            self._copy_round(self.ensure_round("magnitude_rewind", 0), directory)
        else:
            masks = self._masks(strategy, round_index)
            self._train_round(strategy, round_index, masks, self._start_weights(strategy, round_index), directory)
        write_csv(directory.parent / "results.csv", results.strategy_results(directory.parent))
        return directory

    @staticmethod
    def _copy_round(source: Path, directory: Path) -> None:
        staging = directory.with_name(f".{directory.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(source, staging)
        shutil.rmtree(directory, ignore_errors=True)  # an unfinished attempt
        staging.replace(directory)

    # ------------------------------------------------------------------------------------------ masks

    def _masks(self, strategy: str, round_index: int) -> dict[str, np.ndarray]:
        if round_index == 0:
            return {layer.name: np.ones(layer.mask.shape, np.float32) for layer in self.model.masked_layers()}
        if strategy == "magnitude_random":
            return read_npz(self.ensure_round("magnitude_rewind", round_index) / "masks.npz")
        previous = self.ensure_round(strategy, round_index - 1)
        old_masks = read_npz(previous / "masks.npz")
        if strategy == "magnitude_rewind":
            return self._magnitude_masks(previous, old_masks, round_index)
        return self._random_masks(old_masks, round_index)

    def _magnitude_masks(self, previous: Path, old_masks: dict, round_index: int) -> dict[str, np.ndarray]:
        trained = keras.models.load_model(previous / "ticket_trained.keras")
        kernels = {layer.name: keras.ops.convert_to_numpy(layer.kernel) for layer in trained.masked_layers()}
        if self.exp.pruning_scope == "global":
            new_masks = pruning.global_magnitude_prune(kernels, old_masks, self.exp.prune_fc, round_index)
        else:
            counts = pruning.layerwise_counts(old_masks, self.rates, round_index)
            new_masks = pruning.magnitude_prune(kernels, old_masks, counts)
            self._cross_check(old_masks, new_masks, round_index, kernels)
        return new_masks

    def _random_masks(self, old_masks: dict, round_index: int) -> dict[str, np.ndarray]:
        if self.exp.pruning_scope == "global":  # match the magnitude ticket's per-layer counts at this level
            reference = read_npz(self.ensure_round("magnitude_rewind", round_index) / "masks.npz")
            counts = {name: int(mask.sum()) for name, mask in reference.items()}
        else:
            counts = pruning.layerwise_counts(old_masks, self.rates, round_index)
        rng = np.random.default_rng(derived_seed(self.seed, round_index, "random_masks"))
        new_masks = pruning.random_prune(old_masks, counts, rng)
        if self.exp.pruning_scope == "layerwise":
            self._cross_check(old_masks, new_masks, round_index)
        return new_masks

    def _cross_check(self, old_masks, new_masks, round_index: int, kernels=None) -> None:
        if self.options.check_tfmot:
            for name in self.layer_names:
                pruning.check_against_tfmot(name, old_masks[name], new_masks[name], self.rates[name], round_index,
                                            None if kernels is None else kernels[name])

    # ------------------------------------------------------------------------------------------ weights

    def _load_or_save_theta0(self) -> dict[str, np.ndarray]:
        path = results.trial_dir(self.run_dir, self.trial) / "theta0.npz"
        if path.exists():
            return read_npz(path)
        theta0 = {v.path: keras.ops.convert_to_numpy(v) for v in self.model.trainable_weights}
        write_npz(path, theta0)
        return theta0

    def _start_weights(self, strategy: str, round_index: int) -> dict[str, np.ndarray]:
        if strategy != "magnitude_random":
            return self.theta0
        fresh = build_model(self.exp.arch, self.splits.input_shape, self.splits.num_classes, self.exp.init,
                            derived_seed(self.seed, round_index, "reinit"), self.exp.precision)
        return {v.path: keras.ops.convert_to_numpy(v) for v in fresh.trainable_weights}

    def _set_start(self, weights: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> None:
        for variable in self.model.trainable_weights:
            variable.assign(weights[variable.path])
        self.model.set_masks(masks)

    # ------------------------------------------------------------------------------------------ one round

    def _train_round(self, strategy: str, round_index: int, masks: dict, start: dict, directory: Path) -> None:
        self._set_start(start, masks)
        remaining = pruning.remaining_percent(masks)
        save_ticket(self.model, self.splits.input_shape, directory / "ticket_init.keras")
        recorder = EarlyStopRecorder((self.splits.x_val, self.splits.y_val), (self.splits.x_test, self.splits.y_test),
                                     eval_every=self.exp.eval_every, iterations=self.exp.iterations,
                                     train=(self.splits.x_train, self.splits.y_train))
        callbacks = [recorder]
        if self.options.verbose:
            label = (f"trial {self.trial} · {strategy} · round {round_index + 1}/{self.exp.rounds} · "
                     f"{remaining:.2f}% of weights remaining")
            callbacks.append(ProgressBar(recorder, label))
        started = time.perf_counter()
        self.trainer.train(self.exp.iterations, self.exp.eval_every, derived_seed(self.seed, round_index, "data"),
                           callbacks)
        seconds = time.perf_counter() - started
        save_ticket(self.model, self.splits.input_shape, directory / "ticket_trained.keras")
        write_npz(directory / "masks.npz", masks)
        write_csv(directory / "history.csv", recorder.history_frame())
        result = recorder.result
        write_json(directory / "metrics.json", {
            "round": round_index, "remaining": round(remaining, 4), **result,
            "generalization_gap": result["train_acc"] - result["test_acc"], "train_seconds": round(seconds, 3),
        })


def run_experiment(experiment: Experiment, output_dir: str | os.PathLike = "outputs",
                   data_dir: str | os.PathLike | None = None, options: RunOptions | None = None) -> Path:
    """Run (or resume) every trial, round and strategy of an experiment; returns the run directory."""
    options = options or RunOptions()
    strategies = resolve_strategies(options.strategies)
    if options.trials < 1:
        raise ValueError(f"trials must be at least 1, not {options.trials}")
    run_dir = prepare_run_dir(experiment, output_dir)
    splits = load_splits(experiment, data_dir)
    for trial in range(options.trials):
        TrialRun(experiment, splits, run_dir, trial, options).run(strategies)
    return run_dir


def summary_table(run_dir: Path) -> pd.DataFrame:
    """Mean over trials per (strategy, round): remaining %, early-stop iteration, val and test accuracy."""
    table = results.collect_results(run_dir)
    columns = ["remaining", "es_iteration", "val_acc", "test_acc", "final_test_acc"]
    return table.groupby(["strategy", "round"])[columns].mean().round(2)


def recorded_experiment(run_dir: Path) -> Experiment:
    return Experiment(**read_json(Path(run_dir) / "config.json")["experiment"])
