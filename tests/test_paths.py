"""Run folders (`lottery/paths.py`): the layout, finding a path's run and unit, results rebuilt from finished
units, and the published runs: found under their recorded hashes and reported from their committed files."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from lottery_keras import config
from lottery_keras.analysis import report, study
from lottery_keras.columns import results_columns
from lottery_keras.lottery.paths import RunFolder, RunFolderError
from lottery_keras.storage import write_json

REPO = Path(__file__).resolve().parents[1]
# The runs git tracks (runs still going beside them have a config.json too, but nothing published yet).
PUBLISHED = sorted((REPO / path).parent for path in subprocess.run(
    ["git", "-C", str(REPO), "ls-files", "outputs/*/config.json"], capture_output=True, text=True,
    check=True).stdout.split())


def metrics(round_index: int, test_acc: float) -> dict:
    return {column: float(round_index) for column in results_columns()} | {"round": round_index, "test_acc": test_acc}


@pytest.fixture
def run(tmp_path) -> RunFolder:
    folder = RunFolder.for_experiment(config.from_preset("es667", "mnist", "lenet300_100"), tmp_path)
    folder.directory.mkdir()
    folder.write_config(config.from_preset("es667", "mnist", "lenet300_100"))
    return folder


def finish(unit, test_acc: float) -> None:
    unit.directory.mkdir(parents=True, exist_ok=True)
    write_json(unit.metrics, metrics(unit.round, test_acc))


def test_layout_names_every_file(run):
    unit = run.unit(2, "magnitude_rewind", 3)
    assert unit.directory == run.directory / "trial_2" / "magnitude_rewind" / "round_03"
    assert (unit.ticket_init.name, unit.ticket_trained.name, unit.masks.name, unit.history.name,
            unit.metrics.name) == ("ticket_init.keras", "ticket_trained.keras", "masks.npz", "history.csv",
                                   "metrics.json")
    assert run.theta0(2) == run.directory / "trial_2" / "theta0.npz"
    assert run.results_csv(2, "random_rewind") == run.directory / "trial_2" / "random_rewind" / "results.csv"
    assert run.hash == config.from_preset("es667", "mnist", "lenet300_100").hash
    assert run.experiment() == config.from_preset("es667", "mnist", "lenet300_100")


def test_a_paths_run_and_unit_come_from_config_json_not_from_its_depth(run):
    unit = run.unit(1, "magnitude_random", 4)
    finish(unit, 90.0)
    for inside in (unit.metrics, unit.directory, run.trial_dir(1), run.directory):
        assert RunFolder.containing(inside).directory == run.directory
    assert run.unit_at(unit.metrics) == unit and run.unit_at(unit.directory) == unit
    with pytest.raises(RunFolderError, match="not a round folder"):
        run.unit_at(run.strategy_dir(1, "magnitude_random"))
    with pytest.raises(RunFolderError, match="not inside a run folder"):
        RunFolder.containing(run.directory.parent)


def test_results_are_rebuilt_from_finished_units_and_keep_recorded_rows_without_units(run):
    """A kill between a unit's metrics and the table leaves results.csv short: the next refresh repairs it.
    Rows of rounds without a unit folder (a published table whose tickets are not committed) are kept; a unit
    folder without metrics (an unfinished attempt) drops its row."""
    recorded = pd.DataFrame([metrics(0, 97.0), metrics(1, 98.0), metrics(2, 50.0)], columns=results_columns())
    run.strategy_dir(0, "magnitude_rewind").mkdir(parents=True)
    recorded.to_csv(run.results_csv(0, "magnitude_rewind"), index=False)
    finish(run.unit(0, "magnitude_rewind", 1), 98.5)  # finished here: wins over the recorded row
    run.unit(0, "magnitude_rewind", 2).directory.mkdir()  # an attempt in progress
    finish(run.unit(0, "magnitude_rewind", 3), 96.0)  # finished, not yet in the table
    table = run.strategy_results(0, "magnitude_rewind")
    assert table["round"].tolist() == [0, 1, 3]
    assert table["test_acc"].tolist() == [97.0, 98.5, 96.0]
    run.refresh_results(0, "magnitude_rewind")
    pd.testing.assert_frame_equal(pd.read_csv(run.results_csv(0, "magnitude_rewind")), table, check_dtype=False)
    assert run.results()[["trial", "strategy"]].drop_duplicates().values.tolist() == [[0, "magnitude_rewind"]]


@pytest.mark.parametrize("published", PUBLISHED, ids=lambda path: path.name)
def test_published_runs_keep_their_directories(published):
    folder = RunFolder(published)
    experiment = folder.experiment()
    assert experiment.hash == folder.hash and experiment.run_name == published.name


def committed_outputs(tmp_path: Path) -> Path:
    """outputs/ as a fresh clone has it: the files git tracks (as staged, so a commit can be checked before it is
    made), none of the local run files beside them."""
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "outputs"], capture_output=True,
                             check=True).stdout
    subprocess.run(["git", "-C", str(REPO), "checkout-index", "-f", f"--prefix={tmp_path}/", "-z", "--stdin"],
                   input=tracked, check=True)
    return tmp_path / "outputs"


@pytest.mark.parametrize("published", PUBLISHED, ids=lambda path: path.name)
def test_published_reports_rebuild_identically_from_committed_files(published, tmp_path):
    clone = committed_outputs(tmp_path) / published.name
    rebuilt = report.write_report([clone], tmp_path / "rebuilt")
    for name in ("rounds.csv", "summary.csv", "report.md"):
        assert (rebuilt / name).read_text() == (clone / "report" / name).read_text(), name


def test_the_combined_beyond_the_paper_report_rebuilds_identically_from_committed_files(tmp_path):
    outputs = committed_outputs(tmp_path)
    if not (outputs / "beyond").is_dir():
        pytest.skip("no combined report published")
    runs = [outputs / "mnist-lenet300_100-77d8bf14f1", outputs / "mnist-lenet300_100-73ba147a01"]
    rebuilt = report.write_report(runs, tmp_path / "rebuilt")
    for name in ("rounds.csv", "summary.csv", "report.md"):
        assert (rebuilt / name).read_text() == (outputs / "beyond" / name).read_text(), name


def test_the_published_study_rebuilds_identically_from_committed_files(tmp_path):
    outputs = committed_outputs(tmp_path)
    runs = study.protocol_runs(sorted(path.parent for path in outputs.glob("*/config.json")))
    rebuilt = study.write_study(runs, tmp_path / "rebuilt")
    for name in ("seeds.csv", "tickets.csv", "controls.csv", "paper_claims.csv", "study.md"):
        assert (rebuilt / name).read_text() == (outputs / "study" / name).read_text(), name


def test_config_json_follows_extended_rounds_and_keeps_the_data_source(run):
    experiment = run.experiment()
    run.write_config(dataclasses.replace(experiment, rounds=20), data_source="/data/mnist")
    run.write_config(dataclasses.replace(experiment, rounds=5))  # a shorter command does not shrink the plan
    assert run.experiment().rounds == 20 and run.read_config()["data_source"] == "/data/mnist"
    assert run.hash == experiment.hash


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "is not a lottery_keras run configuration"),
    ('{"experiment": {"dataset": "mnist", "arch": "lenet5"}, "hash": "x"}',
     "valid experiment .the record lacks init, "),
    ('{"experiment": ', "not valid JSON"),
])
def test_a_damaged_config_names_the_file(run, content, message):
    run.config_path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        run.experiment()
    assert str(run.config_path) in str(info.value)


@pytest.mark.parametrize("change, message", [
    ({"rounds": "three"}, "wrongly typed rounds .'three'."),
    ({"augment": 1}, "wrongly typed augment"),
    ({"lr_drops": [5, "a"]}, "wrongly typed lr_drops"),
    ({"bogus": 1}, "unknown fields bogus"),
])
def test_a_config_with_a_wrong_field_names_the_field(run, change, message):
    recorded = run.read_config()
    write_json(run.config_path, recorded | {"experiment": recorded["experiment"] | change})
    with pytest.raises(ValueError, match=message):
        run.experiment()


def read_results(run: RunFolder) -> None:
    run.strategy_results(0, "magnitude_rewind")


def read_histories(run: RunFolder) -> None:
    run.unit_histories("magnitude_rewind", 1)


@pytest.mark.parametrize("damage, read, file, message", [
    (lambda unit: write_json(unit.metrics, metrics(1, 98.0) | {"test_acc": "high"}), read_results, "metrics.json",
     "holds non-numeric test_acc"),
    (lambda unit: write_json(unit.metrics, metrics(1, 98.0) | {"round": "1"}), read_results, "metrics.json",
     "holds non-numeric round"),
    (lambda unit: write_json(unit.metrics, metrics(2, 98.0)), read_results, "metrics.json",
     "metrics of round 2, not of its"),
    (lambda unit: unit.history.write_text("iteration,test_acc\n100,abc\n"), read_histories, "history.csv",
     "holds non-numeric values in test_acc"),
    (lambda unit: unit.history.write_text(""), read_histories, "history.csv", "cannot be read"),
])
def test_a_damaged_round_file_names_the_file_and_how_to_redo_the_round(run, damage, read, file, message):
    unit = run.unit(0, "magnitude_rewind", 1)
    unit.directory.mkdir(parents=True)
    write_json(unit.metrics, metrics(1, 98.0) | {"diverged": False})
    unit.history.write_text("iteration,test_acc\n100,97.5\n")
    damage(unit)
    with pytest.raises(ValueError, match=message) as info:
        read(run)
    assert f"{unit.directory / file}" in str(info.value) and f"delete {unit.directory}" in str(info.value)


def test_a_results_table_with_words_for_numbers_names_the_table(run):
    run.strategy_dir(0, "magnitude_rewind").mkdir(parents=True)
    table = pd.DataFrame([metrics(0, 97.0)], columns=results_columns()).assign(remaining="lots")
    table.to_csv(run.results_csv(0, "magnitude_rewind"), index=False)
    with pytest.raises(ValueError, match="non-numeric values in remaining") as info:
        run.results()
    assert str(run.results_csv(0, "magnitude_rewind")) in str(info.value)
