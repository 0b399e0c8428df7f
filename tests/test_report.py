"""Reports: figures exist, table numbers match the round files recomputed here, partial runs and missing
strategies still report. One tiny real run (3 rounds × every strategy × 2 trials) shared by the module."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lottery_keras import config
from lottery_keras.analysis import report
from lottery_keras.lottery import controller as imp
from lottery_keras.lottery.strategies import STRATEGIES

ALWAYS_DRAWN = [stem for stem in report.FIGURES if stem not in report.optional_figures()]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    experiment = config.from_preset("es667", "mnist", "lenet300_100", rounds=3, iterations=60, eval_every=30,
                                    train_subset=600, batch_size=60)
    options = imp.RunOptions(strategies=["all"], trials=(0, 1), check_tfmot=False, verbose=False)
    return imp.run_experiment(experiment, output_dir=tmp_path_factory.mktemp("runs"), options=options).directory


@pytest.fixture(scope="module")
def report_dir(run_dir) -> Path:
    return report.write_report([run_dir])


def copy_run(run_dir: Path, destination: Path) -> Path:
    """A copy of the run's small files (no tickets, masks or report) under `destination`."""
    target = destination / run_dir.name
    shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns("*.keras", "*.npz", "report"))
    return target


def round_metrics(run_dir: Path) -> dict[tuple[str, int], list[dict]]:
    """(strategy, round) → the metrics.json of each trial that finished it, read without the package."""
    found: dict[tuple[str, int], list[dict]] = {}
    for path in sorted(run_dir.glob("trial_*/*/round_*/metrics.json")):
        metrics = json.loads(path.read_text())
        found.setdefault((path.parent.parent.name, metrics["round"]), []).append(metrics)
    return found


def expected_summary(metrics: dict[tuple[str, int], list[dict]]) -> dict[str, float]:
    def mean_acc(strategy: str, round_index: int) -> float:
        return float(np.mean([m["test_acc"] for m in metrics[(strategy, round_index)]]))

    ticket_rounds = sorted(r for s, r in metrics if s == "magnitude_rewind")
    accs = {r: mean_acc("magnitude_rewind", r) for r in ticket_rounds}
    remaining = {r: metrics[("magnitude_rewind", r)][0]["remaining"] for r in ticket_rounds}
    dense = accs[0]
    peak = max(accs, key=accs.get)
    in_range = [r for r in ticket_rounds if all(accs[q] >= dense - 2.0 for q in range(r + 1))]
    expected = {"dense_test_acc": dense, "peak_test_acc": accs[peak], "peak_remaining": remaining[peak],
                "ticket_range_remaining": remaining[max(in_range)]}
    before_collapse = [r for r in ticket_rounds if all(accs[q] >= dense - 10.0 for q in range(r + 1))]
    for other, prefix in (("magnitude_random", "reinit"), ("random_rewind", "random_pruning")):
        last = max(r for s, r in metrics if s == other and r in before_collapse)
        expected[f"{prefix}_remaining"] = remaining[last]
        expected[f"{prefix}_test_acc"] = mean_acc(other, last)
        expected[f"{prefix}_gap"] = accs[last] - mean_acc(other, last)
    return expected


def assert_rounds_match(rounds: pd.DataFrame, metrics: dict[tuple[str, int], list[dict]]) -> None:
    assert len(rounds) == len(metrics)
    for (strategy, round_index), trials in metrics.items():
        row = rounds[(rounds["strategy"] == strategy) & (rounds["round"] == round_index)].iloc[0]
        assert row["trials"] == len(trials)
        assert row["remaining"] == pytest.approx(trials[0]["remaining"])
        for metric in ("test_acc", "es_iteration", "val_acc", "final_test_acc", "generalization_gap", "ece",
                       "train_seconds"):
            values = [m[metric] for m in trials]
            assert row[f"{metric}_mean"] == pytest.approx(np.mean(values))
            assert row[f"{metric}_min"] == pytest.approx(min(values))
            assert row[f"{metric}_max"] == pytest.approx(max(values))


def assert_summary_matches(summary: pd.Series, expected: dict[str, float]) -> None:
    for key in ("dense_test_acc", "peak_test_acc", "peak_remaining", "ticket_range_remaining", "reinit_remaining",
                "reinit_test_acc", "random_pruning_remaining", "random_pruning_test_acc"):
        assert summary[key] == pytest.approx(expected[key]), key
    assert summary["rewind_minus_reinit"] == pytest.approx(expected["reinit_gap"])
    assert summary["magnitude_minus_random"] == pytest.approx(expected["random_pruning_gap"])


# ------------------------------------------------------------------------------------------------ full run


def test_report_location_and_figures(run_dir, report_dir):
    assert report_dir == run_dir / "report"
    for stem in ALWAYS_DRAWN:
        png, svg = report_dir / f"{stem}.png", report_dir / f"{stem}.svg"
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
        assert svg.stat().st_size > 1_000 and b"<svg" in svg.read_bytes()[:2_000]


