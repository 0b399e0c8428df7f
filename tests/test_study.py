"""Study reports: statistics over seeds recomputed here from the round files, ES667's published values placed
in the right cells, the paper's claims, figures. Real tiny runs (two seeds) and the published runs."""

from __future__ import annotations

import dataclasses
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lottery_keras import config
from lottery_keras.analysis import report, study
from lottery_keras.lottery import controller as imp

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """The frankle2019 LeNet-300-100 protocol cut down to 4 rounds of 60 iterations, two seeds, every strategy."""
    experiment = config.from_preset("frankle2019", "mnist", "lenet300_100", rounds=4, iterations=60,
                                    eval_every=30, train_subset=600)
    options = imp.RunOptions(strategies=["all"], trials=(0, 1), check_tfmot=False, verbose=False)
    return imp.run_experiment(experiment, tmp_path_factory.mktemp("runs"), options=options).directory


@pytest.fixture(scope="module")
def tiny_study(tiny_run) -> study.StudyRun:
    run, = report.load_runs([tiny_run])
    return study.study_run(run, study.es667_reference())


def test_es667_reference_holds_every_published_round():
    reference = study.es667_reference()
    assert len(reference) == 5 * 3 * 16
    mnist = reference[(reference["dataset"] == "mnist") & (reference["arch"] == "lenet300_100")]
    ticket = mnist[mnist["strategy"] == "magnitude_rewind"].set_index("round")
    assert ticket.at[0, "final_test_acc"] == 98.04 and ticket.at[11, "remaining"] == 1.98
    assert set(reference["strategy"]) == {"magnitude_rewind", "reinit_chain", "random_rewind"}


def test_a_custom_protocol_is_compared_at_early_stop_without_es667_values(tiny_study):
    assert tiny_study.preset is None and tiny_study.metric == "test_acc" and tiny_study.reference.empty
    assert tiny_study.complete_trials() == [0, 1]


def test_seed_statistics_match_the_round_files(tiny_study):
    results = tiny_study.results
    seeds = study.seed_table([tiny_study])
    tickets = study.ticket_table([tiny_study], seeds)
    assert len(seeds) == 2 and tickets.at[0, "seeds"] == 2
    per_trial = {t: results[(results["strategy"] == "magnitude_rewind") & (results["trial"] == t)].set_index("round")
                 for t in (0, 1)}
    dense = [per_trial[t].at[0, "test_acc"] for t in (0, 1)]
    peaks = [per_trial[t]["test_acc"].max() for t in (0, 1)]
    assert tickets.at[0, "dense_mean"] == pytest.approx(np.mean(dense))
    assert (tickets.at[0, "peak_min"], tickets.at[0, "peak_max"]) == pytest.approx((min(peaks), max(peaks)))
    assert math.isnan(tickets.at[0, "dense_es667"])
    for t in (0, 1):
        own = per_trial[t]["test_acc"]
        in_range = [r for r in own.index if (own[: r + 1] >= own[0] - 2.0).all()]
        row = seeds[seeds["trial"] == t].iloc[0]
        assert row["range_down_to"] == per_trial[t].at[max(in_range), "remaining"]


def test_control_gaps_are_per_seed_differences(tiny_study):
    controls = study.control_table([tiny_study])
    assert set(controls["comparison"]) == set(study.COMPARISONS)
    results = tiny_study.results.set_index(["strategy", "trial", "round"])["test_acc"]
    for row in controls.to_dict("records"):
        gaps = [results["magnitude_rewind", t, row["round"]] - results[row["control"], t, row["round"]]
                for t in (0, 1)]
        assert row["seeds"] == 2 and row["round"] >= 1
        assert (row["gap_mean"], row["gap_min"], row["gap_max"]) == pytest.approx(
            (np.mean(gaps), min(gaps), max(gaps)))


def test_the_paper_claims_are_measured_per_seed(tiny_study):
    assert study.paper_claims([tiny_study]).empty  # a custom protocol is not the paper's
    as_paper = dataclasses.replace(tiny_study, preset="frankle2019")
    claims = study.paper_claims([as_paper]).set_index("claim")
    results = tiny_study.results.set_index(["strategy", "trial", "round"])
    remaining = tiny_study.remaining()
    at_21 = int((np.log(remaining) - math.log(21.0)).abs().idxmin())
    sooner = [100 * (1 - results.at[("magnitude_rewind", t, at_21), "es_iteration"]
                     / results.at[("magnitude_rewind", t, 0), "es_iteration"]) for t in (0, 1)]
    row = claims.loc[f"early stop sooner than dense at {remaining[at_21]:.3g}% (%)"]
    assert row["paper"] == 38.0 and row["mean"] == pytest.approx(np.mean(sooner))
    assert claims.loc["tickets reach the dense accuracy down to (% remaining)", "paper"] == 3.6


