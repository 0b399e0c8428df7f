"""The IMP controller: rounds of train → prune → rewind, for the winning ticket and its controls.

Work is organised in (trial, strategy, round) units (`paths.Unit`); what each strategy's masks and starting
weights are, and so which units a unit depends on, is the strategy registry's (`strategies.py`). A run started
again with the same command skips finished units (those with their tickets), so a killed run resumes after its
last finished round, and inside the round it was training from that round's last checkpoint
(`train/checkpoint.py`). Every unit depends only on files (θ0, earlier masks and tickets) and seeds derived from
(seed, trial, round), so a resumed run produces the same results as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import keras
import numpy as np
import pandas as pd

from lottery_keras import catalog, data
from lottery_keras.columns import declared, names
from lottery_keras.config import Experiment
from lottery_keras.lottery import parallel, pruning, strategies
from lottery_keras.lottery.evaluations import RoundEvaluations
from lottery_keras.lottery.paths import RunFolder, Unit
from lottery_keras.lottery.seeds import derived_seed
from lottery_keras.lottery.strategies import STRATEGIES, Strategy
from lottery_keras.nn.models import MaskedModel, build_model
from lottery_keras.nn.network import build_network, network_fingerprint
from lottery_keras.nn.saving import TicketError, load_ticket
from lottery_keras.storage import DamagedFileError, atomic_path, read_npz, remove_temporaries, write_csv, write_npz
from lottery_keras.train import evaluation
from lottery_keras.train import plan as execution
from lottery_keras.train.callbacks import EarlyStopRecorder, ProgressBar, WeightsAt
from lottery_keras.train.checkpoint import RoundCheckpoint
from lottery_keras.train.loop import Trainer, compile_model
from lottery_keras.train.schedule import LearningRateSchedule


class ChainStopped(Exception):
    """A unit cannot run because a unit it needs diverged; the message says which."""


def open_run_folder(experiment: Experiment, output_dir: str | os.PathLike) -> RunFolder:
    """Create (or re-open) the run folder; fails clearly when unwritable."""
    folder = RunFolder.for_experiment(experiment, output_dir)
    try:
        folder.directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"cannot write the run directory {folder.directory}: {err.strerror or err}; "
                      "choose another folder with --output-dir") from err
    return folder


def prepare_run_folder(experiment: Experiment, output_dir: str | os.PathLike) -> RunFolder:
    """`open_run_folder`, and record the configuration (for callers that drive `TrialRun` themselves)."""
    folder = open_run_folder(experiment, output_dir)
    folder.write_config(experiment)
    return folder


def load_splits(experiment: Experiment, data_dir: str | os.PathLike | None) -> data.Splits:
    splits = data.load(experiment.dataset, data_dir)
    return splits.head(train=experiment.train_subset) if experiment.train_subset else splits


def save_ticket(model: MaskedModel, input_shape: tuple[int, ...], path: os.PathLike) -> None:
    """Save weights and masks as a `.keras` file without optimizer state (tickets are for loading, not resuming)."""
    clone = model.__class__.from_config(model.get_config())
    clone.build((None, *input_shape))
    clone.set_weights(model.get_weights())
    with atomic_path(path) as tmp:
        clone.save(tmp)


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How to execute an experiment (none of it changes results, so none of it is in the run hash).

    `plan` None: the execution plan `train.plan.decide` makes for the architecture on this machine. Either is
    applied with `train.plan.apply_threads`, which falls back to TensorFlow's pools, unsharded, when they can no
    longer change.
    """

    strategies: Sequence[str] = tuple(STRATEGIES)
    trials: Sequence[int] = (0,)  # trial t runs with seed + t
    check_tfmot: bool = True
    plan: execution.ExecutionPlan | None = None
    verbose: bool = True
    workers: int = 1  # above 1: trials run side by side on that many local Ray workers (`parallel.py`)
    ray_address: str | None = None  # an existing Ray cluster to run the trials on instead
    robustness: bool = False  # also score each trained ticket under corruptions and FGSM (finished rounds too)
    stability: bool = False  # also train a second copy per round on another data order: `instability` (costs 2×)
    checkpoint_minutes: float = 10.0  # a round in training saves a checkpoint this often to go on from (0: never)

    def __post_init__(self):
        if self.workers < 1:
            raise ValueError(f"--workers must be at least 1, not {self.workers}")
        if not isinstance(self.checkpoint_minutes, (int, float)) or not 0 <= self.checkpoint_minutes < math.inf:
            raise ValueError(f"--checkpoint-minutes must be a number of minutes, 0 (never) or more, not "
                             f"{self.checkpoint_minutes!r}")

    @property
    def parallel(self) -> bool:
        return self.workers > 1 or self.ray_address is not None