def test_round_table_matches_metrics_files(run_dir, report_dir):
    metrics = round_metrics(run_dir)
    assert {len(trials) for trials in metrics.values()} == {2} and len(metrics) == 3 * len(STRATEGIES)
    assert_rounds_match(pd.read_csv(report_dir / "rounds.csv"), metrics)
    for results_csv in run_dir.glob("trial_*/*/results.csv"):  # the controller's per-strategy tables agree
        own = pd.read_csv(results_csv)
        for row in own.itertuples():
            assert row.test_acc == pytest.approx(metrics[(results_csv.parent.name, row.round)][
                int(results_csv.parent.parent.name.split("_")[1])]["test_acc"])


def test_summary_matches_metrics_files(run_dir, report_dir):
    summary = pd.read_csv(report_dir / "summary.csv")
    assert list(summary["run"]) == ["mnist-lenet300_100"]
    assert_summary_matches(summary.iloc[0], expected_summary(round_metrics(run_dir)))


def test_markdown_links_figures_and_quotes_numbers(run_dir, report_dir):
    text = (report_dir / "report.md").read_text()
    for stem in ALWAYS_DRAWN:
        assert f"({stem}.png)" in text and f"({stem}.svg)" in text
    expected = expected_summary(round_metrics(run_dir))
    for key in ("dense_test_acc", "peak_test_acc", "reinit_test_acc", "reinit_gap", "random_pruning_gap"):
        assert f"| {expected[key]:.2f} |" in text, key
    assert "mnist / lenet300_100" in text and "dense − 2 points" in text
    assert "| 2 | 3 | 3 |" in text  # trials, rounds done by all trials, rounds planned
    assert "lossy" not in text  # the CIFAR-10 caveat is for CIFAR-10 runs only


# ------------------------------------------------------------------------------------------------ partial runs


@pytest.fixture(scope="module")
def derived_report(run_dir, tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """One report over two edited copies: `partial` lacks trial 1's last winning-ticket round, `ticket_only` has
    no control strategies. Both copies have the same dataset-arch, so their labels fall back to paths."""
    root = tmp_path_factory.mktemp("derived")
    copies = {name: copy_run(run_dir, root / name) for name in ("partial", "ticket_only")}
    (copies["partial"] / "trial_1" / "magnitude_rewind" / "round_02" / "metrics.json").unlink()
    for strategy in ("magnitude_random", "random_rewind"):
        for folder in copies["ticket_only"].glob(f"trial_*/{strategy}"):
            shutil.rmtree(folder)
    assert report.default_report_dir(list(copies.values())) == root / "report"
    return report.write_report(list(copies.values()), output_dir=root / "combined"), copies


def summary_row(report_dir: Path, label: str) -> pd.Series:
    summary = pd.read_csv(report_dir / "summary.csv")
    return summary[summary["run"] == label].iloc[0]


def test_several_runs_share_one_report(run_dir, derived_report):
    report_dir, copies = derived_report
    assert report_dir == copies["partial"].parent.parent / "combined"
    assert list(pd.read_csv(report_dir / "summary.csv")["run"]) == [f"partial/{run_dir.name}",
                                                                    f"ticket_only/{run_dir.name}"]
    for stem in ALWAYS_DRAWN:
        assert (report_dir / f"{stem}.png").stat().st_size > 0 and (report_dir / f"{stem}.svg").stat().st_size > 0


def test_partly_finished_run_reports(run_dir, derived_report):
    report_dir, copies = derived_report
    label = f"partial/{run_dir.name}"
    metrics = round_metrics(copies["partial"])
    rounds = pd.read_csv(report_dir / "rounds.csv")
    rounds = rounds[rounds["run"] == label]
    assert_rounds_match(rounds, metrics)
    assert rounds[(rounds["strategy"] == "magnitude_rewind") & (rounds["round"] == 2)].iloc[0]["trials"] == 1
    assert_summary_matches(summary_row(report_dir, label), expected_summary(metrics))
    assert f"| {label} | magnitude_rewind | 2 | 2 | 3 |" in (report_dir / "report.md").read_text()


def test_missing_strategies_leave_cells_empty(run_dir, derived_report):
    report_dir, _ = derived_report
    summary = summary_row(report_dir, f"ticket_only/{run_dir.name}")
    assert not math.isnan(summary["dense_test_acc"]) and not math.isnan(summary["ticket_range_remaining"])
    for key in ("reinit_remaining", "reinit_test_acc", "rewind_minus_reinit", "random_pruning_test_acc",
                "magnitude_minus_random"):
        assert math.isnan(summary[key]), key


def test_not_a_run_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        report.write_report([tmp_path])