def test_es667_values_sit_beside_ours_at_the_same_rounds(tiny_study):
    """Our tiny run read as if it followed the es667 protocol: the published cells must line up by round."""
    reference = study.es667_reference()
    mnist = reference[(reference["dataset"] == "mnist") & (reference["arch"] == "lenet300_100")].reset_index(drop=True)
    published = mnist.set_index(["strategy", "round"])["final_test_acc"]
    as_es667 = dataclasses.replace(tiny_study, preset="es667",  # compared through the tiny run's metric
                                   reference=mnist.rename(columns={"final_test_acc": "test_acc"}))
    controls = study.control_table([as_es667])
    chain = controls[controls["control"] == "reinit_chain"]
    for row in chain.to_dict("records"):
        assert row["ticket_es667"] == published["magnitude_rewind", row["round"]]
        assert row["gap_es667"] == pytest.approx(published["magnitude_rewind", row["round"]]
                                                 - published["reinit_chain", row["round"]])
    paper_reinit = controls[controls["control"] == "magnitude_random"]
    assert paper_reinit["control_es667"].isna().all()  # ES667 had no such control
    assert study.ticket_table([as_es667], study.seed_table([as_es667])).at[0, "dense_es667"] == 98.04


def test_the_study_command_writes_tables_figures_and_markdown(tiny_run, tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "run.py"), "study", str(tiny_run), "--output-dir",
                             str(tmp_path / "study")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    out = tmp_path / "study"
    for stem in study.FIGURES:
        assert (out / f"{stem}.png").read_bytes()[:8] == PNG_MAGIC
    text = (out / "study.md").read_text()
    tickets = pd.read_csv(out / "tickets.csv")
    assert f"{tickets.at[0, 'dense_mean']:.2f} [" in text
    assert "| mnist-lenet300_100 | custom | test_acc | 30 |" in text


def test_a_folder_with_no_finished_round_is_one_clear_error(tmp_path):
    folder = imp.prepare_run_folder(config.from_preset("es667", "mnist", "lenet5"), tmp_path)
    with pytest.raises(ValueError, match="no finished round"):
        study.write_study([folder.directory])


def copy_of(run_dir: Path, destination: Path, keep: str, drop_round_0: bool = False) -> Path:
    """The run with only the `keep` strategy's units (and, if asked, without their dense round)."""
    copy = destination / run_dir.name
    shutil.copytree(run_dir, copy)
    for strategy_dir in (path for path in copy.glob("trial_*/*") if path.is_dir()):
        if strategy_dir.name != keep:
            shutil.rmtree(strategy_dir)
        elif drop_round_0:
            shutil.rmtree(strategy_dir / "round_00")
            results = pd.read_csv(strategy_dir / "results.csv")
            results[results["round"] != 0].to_csv(strategy_dir / "results.csv", index=False)
    return copy


def test_a_run_of_the_winning_ticket_alone_has_a_study_without_controls(tiny_run, tmp_path):
    alone = copy_of(tiny_run, tmp_path, keep="magnitude_rewind")
    study.write_study([alone], tmp_path / "study")
    assert "No run has this control yet." in (tmp_path / "study" / "study.md").read_text()
    assert pd.read_csv(tmp_path / "study" / "controls.csv").empty


def test_a_run_without_its_dense_round_still_has_a_study(tiny_run, tmp_path):
    partial = copy_of(tiny_run, tmp_path, keep="magnitude_rewind", drop_round_0=True)
    study.write_study([partial], tmp_path / "study")
    assert (tmp_path / "study" / "learning_curves.png").read_bytes()[:8] == PNG_MAGIC


def test_learning_curve_panels_say_how_many_seeds_they_average(tiny_study):
    titles = [ax.get_title() for ax in study.learning_curve_figure([tiny_study]).axes if ax.get_visible()]
    assert titles and all(title.endswith("\n2 seeds") for title in titles)


def test_accuracy_panels_name_the_protocol_and_the_seeds(tiny_study):
    titles = {ax.get_title() for ax in study.accuracy_figure([tiny_study]).axes}
    assert titles == {f"{tiny_study.label} (custom protocol)\n2 seeds"}