class TrialRun:
    """The rounds of all strategies for one trial (one seed): shares θ0, one model and one compiled loop."""

    def __init__(self, experiment: Experiment, splits: data.Splits, folder: RunFolder, trial: int,
                 options: RunOptions):
        self.experiment, self.splits, self.folder = experiment, splits, folder
        self.trial, self.options = trial, options
        self.seed = experiment.seed + trial
        self.network = folder.read_network() if experiment.model else None
        plan = execution.apply_threads(options.plan or execution.decide(experiment.builtin_arch))
        if plan.loop == "keras" and experiment.rewind_iteration:
            raise ValueError("--loop keras cannot start training inside an epoch's sample order, as late rewinding "
                             "does: use the compiled loop")
        self.model = self._build(self.seed, plan.model_execution)
        compile_model(self.model, experiment.learning_rate)
        self.layer_names = [layer.name for layer in self.model.masked_layers()]
        self.rates = {name: experiment.rates_by_kind[kind] for name, kind in self.model.layer_kinds().items()}
        self.theta0 = self._load_or_save_theta0()
        self.schedule = LearningRateSchedule(experiment.learning_rate, experiment.warmup_iterations,
                                             experiment.lr_drops, experiment.lr_drop_factor)
        self.trainer = Trainer(self.model, splits.x_train, splits.y_train, batch_size=experiment.batch_size,
                               augment=experiment.augment, plan=plan)
        self.evaluator = evaluation.SplitEvaluator(self.model, {"val": (splits.x_val, splits.y_val),
                                                                "test": (splits.x_test, splits.y_test),
                                                                "train": (splits.x_train, splits.y_train)})
        self.requested = set(strategies.resolve(options.strategies))  # `run` narrows it to the names it runs
        self.checked: set[Unit] = set()  # finished units whose files were read back whole in this process
        self.evaluations = RoundEvaluations(self)

    def _build(self, seed: int, model_execution=None) -> MaskedModel:
        if self.network is not None:
            return build_network(self.network, seed)
        experiment = self.experiment
        return build_model(experiment.arch, self.splits.input_shape, self.splits.num_classes, experiment.init, seed,
                           experiment.precision, model_execution)

    # ------------------------------------------------------------------------------------------ schedule

    def run(self, names: Sequence[str]) -> None:
        self.requested = set(names)  # the optional evaluations are for these, not for the units they depend on
        for name in self.folder.strategies(self.trial):
            if self.folder.results_are_stale(self.trial, name):
                self.folder.refresh_results(self.trial, name)
        stopped: set[str] = set()
        for round_index in range(self.experiment.rounds):
            for name in names:
                if name in stopped:
                    continue
                try:
                    self.ensure_round(name, round_index)
                except ChainStopped as stop:
                    stopped.add(name)
                    print(f"warning: trial {self.trial} · {name}: {stop}; its later rounds are skipped",
                          file=sys.stderr, flush=True)

    def ensure_round(self, name: str, round_index: int) -> Unit:
        """Run one (strategy, round) unit, and first the units it depends on, unless it is finished with its
        tickets."""
        unit = self.folder.unit(self.trial, name, round_index)
        if unit.is_resumable():
            if unit not in self.checked:
                unit.check_intact()
                self.checked.add(unit)
            if name in self.requested and self.evaluations.add(unit):
                self.folder.refresh_results(self.trial, name)
            unit.remove_stale_checkpoints()
            return unit
        strategy = STRATEGIES[name]
        needed = {dependency: self.ensure_round(*dependency)
                  for dependency in strategy.dependencies(round_index, self.experiment.pruning_scope)}
        pruned = strategy.mask_source.pruned_unit(strategy, round_index, needed) if round_index else None
        if pruned is not None and pruned.read_metrics().get("diverged"):
            raise ChainStopped(f"{pruned.strategy} round {pruned.round} diverged, so its trained weights give no "
                               "magnitude masks (a lower --lr may help)")
        if strategy.same_at_constant_rate and self.schedule.is_constant:  # the same computation: copy it
            unit.copy_from(self.ensure_round(strategy.same_at_constant_rate, round_index))
        elif round_index == 0 and strategy.dense_round_from:  # the same computation: copy it
            unit.copy_from(needed[strategy.dense_round_from, 0])
        else:
            masks = strategy.mask_source.masks(self, strategy, round_index, needed) if round_index \
                else self.dense_masks()
            self._train_round(strategy, unit, masks, strategy.start_rule.weights(self, strategy, round_index, needed))
        if name in self.requested:
            self.evaluations.add(unit)
        self.folder.refresh_results(self.trial, name)
        return unit

    # ------------------------------------------------------------------------------------------ masks

    def dense_masks(self) -> pruning.Masks:
        """Every mask all ones (round 0)."""
        return {layer.name: np.ones(layer.mask.shape, np.float32) for layer in self.model.masked_layers()}

    def read_masks(self, unit: Unit) -> pruning.Masks:
        """The unit's masks, which must fit this run's masked layers."""
        masks = unit.read_masks()
        expected = {layer.name: tuple(layer.mask.shape) for layer in self.model.masked_layers()}
        if {name: mask.shape for name, mask in masks.items()} != expected:
            raise DamagedFileError(f"{unit.masks} does not hold one mask per masked layer of this run "
                                   f"({', '.join(expected)}) in its shape; {unit.redo_hint()}")
        return masks

    def trained_model(self, unit: Unit) -> MaskedModel:
        return self.read_ticket(unit, unit.ticket_trained)

    def trained_kernels(self, unit: Unit) -> dict[str, np.ndarray]:
        return {layer.name: keras.ops.convert_to_numpy(layer.kernel)
                for layer in self.trained_model(unit).masked_layers()}

    @staticmethod
    def read_ticket(unit: Unit, path) -> MaskedModel:
        try:
            return load_ticket(path)
        except TicketError as err:
            raise DamagedFileError(f"{err}; {unit.redo_hint()}") from None

    def cross_check(self, old_masks: pruning.Masks, new_masks: pruning.Masks, round_index: int,
                    scores: pruning.Weights | None = None) -> None:
        """Check layerwise masks against tfmot's schedule and, given the `scores` they were cut by, its magnitude
        threshold (unless the options turn the check off)."""
        if self.options.check_tfmot:
            for name in self.layer_names:
                pruning.check_against_tfmot(name, old_masks[name], new_masks[name], self.rates[name], round_index,
                                            None if scores is None else scores[name])

    # ------------------------------------------------------------------------------------------ weights

    def _load_or_save_theta0(self) -> dict[str, np.ndarray]:
        path = self.folder.theta0(self.trial)
        if path.exists():
            return self._read_weights(path, "delete it and run the same command again: θ0 is recreated from the seed")
        theta0 = {v.path: keras.ops.convert_to_numpy(v) for v in self.model.state_variables()}
        write_npz(path, theta0)
        return theta0

    def _read_weights(self, path: Path, redo_hint: str) -> dict[str, np.ndarray]:
        """Weights saved by variable path (θ0, a rewind point), which must fit this run's model."""
        try:
            saved = read_npz(path)
        except (DamagedFileError, FileNotFoundError) as err:
            raise DamagedFileError(f"{err}; {redo_hint}") from None
        shapes = {v.path: tuple(v.shape) for v in self.model.state_variables()}
        if {name: value.shape for name, value in saved.items()} != shapes:
            raise DamagedFileError(f"{path} does not hold weights of this run's model (other variables or shapes); "
                                   f"{redo_hint}")
        return saved

    def trained_state(self, unit: Unit) -> dict[str, np.ndarray]:
        """The unit's trained weights, by this run's variable paths (saved models name their variables anew)."""
        trained = self.trained_model(unit)
        return {own.path: keras.ops.convert_to_numpy(value)
                for own, value in zip(self.model.state_variables(), trained.state_variables())}

    def fresh_state(self, seed: int) -> dict[str, np.ndarray]:
        """The weights the architecture's initializers draw from `seed`, by variable path."""
        return {v.path: keras.ops.convert_to_numpy(v) for v in self._build(seed).state_variables()}

    def rewind_point(self, strategy: str) -> dict[str, np.ndarray]:
        """θ_K, kept under late rewinding by the dense round of `strategy`, trained from θ0."""
        dense = self.ensure_round(strategy, 0)
        if dense.read_metrics().get("diverged"):
            raise ChainStopped("the dense round diverged, so it has no rewind point (a lower --lr may help)")
        if not dense.rewind_point.exists():
            raise ChainStopped(f"{dense.strategy} round 0 keeps no rewind point θ_K for late rewinding: it was not "
                               f"trained from θ0, or {dense.rewind_point.name} was removed ({dense.redo_hint()})")
        return self._read_weights(dense.rewind_point, dense.redo_hint())

    def set_start(self, weights: dict[str, np.ndarray], masks: pruning.Masks) -> None:
        for variable in self.model.state_variables():
            variable.assign(weights[variable.path])
        self.model.set_masks(masks)

    def seed_randomness(self, round_index: int, *purpose: str) -> None:
        """Set the model's random generators (dropout) from (seed, round, purpose), as the batch order is, so a
        resumed run draws what an uninterrupted one does."""
        for index, state in enumerate(self.model.seed_states()):
            state.assign(np.array([derived_seed(self.seed, round_index, "dropout", *purpose, index), 0], np.int64))

    def schedule_and_offset(self, strategy: Strategy, round_index: int) -> tuple[LearningRateSchedule, int]:
        """A round's learning-rate schedule, and the step it starts at (K for rounds rewound to θ_K)."""
        schedule = self.schedule.final() if strategy.final_rate else self.schedule
        return schedule, self.experiment.rewind_iteration if strategy.start_rule.rewinds and round_index > 0 else 0

    # ------------------------------------------------------------------------------------------ one round

    def _train_round(self, strategy: Strategy, unit: Unit, masks: pruning.Masks, start: dict) -> None:
        unit.metrics.unlink(missing_ok=True)  # results without tickets (a clone): they mark the unit finished last
        self.set_start(start, masks)
        remaining = pruning.remaining_percent(masks)
        save_ticket(self.model, self.splits.input_shape, unit.ticket_init)
        schedule, offset = self.schedule_and_offset(strategy, unit.round)
        iterations = self.experiment.iterations - offset  # a late rewind trains the steps after K
        recorder = EarlyStopRecorder((self.splits.x_val, self.splits.y_val), (self.splits.x_test, self.splits.y_test),
                                     eval_every=self.experiment.eval_every, iterations=iterations,
                                     train=(self.splits.x_train, self.splits.y_train), iteration_offset=offset,
                                     evaluator=self.evaluator)
        callbacks = [recorder]
        rewind_point = WeightsAt(self.experiment.rewind_iteration)
        keep_rewind_point = strategy.start_rule.rewinds and unit.round == 0 and self.experiment.rewind_iteration > 0
        if keep_rewind_point:
            callbacks.append(rewind_point)
        if self.options.verbose:
            label = (f"trial {self.trial} · {strategy.name} · round {unit.round + 1}/{self.experiment.rounds} · "
                     f"{remaining:.2f}% of weights remaining")
            callbacks.append(ProgressBar(recorder, label))
        self.seed_randomness(unit.round)
        data_seed = derived_seed(self.seed, unit.round, "data")
        checkpoint = self.round_checkpoint(unit.checkpoint, data_seed, iterations, offset)
        started = time.perf_counter()
        self.trainer.train(iterations, self.experiment.eval_every, data_seed, callbacks, schedule=schedule,
                           step_offset=offset, pause_at=[self.experiment.rewind_iteration] if keep_rewind_point else [],
                           checkpoint=checkpoint)
        seconds = checkpoint.seconds_spent() if checkpoint else time.perf_counter() - started
        if keep_rewind_point and rewind_point.weights is not None:  # None: diverged before step K
            write_npz(unit.rewind_point, rewind_point.weights)
        save_ticket(self.model, self.splits.input_shape, unit.ticket_trained)
        write_npz(unit.masks, masks)
        write_csv(unit.history, recorder.history_frame())
        result = recorder.result
        if result["diverged"]:
            print(f"warning: trial {self.trial} · {strategy.name} · round {unit.round}: training diverged (validation "
                  f"loss {recorder.history[-1]['val_loss']:.3g} at iteration {recorder.history[-1]['iteration']}); "
                  "flagged in its results and left out of every mean", file=sys.stderr, flush=True)
        unit.write_metrics({
            "round": unit.round, "remaining": round(remaining, 4), **result,
            "generalization_gap": result["train_acc"] - result["test_acc"], "train_seconds": round(seconds, 3),
            "engine": self.trainer.last_engine,
        })
        unit.checkpoint.unlink(missing_ok=True)

    def round_checkpoint(self, path: Path, data_seed: int, iterations: int, offset: int) -> RoundCheckpoint | None:
        """The mid-round checkpoint of one training run, unless the options turn them off."""
        if not self.options.checkpoint_minutes:
            return None
        identity = {"data_seed": data_seed, "iterations": iterations, "step_offset": offset}
        return RoundCheckpoint(path, identity, every_seconds=60 * self.options.checkpoint_minutes,
                               verbose=self.options.verbose)


