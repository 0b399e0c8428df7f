"""Run folders: the one module that names a run's files, reads them and says which work is finished.

    <output_dir>/<dataset>-<arch>-<hash>/
        config.json                      the resolved Experiment and its hash
        network.json                     a network of one's own: its masked architecture (`nn/network.py`)
        trial_<t>/theta0.npz             the trial's initial weights θ0 (shared by its strategies)
        trial_<t>/<strategy>/results.csv one row per finished round (the table reports read; its columns are
                                         declared in `lottery_keras.columns`)
        trial_<t>/<strategy>/round_<rr>/ one unit of work:
            ticket_init.keras            the ticket: θ_start ⊙ m (θ0 for rewinding strategies)
            ticket_trained.keras         its weights after training
            masks.npz                    one 0/1 array per layer
            history.csv                  one row per evaluation (learning curves)
            metrics.json                 the round's results; written last, so it marks the unit finished
            checkpoint.npz               while it trains: where an interrupted round goes on from
            stability_copy_checkpoint.npz  the same for the second copy of --stability

A strategy's results.csv is derived from its finished units and rebuilt after each one; rows of rounds whose unit
folder is absent are kept (the first published trials committed only the tables). Published runs commit each
unit's metrics.json and history.csv, not its tickets and masks: such a unit has results, but later rounds cannot
start from it, so a run resumed from a clone trains it again (`Unit.is_resumable`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
from pathlib import Path
from typing import Iterator

import pandas as pd

from lottery_keras.columns import check_declared, declared, names, results_columns
from lottery_keras.config import Experiment
from lottery_keras.storage import (TEMPORARY_PREFIX, DamagedFileError, check_archive, read_json, read_npz, write_csv,
                                   write_json)

CONFIG = "config.json"
NETWORK = "network.json"
THETA0 = "theta0.npz"
RESULTS = "results.csv"
TICKET_INIT = "ticket_init.keras"
TICKET_TRAINED = "ticket_trained.keras"
MASKS = "masks.npz"
ROBUSTNESS = "robustness.csv"  # test accuracy per corruption and severity, with --robustness
STABILITY = "stability.csv"  # test accuracy along the path between two copies, with --stability
REWIND_POINT = "rewind_point.npz"  # θ_K, kept by a dense round from θ0 under late rewinding
HISTORY = "history.csv"
CHECKPOINT = "checkpoint.npz"  # a round in training (`train/checkpoint.py`); deleted once it is finished
COPY_CHECKPOINT = "stability_copy_checkpoint.npz"  # the same for its stability copy
METRICS = "metrics.json"
REPORT = "report"
LOCK = ".lock"


class RunInUseError(RuntimeError):
    """Another process holds the run (`RunFolder.lock`)."""


class RunFolderError(ValueError):
    """A path that should be (part of) a run folder is not, or lacks what was asked for; the message says which."""


def _trial_name(trial: int) -> str:
    return f"trial_{trial}"


def _round_name(round_index: int) -> str:
    return f"round_{round_index:02d}"


def _parse_index(name: str, prefix: str) -> int | None:
    suffix = name.removeprefix(prefix)
    return int(suffix) if name.startswith(prefix) and suffix.isdigit() else None


@dataclasses.dataclass(frozen=True)
class Unit:
    """One (trial, strategy, round) of a run: a folder of files, finished once its metrics exist."""

    directory: Path
    trial: int
    strategy: str
    round: int

    @property
    def ticket_init(self) -> Path:
        return self.directory / TICKET_INIT

    @property
    def ticket_trained(self) -> Path:
        return self.directory / TICKET_TRAINED

    @property
    def masks(self) -> Path:
        return self.directory / MASKS

    @property
    def robustness(self) -> Path:
        return self.directory / ROBUSTNESS

    @property
    def stability(self) -> Path:
        return self.directory / STABILITY

    @property
    def rewind_point(self) -> Path:
        return self.directory / REWIND_POINT

    @property
    def history(self) -> Path:
        return self.directory / HISTORY

    @property
    def metrics(self) -> Path:
        return self.directory / METRICS

    @property
    def checkpoint(self) -> Path:
        return self.directory / CHECKPOINT

    @property
    def copy_checkpoint(self) -> Path:
        return self.directory / COPY_CHECKPOINT

    def remove_stale_checkpoints(self) -> None:
        """Delete what a kill just after the unit (or its stability copy) finished left behind."""
        self.checkpoint.unlink(missing_ok=True)
        if self.copy_checkpoint.is_file() and "instability" in self.read_metrics():
            self.copy_checkpoint.unlink()

    def is_finished(self) -> bool:
        """Its results exist."""
        return self.metrics.is_file()

    def is_resumable(self) -> bool:
        """Finished, with the masks and trained ticket that later rounds start from."""
        return self.is_finished() and self.masks.is_file() and self.ticket_trained.is_file()

    def check_intact(self) -> None:
        """Raise DamagedFileError, naming the file and the fix, when the unit's metrics or any of its tickets and
        masks cannot be read back whole (a run going on from it would otherwise keep or build on a damaged
        file)."""
        self.read_metrics()
        for path in (self.ticket_init, self.ticket_trained, self.masks):
            if path.is_file():
                try:
                    check_archive(path)
                except DamagedFileError as err:
                    raise DamagedFileError(f"{err}; {self.redo_hint()}") from None

    def redo_hint(self) -> str:
        return f"delete {self.directory} and run the same command again to redo that round"

    def read_metrics(self) -> dict:
        try:
            metrics = read_json(self.metrics)
        except DamagedFileError as err:
            raise DamagedFileError(f"{err}; {self.redo_hint()}") from None
        if not isinstance(metrics, dict) or "round" not in metrics:
            raise DamagedFileError(f"{self.metrics} is not a round's metrics; {self.redo_hint()}")
        wrong = [key for key in _numeric_columns() if key in metrics and not _is_number(metrics[key])]
        if wrong:
            raise DamagedFileError(f"{self.metrics} holds non-numeric {', '.join(wrong)}; {self.redo_hint()}")
        if metrics["round"] != self.round:
            raise DamagedFileError(f"{self.metrics} holds the metrics of round {metrics['round']}, not of its "
                                   f"folder's round {self.round}; {self.redo_hint()}")
        return metrics

    def write_metrics(self, metrics: dict) -> None:
        """Write the round's results, which must all be declared columns (`columns.check_declared`).

        Args:
            metrics: The round's metrics, by column name.
        """
        write_json(self.metrics, check_declared(metrics, str(self.metrics)))

    def read_masks(self) -> dict:
        try:
            return read_npz(self.masks)
        except DamagedFileError as err:
            raise DamagedFileError(f"{err}; {self.redo_hint()}") from None

    def read_history(self) -> pd.DataFrame:
        return _read_table(self.history, ["iteration", "test_acc"], self, numeric=True)

    def copy_from(self, source: Unit) -> None:
        """Make this unit a copy of `source`'s folder (the same computation), replacing any unfinished attempt
        only once the copy is whole."""
        staging = self.directory.with_name(f"{TEMPORARY_PREFIX}{self.directory.name}")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            shutil.copytree(source.directory, staging)
        except OSError as err:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(err, shutil.Error):  # its argument: a list of (source, destination, reason)
                err = OSError(str(err.args[0][0][2]))
            raise OSError(f"cannot copy {source.directory} to {self.directory}: {err.strerror or err}") from None
        shutil.rmtree(self.directory, ignore_errors=True)
        staging.replace(self.directory)


class RunFolder:
    """The folder of one run (see the module docstring for its layout)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.directory)!r})"

    @classmethod
    def for_experiment(cls, experiment: Experiment, output_dir: str | os.PathLike) -> "RunFolder":
        return cls(Path(output_dir) / experiment.run_name)

    @classmethod
    def containing(cls, path: str | os.PathLike) -> "RunFolder":
        """The run that `path` (the run folder itself, or a trial, strategy or unit folder, or a file in one)
        belongs to: the nearest enclosing folder with a config.json."""
        path = Path(path)
        for candidate in (path, *path.parents):
            if (candidate / CONFIG).is_file():
                return cls(candidate)
        raise RunFolderError(f"{path} is not inside a run folder (no {CONFIG} in it or above it)")

    # ------------------------------------------------------------------------------------------ configuration

    @property
    def config_path(self) -> Path:
        return self.directory / CONFIG

    def exists(self) -> bool:
        return self.config_path.is_file()

    def write_config(self, experiment: Experiment, data_source: str | None = None) -> None:
        """Record the configuration: `rounds` (not in the hash) grows when a run is extended, and the data source
        a command used is kept; everything else is fixed by the hash."""
        recorded = self.read_config() if self.exists() else {}
        planned = max(experiment.rounds, recorded.get("experiment", {}).get("rounds", 0))
        config = {"experiment": {**experiment.to_dict(), "rounds": planned}, "hash": experiment.hash}
        source = data_source or recorded.get("data_source")
        if source:
            config["data_source"] = source
        if config != recorded:
            write_json(self.config_path, config)

    def read_config(self) -> dict:
        if not self.exists():
            raise RunFolderError(f"{self.directory} is not a run folder (no {CONFIG})")
        try:
            config = read_json(self.config_path)
        except DamagedFileError as err:
            raise RunFolderError(f"{err}; restore it from a copy, or delete the run folder") from None
        if not isinstance(config, dict) or not isinstance(config.get("experiment"), dict) or "hash" not in config:
            raise RunFolderError(f"{self.config_path} is not a lottery_keras run configuration (it lacks "
                                 "'experiment' or 'hash'); restore it from a copy, or delete the run folder")
        return config

    def write_network(self, config: dict) -> None:
        """Record the architecture of a network of one's own (what its trials rebuild θ0 and tickets from)."""
        if not (self.directory / NETWORK).is_file():
            write_json(self.directory / NETWORK, config)

    def read_network(self) -> dict:
        path = self.directory / NETWORK
        if not path.is_file():
            raise RunFolderError(f"{self.directory} trains a model of one's own but lacks {NETWORK}; run the same "
                                 "command (or find_ticket call) again to record it")
        config = read_json(path)
        if not isinstance(config, dict) or "network" not in config:
            raise RunFolderError(f"{path} is not a masked network's configuration; delete it and run the same "
                                 "command again")
        return config

    def experiment(self) -> Experiment:
        recorded = self.read_config()["experiment"]
        try:
            return Experiment.from_dict(recorded)
        except (TypeError, ValueError) as err:
            raise RunFolderError(f"{self.config_path} does not describe a valid experiment ({err}); restore it "
                                 "from a copy, or delete the run folder") from None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run for this process: a second process on the same run gets a RunInUseError at once instead
        of doing the same work twice. The operating system releases the lock when the holder dies."""
        import fcntl  # POSIX: imported here so that reading run folders works everywhere

        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / LOCK, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise RunInUseError(f"{self.directory} is in use by {holder}; wait for it to finish, or give another "
                                    "--output-dir") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()} on {socket.gethostname()}")
            handle.flush()
            try:
                yield
            finally:
                handle.truncate(0)

    @property
    def hash(self) -> str:
        return self.read_config()["hash"]

    @property
    def report_dir(self) -> Path:
        return self.directory / REPORT

    # ------------------------------------------------------------------------------------------ layout

    def trial_dir(self, trial: int) -> Path:
        return self.directory / _trial_name(trial)

    def theta0(self, trial: int) -> Path:
        return self.trial_dir(trial) / THETA0

    def strategy_dir(self, trial: int, strategy: str) -> Path:
        return self.trial_dir(trial) / strategy

    def results_csv(self, trial: int, strategy: str) -> Path:
        return self.strategy_dir(trial, strategy) / RESULTS

    def unit(self, trial: int, strategy: str, round_index: int) -> Unit:
        return Unit(self.strategy_dir(trial, strategy) / _round_name(round_index), trial, strategy, round_index)

    def unit_at(self, path: str | os.PathLike) -> Unit:
        """The unit whose folder is `path` or holds the file `path`."""
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        try:
            trial_name, strategy, round_name = folder.resolve().relative_to(self.directory.resolve()).parts
        except ValueError:
            raise RunFolderError(f"{path} is not a round folder of the run {self.directory}") from None
        trial, round_index = _parse_index(trial_name, "trial_"), _parse_index(round_name, "round_")
        if trial is None or round_index is None:
            raise RunFolderError(f"{path} is not a round folder of the run {self.directory}")
        return self.unit(trial, strategy, round_index)

    # ------------------------------------------------------------------------------------------ what exists

    def trials(self) -> list[int]:
        found = (_parse_index(p.name, "trial_") for p in self.directory.glob("trial_*") if p.is_dir())
        return sorted(index for index in found if index is not None)

    def strategies(self, trial: int) -> list[str]:
        directory = self.trial_dir(trial)
        return sorted(p.name for p in directory.iterdir() if p.is_dir()) if directory.is_dir() else []

    def finished_units(self, trial: int, strategy: str) -> list[Unit]:
        units = []
        for folder in self.strategy_dir(trial, strategy).glob("round_*"):
            round_index = _parse_index(folder.name, "round_")
            if round_index is not None and self.unit(trial, strategy, round_index).is_finished():
                units.append(self.unit(trial, strategy, round_index))
        for unit in units:
            unit.read_metrics()  # every reader (rerun, report, export) refuses a damaged round the same way
        return sorted(units, key=lambda unit: unit.round)

    # ------------------------------------------------------------------------------------------ results

    def strategy_results(self, trial: int, strategy: str) -> pd.DataFrame:
        """One row per finished round of one strategy of one trial, ordered by round: the finished units' metrics,
        and the recorded rows of rounds that have no unit folder here."""
        rows = {unit.round: check_declared(unit.read_metrics(), str(unit.metrics))
                for unit in self.finished_units(trial, strategy)}
        recorded = self.results_csv(trial, strategy)
        if recorded.is_file():
            for row in self._read_results_csv(recorded).to_dict("records"):
                if not self.unit(trial, strategy, int(row["round"])).directory.exists():
                    rows.setdefault(int(row["round"]), row)
        table = pd.DataFrame(list(rows.values()), columns=results_columns(key for row in rows.values() for key in row))
        for flag in [name for name in names(declared(kind="flag")) if name in table]:
            table[flag] = table[flag].eq(True)  # False in tables from before the flag existed
        return table.sort_values("round", ignore_index=True).astype({"round": int})

    @staticmethod
    def _read_results_csv(path: Path) -> pd.DataFrame:
        try:
            table = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise DamagedFileError(f"{path} is damaged ({type(err).__name__}); restore it from git, or delete it "
                                   "to rebuild it from the round folders beside it") from None
        if "round" not in table:
            raise DamagedFileError(f"{path} is not a results table (no 'round' column); restore it from git, or "
                                   "delete it to rebuild it from the round folders beside it")
        check_declared(dict.fromkeys(table.columns), str(path))
        wrong = [column for column in _numeric_columns()
                 if column in table and not pd.api.types.is_numeric_dtype(table[column])]
        if wrong:
            raise DamagedFileError(f"{path} holds non-numeric values in {', '.join(wrong)}; restore it from git, or "
                                   "delete it to rebuild it from the round folders beside it")
        return table

    def results_are_stale(self, trial: int, strategy: str) -> bool:
        """Whether results.csv lacks a finished unit (a kill between a unit's metrics and the table's rewrite)."""
        recorded = self.results_csv(trial, strategy)
        finished = {unit.round for unit in self.finished_units(trial, strategy)}
        if not recorded.is_file():
            return bool(finished)
        return not finished <= set(self._read_results_csv(recorded)["round"])

    def refresh_results(self, trial: int, strategy: str) -> None:
        """Rewrite the strategy's results.csv from what `strategy_results` finds."""
        write_csv(self.results_csv(trial, strategy), self.strategy_results(trial, strategy))

    def results(self) -> pd.DataFrame:
        """Every finished round of the run, with leading `trial` and `strategy` columns."""
        frames = []
        for trial in self.trials():
            for strategy in self.strategies(trial):
                frame = self.strategy_results(trial, strategy)
                frame.insert(0, "strategy", strategy)
                frame.insert(0, "trial", trial)
                frames.append(frame)
        frames = [frame for frame in frames if not frame.empty]
        if not frames:
            return pd.DataFrame(columns=["trial", "strategy", *results_columns()])
        return pd.concat(frames, ignore_index=True)

    def robustness(self) -> pd.DataFrame:
        """Test accuracy per corruption and severity of every round scored with --robustness, with leading
        `trial`, `strategy` and `round` columns (empty without any)."""
        frames = []
        for trial in self.trials():
            for strategy in self.strategies(trial):
                for unit in self.finished_units(trial, strategy):
                    if unit.robustness.is_file():
                        frame = _read_table(unit.robustness, ["corruption", "severity", "test_acc"], unit)
                        frames.append(frame.assign(trial=trial, strategy=strategy, round=unit.round))
        columns = ["trial", "strategy", "round", "corruption", "severity", "test_acc"]
        return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)

    def unit_histories(self, strategy: str, round_index: int) -> list[pd.DataFrame]:
        """The learning curves (history.csv) of one round of one strategy, from every trial that finished it."""
        units = [self.unit(trial, strategy, round_index) for trial in self.trials()]
        return [unit.read_history() for unit in units
                if unit.is_finished() and unit.history.is_file() and not unit.read_metrics().get("diverged")]


def _numeric_columns() -> list[str]:
    return names(declared(kind="number"))


def _is_number(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _read_table(path: Path, columns: list[str], unit: Unit, numeric: bool = False) -> pd.DataFrame:
    """A small CSV a round wrote, or a DamagedFileError naming it and the fix; with `numeric`, every column must
    hold numbers."""
    try:
        frame = pd.read_csv(path)
    except (ValueError, OSError) as err:  # pandas' parser errors are ValueErrors
        raise DamagedFileError(f"{path} cannot be read ({err}); {unit.redo_hint()}") from None
    missing = [column for column in columns if column not in frame]
    if missing:
        raise DamagedFileError(f"{path} lacks the column(s) {', '.join(missing)}; {unit.redo_hint()}")
    if numeric:
        wrong = [column for column in frame if not pd.api.types.is_numeric_dtype(frame[column])]
        if wrong:
            raise DamagedFileError(f"{path} holds non-numeric values in {', '.join(wrong)}; {unit.redo_hint()}")
    return frame
