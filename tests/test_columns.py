"""Result columns (`lottery_keras/columns.py`): the declarations reproduce the published tables, a column declared
once reaches results.csv, the status summary and the report, and an undeclared one is an error, never dropped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lottery_keras import config
from lottery_keras.analysis import report
from lottery_keras.columns import (COLUMNS, Column, Plot, check_declared, check_filled, register_column,
                                   results_columns, unmeasured)
from lottery_keras.lottery import controller
from lottery_keras.lottery.paths import RunFolder
from lottery_keras.storage import write_json
from lottery_keras.train.callbacks import RECORDED

REPO = Path(__file__).resolve().parents[1]
PUBLISHED_HEADER = ("round,remaining,es_iteration,val_acc,test_acc,final_test_acc,train_acc,generalization_gap,ece,"
                    "val_loss,train_seconds,diverged,corruption_acc,adversarial_acc,instability")


@pytest.fixture
def run(tmp_path) -> RunFolder:
    experiment = config.from_preset("es667", "mnist", "lenet300_100")
    folder = RunFolder.for_experiment(experiment, tmp_path)
    folder.directory.mkdir()
    folder.write_config(experiment)
    return folder


@pytest.fixture
def sharpness():
    """A column of one's own, declared once and only for the test."""
    column = register_column(Column("sharpness", "sharp.", "derived", optional=True, in_summary=True, table_rank=11,
                                    digits=3, plot=Plot("beyond_accuracy", "sharpness (points)")))
    yield column
    del COLUMNS[column.name]


def round_metrics(round_index: int, **extra) -> dict:
    return {name: float(round_index) for name in results_columns()} | {"round": round_index, "diverged": False,
                                                                         "engine": "dense", **extra}


def finish(folder: RunFolder, round_index: int, **extra) -> None:
    unit = folder.unit(0, "magnitude_rewind", round_index)
    unit.directory.mkdir(parents=True)
    unit.write_metrics(round_metrics(round_index, **extra))


def test_the_declarations_give_the_published_column_order():
    published = (REPO / "outputs").glob("*/trial_*/*/results.csv")
    headers = {path.read_text().partition("\n")[0] for path in published}
    assert PUBLISHED_HEADER in headers
    assert ",".join(results_columns(COLUMNS)) == PUBLISHED_HEADER
    assert all(PUBLISHED_HEADER.startswith(header) for header in headers)


def test_a_column_declared_once_reaches_results_csv_the_summary_and_the_report(run, sharpness):
    finish(run, 0, sharpness=1.5)
    finish(run, 1)  # a round evaluated without it
    run.refresh_results(0, "magnitude_rewind")
    lines = run.results_csv(0, "magnitude_rewind").read_text().splitlines()
    assert lines[0] == ",".join(results_columns()) + ",sharpness"
    assert lines[1].endswith(",1.5") and lines[2].endswith(",")
    summary = controller.summary_table(run)
    assert summary["sharpness"].tolist()[0] == 1.5
    rounds = report.aggregate_rounds(report.load_run(run))
    table = report.round_table(report.strategy_rounds(rounds, rounds["run"][0], "magnitude_rewind"))
    assert table.columns[-1] == "sharp." and table["sharp."].tolist()[0] == 1.5
    assert report.round_table_cells()["sharpness_mean"] == ("sharp.", 3)
    assert [column.name for column in report.panels_of("beyond_accuracy", rounds)][-1] == "sharpness"
    assert "beyond_accuracy" not in report.optional_figures()


def test_an_undeclared_column_is_an_error_that_says_where_to_declare_it(run):
    unit = run.unit(0, "magnitude_rewind", 0)
    unit.directory.mkdir(parents=True)
    with pytest.raises(ValueError, match=r"undeclared result column\(s\) sharpness: .*register_column"):
        unit.write_metrics(round_metrics(0, sharpness=1.5))
    assert not unit.is_finished()
    write_json(unit.metrics, round_metrics(0, sharpness=1.5))  # written around the check: not dropped either
    with pytest.raises(ValueError, match="metrics.json holds undeclared result column"):
        run.refresh_results(0, "magnitude_rewind")


def test_the_recorder_fills_exactly_the_columns_of_its_evaluations():
    result = {**unmeasured(RECORDED), "diverged": True}
    assert check_filled(result, RECORDED, "recorder") is result
    with pytest.raises(ValueError, match="lacks diverged and holds none"):
        check_filled(unmeasured(RECORDED), RECORDED, "recorder")
    with pytest.raises(ValueError, match="lacks none and holds train_seconds"):
        check_filled({**result, "train_seconds": 1.0}, RECORDED, "recorder")
    with pytest.raises(ValueError, match="recorder holds undeclared result column"):
        check_declared({**result, "sharpness": 1.0}, "recorder")


@pytest.mark.parametrize("column, error, message", [
    (Column("test_acc", "again", "test"), ValueError, "registered already"),
    ({"name": "sharpness"}, TypeError, "not dict"),
])
def test_register_column_refuses_a_taken_name_and_what_is_not_a_column(column, error, message):
    with pytest.raises(error, match=message):
        register_column(column)


@pytest.mark.parametrize("fields, message", [
    (dict(name="Sharpness"), "lowercase"),
    (dict(name="trial"), "none of run, trial"),
    (dict(evaluation="vibes"), "evaluation must be one of"),
    (dict(kind="text", plot=Plot("beyond_accuracy", "words")), "only numbers"),
])
def test_a_column_that_cannot_be_tabled_is_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        Column(**{"name": "sharpness", "label": "sharpness", "evaluation": "derived", **fields})


def test_a_column_plotted_in_an_undeclared_figure_is_an_error():
    register_column(Column("sharpness", "sharpness", "derived", plot=Plot("sharpness", "sharpness")))
    try:
        with pytest.raises(ValueError, match="sharpness are plotted in figures .* FIGURES"):
            report.figures_of(pd.DataFrame())
    finally:
        del COLUMNS["sharpness"]


def test_the_columns_load_without_tensorflow():
    code = "import sys, lottery_keras.columns; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