def run_experiment(experiment: Experiment, output_dir: str | os.PathLike = "outputs",
                   data_dir: str | os.PathLike | None = None, options: RunOptions | None = None, *,
                   network: dict | None = None, splits: data.Splits | None = None) -> RunFolder:
    """Run (or resume) every trial, round and strategy of an experiment; returns the run folder.

    `network`: the masked architecture (a `MaskedNetwork`'s `get_config()`) of a model of one's own, whose fingerprint
    is `experiment.model`. `splits`: the data to train on, required for data of one's own (`experiment.data`);
    otherwise the experiment's dataset is loaded (from `data_dir`, or the usual places)."""
    options = options or RunOptions()
    names = strategies.resolve(options.strategies)
    _check_runnable(experiment, options, names, network, splits)
    if splits is None:
        splits = load_splits(experiment, data_dir)
    elif experiment.train_subset:
        splits = splits.head(train=experiment.train_subset)
    # Before the run folder exists: a mismatch leaves none behind.
    _check_data(experiment, splits, network, options.robustness)
    folder = open_run_folder(experiment, output_dir)
    with folder.lock():
        remove_temporaries(folder.directory, "trial_*/**")  # not report/: reports run without the lock
        folder.write_config(experiment, data_source=splits.source)
        if network is not None:
            folder.write_network(network)
        if options.verbose:
            print(f"data: {experiment.dataset} from {splits.source}")
        if options.parallel:
            parallel.run_trials(run_trial_in_worker, experiment, folder.directory, splits, options, names)
            for trial in options.trials:
                for name in names:
                    folder.refresh_results(trial, name)
        else:
            for trial in options.trials:
                TrialRun(experiment, splits, folder, trial, options).run(names)
    return folder


def run_trial_in_worker(experiment: Experiment, run_dir: str, splits: data.Splits, options: RunOptions,
                        names: Sequence[str], trial: int) -> int:
    """One trial in a worker process (`parallel.run_trials`): one TensorFlow thread, unsharded batches."""
    plan = execution.decide(experiment.builtin_arch, batch_shards=1, threads=1,
                            sparse_kernels=None if experiment.precision == "float32" else False)
    plan = execution.apply_threads(dataclasses.replace(plan, inter_op_threads=1))
    TrialRun(experiment, splits, RunFolder(run_dir), trial, dataclasses.replace(options, plan=plan, verbose=False)
             ).run(names)
    return trial


def _check_data(experiment: Experiment, splits: data.Splits, network: dict | None, robustness: bool) -> None:
    """The data must suit the batch size, the augmentation, the robustness evaluation and the model: one line saying
    why not."""
    if experiment.batch_size > len(splits.x_train):
        raise ValueError(f"batch size {experiment.batch_size} exceeds the {len(splits.x_train)} training samples")
    spec = None if network is not None else catalog.architecture(experiment.arch)
    _check_images(experiment, splits, spec, robustness=robustness)
    if network is not None:
        _check_network_fits(network, splits)


def _check_images(experiment: Experiment, splits: data.Splits, spec: catalog.ArchitectureSpec | None,
                  robustness: bool) -> None:
    """What needs images (augmentation, a built-in conv net, robustness) gets images, large enough for the net."""
    shape = splits.input_shape
    convolutional = spec is not None and spec.convolutional
    image_users = [what for what, uses in (("augmentation crops and flips", experiment.augment),
                                            (f"{experiment.arch} takes", convolutional),
                                            ("--robustness corrupts", robustness)) if uses]
    if image_users and len(shape) != 3:
        raise ValueError(f"{image_users[0]} images (height, width, channels); the {splits.name} samples have shape "
                         f"{shape}")
    if convolutional and min(shape[:2]) < spec.min_image_side:
        smallest = spec.min_image_side
        raise ValueError(f"{experiment.arch} needs images of at least {smallest}×{smallest} (its convolutions and "
                         f"pooling shrink smaller ones to nothing); the {splits.name} samples are "
                         f"{shape[0]}×{shape[1]}")


def _check_network_fits(network: dict, splits: data.Splits) -> None:
    """A network of one's own takes the data's input shape and has a logit for every label."""
    shape = splits.input_shape
    model = build_network(network, seed=0)
    expected = tuple(model.network.inputs[0].shape[1:])
    if len(expected) != len(shape) or any(size not in (None, given) for size, given in zip(expected, shape)):
        raise ValueError(f"model {model.name} takes inputs of shape {expected}, but the {splits.name} samples have "
                         f"shape {shape}")
    labels = max(int(split.max(initial=0)) for split in (splits.y_train, splits.y_val, splits.y_test))
    if labels >= model.num_classes:
        raise ValueError(f"the {splits.name} labels go up to {labels}, but model {model.name} has "
                         f"{model.num_classes} outputs (one logit per class)")


def _check_runnable(experiment: Experiment, options: RunOptions, names: Sequence[str], network: dict | None,
                    splits: data.Splits | None) -> None:
    """Refuse, before any work, what this experiment cannot run (one line saying why)."""
    for name in names:
        refusal = STRATEGIES[name].mask_source.refusal(experiment)
        if refusal:
            raise ValueError(refusal)
    if not options.trials or min(options.trials) < 0:
        raise ValueError(f"trials must be one or more indices from 0, not {list(options.trials)}")
    if bool(experiment.model) != (network is not None):
        raise ValueError("a model of one's own needs its masked network configuration (`network`), and only it")
    if network is not None and network_fingerprint(network) != experiment.model:
        raise ValueError(f"the network given is not the one the experiment names (fingerprint "
                         f"{network_fingerprint(network)}, not {experiment.model})")
    if experiment.data and splits is None:
        raise ValueError(f"the experiment trains on data of one's own ({experiment.dataset}): pass its splits")


def summary_table(folder: RunFolder) -> pd.DataFrame:
    """Mean over trials per (strategy, round) of the columns declared `in_summary` (remaining %, early-stop
    iteration, val and test accuracy); rounds that diverged are counted, not averaged."""
    table = folder.results()
    columns = [name for name in names(declared(in_summary=True)) if name in table]
    keys = ["strategy", "round"]
    summary = table[~table["diverged"]].groupby(keys)[columns].mean().round(2)
    summary = summary.reindex(table.groupby(keys).size().index)
    summary["remaining"] = table.groupby(keys)["remaining"].mean().round(2)
    if table["diverged"].any():
        summary["diverged"] = table.groupby(keys)["diverged"].sum().astype(int)
    return summary
