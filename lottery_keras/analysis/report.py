"""Reports: tables (CSV + markdown) and figures (PNG + SVG) from finished or partly finished runs.

    <report_dir>/report.md              protocol, trials, tables, links to the figures
    <report_dir>/rounds.csv             per (run, strategy, round): mean / min / max over trials of every metric
    <report_dir>/summary.csv            per run: dense and peak accuracy, winning-ticket range, control gaps
    <report_dir>/<figure>.png|.svg      the figures named in `FIGURES`

Which columns are averaged, shown in the per-round table and drawn in which figure panels is the columns'
declarations' (`lottery_keras.columns`).

Every statistic is taken over the trials that finished a round, so a run still in progress reports what it has.
Figures are drawn on `matplotlib.figure.Figure` objects (Agg canvas), never through pyplot's global state.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from matplotlib import colormaps, rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from lottery_keras.columns import Column, aggregated_columns, declared, names, plotted, table_columns
from lottery_keras.config import CORRUPTIONS, Experiment, adversarial_epsilon, preset_of
from lottery_keras.lottery import strategies
from lottery_keras.lottery.paths import REPORT, RunFolder
from lottery_keras.lottery.strategies import RANDOM_PRUNING_CONTROL as RANDOM_PRUNING
from lottery_keras.lottery.strategies import REINIT_CONTROL as REINIT
from lottery_keras.lottery.strategies import STRATEGIES
from lottery_keras.lottery.strategies import WINNING_TICKET as TICKET
from lottery_keras.storage import atomic_path, output_folder, write_csv

TICKET_TOLERANCE = 2.0  # accuracy points below dense that still count as "matching" the dense network
COLLAPSE_DROP = 10.0  # points below dense: the cliff every network of a configuration falls off together
CURVE_TARGETS = (100.0, 50.0, 20.0, 5.0)  # remaining % of the learning curves shown, plus the sparsest
CIFAR10_NOTE = ("CIFAR-10 figures come from the local lossy copy of the dataset (rebuilt from a JPEG re-encoding, "
                "pixels differ by up to ~14 grey levels; see shared/datasets/README.md): accuracies can differ "
                "slightly from published CIFAR-10 numbers.")


@dataclasses.dataclass(frozen=True)
class Run:
    label: str
    folder: RunFolder
    experiment: Experiment
    results: pd.DataFrame  # `load_run`: one row per finished (trial, strategy, round)


def label_of(strategy: str) -> str:
    return STRATEGIES[strategy].label if strategy in STRATEGIES else strategy


def color_of(strategy: str) -> str | None:
    return STRATEGIES[strategy].color if strategy in STRATEGIES else None


# ---------------------------------------------------------------------------------------------- loading


def common_parent(run_dirs: list[Path]) -> Path:
    """The deepest folder holding all `run_dirs` (resolved); for one run, its parent."""
    paths = [Path(run_dir).resolve() for run_dir in run_dirs]
    return Path(os.path.commonpath([path.parent for path in paths]))


def run_label(folder: RunFolder) -> str:
    """`<dataset>-<arch>`, from the run's config.json."""
    experiment = folder.experiment()
    return f"{experiment.dataset}-{experiment.arch}"


def load_run(folder: RunFolder, label: str | None = None) -> pd.DataFrame:
    """Every finished round of a run (`RunFolder.results`) with a leading `run` column."""
    frame = folder.results()
    flags = [name for name in names(declared(kind="flag")) if name in frame]
    frame = frame.astype({column: float for column in ["remaining", *metrics_in(frame)]} | dict.fromkeys(flags, bool))
    frame.insert(0, "run", label or run_label(folder))
    return frame


def load_runs(run_dirs: list[Path]) -> list[Run]:
    """The runs with unique labels: `<dataset>-<arch>`, or, when those collide, each run's path relative to the
    runs' common parent."""
    folders = [RunFolder(run_dir) for run_dir in run_dirs]
    for folder in folders:
        if not folder.directory.exists():
            raise FileNotFoundError(f"{folder.directory}: no such folder")
        if not folder.directory.is_dir():
            raise FileNotFoundError(f"{folder.directory} is a file, not a run directory")
        if not folder.exists():
            raise FileNotFoundError(f"{folder.directory} is not a run directory (no config.json)")
    labels = [run_label(folder) for folder in folders]
    if len(set(labels)) < len(labels):
        parent = common_parent(run_dirs)
        labels = [Path(run_dir).resolve().relative_to(parent).as_posix() for run_dir in run_dirs]
    return [Run(label, folder, folder.experiment(), load_run(folder, label))
            for label, folder in zip(labels, folders)]


# ---------------------------------------------------------------------------------------------- tables


def metrics_in(frame: pd.DataFrame) -> list[str]:
    """The metric columns of a results frame (`columns.aggregated_columns`): every run's, and the optional ones
    some rounds have."""
    return aggregated_columns(frame.columns)


def aggregate_rounds(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (run, strategy, round): remaining %, the number of trials that gave results and of those that
    diverged, and `<metric>_mean/_min/_max` over the former (a diverged round is not a result)."""
    keys = ["run", "strategy", "round"]
    grouped = frame.groupby(keys)
    table = frame[~frame["diverged"]].groupby(keys)[metrics_in(frame)].agg(["mean", "min", "max"])
    table.columns = [f"{metric}_{stat}" for metric, stat in table.columns]
    table = table.reindex(grouped.size().index)
    table.insert(0, "remaining", grouped["remaining"].mean())
    table.insert(1, "trials", grouped["diverged"].apply(lambda diverged: int((~diverged).sum())))
    table.insert(2, "diverged", grouped["diverged"].sum().astype(int))
    return table.reset_index()


def strategy_rounds(rounds: pd.DataFrame, run: str, strategy: str) -> pd.DataFrame:
    """The aggregated rounds of one strategy of one run, indexed and ordered by round."""
    selected = rounds[(rounds["run"] == run) & (rounds["strategy"] == strategy)]
    return selected.set_index("round").sort_index()


def ticket_range(accuracy: pd.Series, remaining: pd.Series, dense: float,
                 tolerance: float = TICKET_TOLERANCE) -> float:
    """The sparsest remaining % such that every round from dense down to it has `accuracy` ≥ dense − `tolerance`;
    NaN without a dense round. Both series are indexed by round."""
    sparsest = math.nan
    for expected, round_index in enumerate(accuracy.sort_index().index):
        if round_index != expected or not accuracy[round_index] >= dense - tolerance:
            break  # a missing round or a round below the tolerance ends the range
        sparsest = remaining[round_index]
    return sparsest


def before_collapse(accuracy: pd.Series) -> pd.Index:
    """The rounds from dense down to the last at which `accuracy` (indexed by round) is within `COLLAPSE_DROP`
    points of its dense value: where a comparison means something, unlike the levels where all sit near chance."""
    return accuracy.index[accuracy.index <= ticket_range(accuracy, accuracy.index.to_series(),
                                                         accuracy.get(0, math.nan), tolerance=COLLAPSE_DROP)]


def compare_sparsest(first: pd.DataFrame, second: pd.DataFrame) -> tuple[float, float, float]:
    """(remaining %, first's and second's mean test accuracy) at the sparsest round both reached before `first`
    collapses (`before_collapse`)."""
    common = before_collapse(first["test_acc_mean"].dropna()).intersection(second["test_acc_mean"].dropna().index)
    if common.empty:
        return math.nan, math.nan, math.nan
    last = common.max()
    return first.at[last, "remaining"], first.at[last, "test_acc_mean"], second.at[last, "test_acc_mean"]


def run_summary(rounds: pd.DataFrame, run: str) -> dict:
    """One row of the study summary (see `study_summary`)."""
    ticket = strategy_rounds(rounds, run, TICKET)
    dense = ticket.at[0, "test_acc_mean"] if 0 in ticket.index else math.nan
    peak = ticket["test_acc_mean"].idxmax() if ticket["test_acc_mean"].notna().any() else None
    reinit_at, rewind_acc, reinit_acc = compare_sparsest(ticket, strategy_rounds(rounds, run, REINIT))
    random_at, magnitude_acc, random_acc = compare_sparsest(ticket, strategy_rounds(rounds, run, RANDOM_PRUNING))
    return {
        "run": run, "dense_test_acc": dense,
        "peak_test_acc": math.nan if peak is None else ticket.at[peak, "test_acc_mean"],
        "peak_remaining": math.nan if peak is None else ticket.at[peak, "remaining"],
        "ticket_range_remaining": ticket_range(ticket["test_acc_mean"], ticket["remaining"], dense),
        "reinit_remaining": reinit_at, "rewind_test_acc": rewind_acc, "reinit_test_acc": reinit_acc,
        "rewind_minus_reinit": rewind_acc - reinit_acc,
        "random_pruning_remaining": random_at, "magnitude_test_acc": magnitude_acc,
        "random_pruning_test_acc": random_acc, "magnitude_minus_random": magnitude_acc - random_acc,
    }


def study_summary(rounds: pd.DataFrame, runs: list[str]) -> pd.DataFrame:
    """One row per run: dense and peak test accuracy of the winning ticket (mean over trials) and the remaining %
    at the peak, the winning-ticket range (`ticket_range`), and rewind vs random reinit / magnitude vs random
    pruning at the sparsest round both strategies reached. Cells of missing strategies are NaN."""
    return pd.DataFrame([run_summary(rounds, run) for run in runs])


def trials_table(runs: list[Run]) -> pd.DataFrame:
    """Per (run, strategy): trials with a finished round, rounds finished by all of them, sparsest remaining %."""
    rows = []
    for run in runs:
        for strategy in strategies.ordered(run.results["strategy"]):
            own = run.results[run.results["strategy"] == strategy]
            per_round = own.groupby("round")["trial"].nunique()
            rows.append({"run": run.label, "strategy": strategy, "trials": own["trial"].nunique(),
                         "rounds done by all trials": int((per_round == own["trial"].nunique()).sum()),
                         "rounds planned": run.experiment.rounds, "sparsest remaining %": own["remaining"].min()})
    return pd.DataFrame(rows, columns=["run", "strategy", "trials", "rounds done by all trials", "rounds planned",
                                       "sparsest remaining %"])


def schedule_text(experiment) -> str:
    """The learning-rate schedule and rewind point when not the presets' constant rate and θ0 ('' otherwise)."""
    parts = []
    if experiment.warmup_iterations:
        parts.append(f"warm-up {experiment.warmup_iterations} steps")
    if experiment.lr_drops:
        parts.append(f"×{experiment.lr_drop_factor:g} at steps {', '.join(map(str, experiment.lr_drops))}")
    if experiment.rewind_iteration:
        parts.append(f"rewind to step {experiment.rewind_iteration}")
    return "; ".join(parts)


def coinciding_note(runs: list[Run], rounds: pd.DataFrame) -> list[str]:
    """Says so when LR rewinding and fine-tuning ran at a constant rate, where they are the same computation."""
    both = {strategies.LR_REWIND, strategies.FINETUNE}
    constant = [run.label for run in runs if not (run.experiment.warmup_iterations or run.experiment.lr_drops)
                and both <= set(rounds.loc[rounds["run"] == run.label, "strategy"])]
    if constant:
        return [f"> **Note.** {', '.join(constant)}: the learning rate is constant, so *LR rewinding* (the schedule "
                "from its start) and *fine-tuning* (its final rate) are the same computation and give the same "
                "rows; a warm-up or step decay (`--warmup`, `--lr-drops`) tells them apart."]
    return []


def protocol_table(runs: list[Run]) -> pd.DataFrame:
    table = pd.DataFrame([{
        "run": run.label, "dataset": run.experiment.dataset, "arch": run.experiment.arch,
        "init": run.experiment.init, "lr (Adam)": f"{run.experiment.learning_rate:g}",
        "batch": run.experiment.batch_size, "iterations": run.experiment.iterations,
        "eval every": run.experiment.eval_every,
        "prune fc/conv/output": "/".join(f"{rate:g}" for rate in run.experiment.rates_by_kind.values()),
        "scope": run.experiment.pruning_scope, "augment": run.experiment.augment,
        "train subset": run.experiment.train_subset or "all", "seed": run.experiment.seed,
        "hash": run.folder.hash, "schedule": schedule_text(run.experiment),
    } for run in runs])
    schedule = table.pop("schedule")
    if schedule.any():  # a column only where a run has one
        table.insert(table.columns.get_loc("hash"), "lr schedule / rewind", schedule)
    return table


# ---------------------------------------------------------------------------------------------- markdown


def format_cell(value, digits: int) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def markdown_table(frame: pd.DataFrame, digits: dict[str, int] | None = None) -> str:
    """A GitHub markdown table; NaN cells empty, floats with `digits[column]` decimals (default 2)."""
    places = [(digits or {}).get(column, 2) for column in frame.columns]
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(format_cell(value, n) for value, n in zip(row, places)) + " |")
    return "\n".join(lines)


def round_table(strategy_rows: pd.DataFrame) -> pd.DataFrame:
    """The per-round markdown view of one strategy's aggregated rounds."""
    cells = {key: header for key, (header, _) in round_table_cells().items()}
    columns = {key: name for key, name in {"remaining": "remaining %", "trials": "trials", **cells}.items()
               if key in strategy_rows}
    return strategy_rows[list(columns)].rename(columns=columns).reset_index()


def round_table_cells() -> dict[str, tuple[str, int]]:
    """The per-round table's statistics after remaining % and trials, in its order: aggregated column →
    (header, decimals), as the columns declare them (`Column.table_rank`, `label`, `range_labels`, `digits`)."""
    cells = {}
    for column in table_columns():
        statistics = ("mean", "min", "max") if column.range_labels else ("mean",)
        headers = (column.label, *(column.range_labels or ()))
        cells |= {f"{column.name}_{stat}": (header, column.digits) for stat, header in zip(statistics, headers)}
    return cells


def summary_markdown(summary: pd.DataFrame) -> str:
    columns = {"run": "run", "dense_test_acc": "dense acc", "peak_test_acc": "peak acc",
               "peak_remaining": "peak at %", "ticket_range_remaining": "ticket range down to %",
               "reinit_remaining": "rewind vs reinit at %", "rewind_test_acc": "rewind acc",
               "reinit_test_acc": "reinit acc", "rewind_minus_reinit": "rewind − reinit",
               "random_pruning_remaining": "magnitude vs random at %", "magnitude_test_acc": "magnitude acc",
               "random_pruning_test_acc": "random-pruning acc", "magnitude_minus_random": "magnitude − random"}
    return markdown_table(summary[list(columns)].rename(columns=columns))


def report_title(runs: list[Run]) -> str:
    if len(runs) == 1:
        exp = runs[0].experiment
        return (f"# Lottery-ticket report: {exp.dataset} / {exp.arch}\n\n"
                f"{exp.init} init · Adam lr {exp.learning_rate:g} · batch {exp.batch_size} · "
                f"{exp.iterations} iterations per round · evaluation every {exp.eval_every} · pruning "
                f"fc/conv/output {exp.prune_fc:g}/{exp.prune_conv:g}/{exp.prune_output:g} ({exp.pruning_scope}) · "
                f"{exp.rounds} rounds planned · "
                + (f"{schedule_text(exp)} · " if schedule_text(exp) else "")
                + f"run `{runs[0].folder.directory.name}`")
    return "# Lottery-ticket report: " + ", ".join(run.label for run in runs)


def diverged_note(rounds: pd.DataFrame) -> list[str]:
    """A paragraph naming the rounds whose training diverged, if any."""
    flagged = rounds[rounds["diverged"] > 0]
    if flagged.empty:
        return []
    items = "; ".join(f"{row.run} `{row.strategy}` round {row.round} ({row.diverged} trial(s))"
                      for row in flagged.itertuples())
    return [f"**Diverged** (the validation loss blew up; excluded from every number and figure, and later rounds of "
            f"a chain that prunes its weights were not run): {items}."]


def figures_of(rounds: pd.DataFrame) -> list[str]:
    """The figures the rounds can draw: every one drawn otherwise, those of column panels where the rounds have
    a column plotted in them."""
    _check_plots()
    return [stem for stem, figure in FIGURES.items() if figure.draw or panels_of(stem, rounds)]


def panels_of(stem: str, rounds: pd.DataFrame) -> list[Column]:
    """The columns plotted in the figure `stem` that the aggregated rounds have, in registry order."""
    return [column for column in plotted(stem) if f"{column.name}_mean" in rounds]


def _check_plots() -> None:
    """Every column plotted is plotted in a figure of column panels that `FIGURES` declares."""
    panels = {stem for stem, figure in FIGURES.items() if figure.draw is None}
    stray = [column.name for column in declared() if column.plot and column.plot.figure not in panels]
    if stray:
        raise ValueError(f"column(s) {', '.join(stray)} are plotted in figures that lottery_keras/analysis/report.py "
                         "does not declare: add each figure to its FIGURES")


def robustness_rounds(runs: list[Run]) -> pd.DataFrame:
    """Mean test accuracy over trials per (run, strategy, round, corruption, severity) of the rounds scored with
    --robustness (empty without any)."""
    frames = [run.folder.robustness().assign(run=run.label) for run in runs]
    frame = pd.concat([frame for frame in frames if not frame.empty] or [pd.DataFrame()], ignore_index=True)
    if frame.empty:
        return frame
    keys = ["run", "strategy", "round", "corruption", "severity"]
    return frame.groupby(keys, sort=False)["test_acc"].mean().reset_index().sort_values(keys, ignore_index=True)


def robustness_markdown(runs: list[Run], rounds: pd.DataFrame, robustness: pd.DataFrame) -> list[str]:
    """The robustness section: what was measured, and per corruption (mean over severities) the winning ticket's
    accuracy at each level."""
    if robustness.empty:
        return []
    described = "; ".join(f"{name.replace('_', ' ')} ({symbol} {' / '.join(f'{p:g}' for p in parameters)})"
                          for name, (symbol, parameters) in CORRUPTIONS.items())
    epsilons = ", ".join(f"{run.label} ε = {adversarial_epsilon(run.experiment.dataset):.3g}" for run in runs)
    own_scale = (" On data of one's own, pixel scale maps each channel's training range onto [0, 1]."
                 if any(run.experiment.data for run in runs) else "")
    parts = ["## Robustness",
             "Each trained ticket (final weights) on the test split, with `--robustness`: *corruption acc* is the "
             f"mean accuracy over four corruptions at severities 1 / 2 / 3 — {described}, in pixel scale — and "
             f"*FGSM acc* the accuracy under the fast gradient sign attack ({epsilons}, pixel scale). Per "
             "corruption and severity: [robustness.csv](robustness.csv)." + own_scale]
    for run in runs:
        ticket = robustness[(robustness["run"] == run.label) & (robustness["strategy"] == TICKET)]
        if ticket.empty:
            continue
        table = ticket.pivot_table(index="round", columns="corruption", values="test_acc", aggfunc="mean")
        remaining = strategy_rounds(rounds, run.label, TICKET)["remaining"]
        table.insert(0, "remaining %", remaining.reindex(table.index))
        parts += [f"### {run.label}: winning ticket, accuracy per corruption (mean of the severities)",
                  markdown_table(table.reset_index())]
    return parts


def stability_markdown(rounds: pd.DataFrame) -> list[str]:
    """The stability section: what was measured, and each strategy's instability per level, mean [min, max]
    (strategies in registry order, each with its runs side by side)."""
    if "instability_mean" not in rounds or rounds["instability_mean"].isna().all():
        return []
    measured = rounds.dropna(subset=["instability_mean"])
    rank = {name: index for index, name in enumerate(strategies.ordered(measured["strategy"]))}
    measured = measured.sort_values("strategy", key=lambda names: names.map(rank), kind="stable")
    cells = measured.assign(
        column=measured["run"] + ": " + measured["strategy"].map(label_of),
        cell=[f"{mean:.2f} [{low:.2f}, {high:.2f}]" for mean, low, high in
              zip(measured["instability_mean"], measured["instability_min"], measured["instability_max"])])
    table = cells.pivot(index="round", columns="column", values="cell")[list(dict.fromkeys(cells["column"]))]
    table.insert(0, "remaining %", measured.groupby("round")["remaining"].first().map("{:.2f}".format))
    return ["## Stability",
            "With `--stability`, each round also trains a second copy from the same start on another data order; "
            "*instability* is the largest rise of test error along the straight line between the two trained "
            "networks (5 points) above the mean error of its ends, in points (Frankle et al., 2020: about 0 means "
            "the round's outcome does not depend on the data order). Mean [min, max] over trials:",
            markdown_table(table.reset_index())]


def markdown_report(runs: list[Run], rounds: pd.DataFrame, summary: pd.DataFrame,
                    robustness: pd.DataFrame | None = None) -> str:
    parts = [report_title(runs)]
    if any(run.experiment.dataset == "cifar10" for run in runs):
        parts.append(f"> **Note.** {CIFAR10_NOTE}")
    parts += [
        "Accuracies are in percent, at the early-stop iteration (minimum validation loss) unless named *final*; "
        "each number is the mean over the trials that finished the round, figures show min–max bands. "
        "Round 0 is the dense network (100% of weights remaining). Strategies: "
        + "; ".join(f"`{name}` = {label_of(name)}" for name in strategies.ordered(rounds["strategy"])) + ".",
        "## Protocol", markdown_table(protocol_table(runs)),
        "## Trials and rounds done", markdown_table(trials_table(runs)), *diverged_note(rounds),
        *coinciding_note(runs, rounds),
        "## Study summary",
        f"*Winning-ticket range*: the sparsest remaining % such that every round of the winning ticket from dense "
        f"down to it has mean test accuracy ≥ dense − {TICKET_TOLERANCE:g} points. *Rewind vs reinit* and "
        "*magnitude vs random* compare mean test accuracy at the sparsest level both strategies reached before "
        f"the winning ticket collapses (falls more than {COLLAPSE_DROP:g} points below dense); "
        "empty cells: that strategy has no finished round. Table: [summary.csv](summary.csv).",
        summary_markdown(summary),
    ]
    for stem in figures_of(rounds):
        caption = FIGURES[stem].caption
        parts += [f"## {caption}", f"![{caption}]({stem}.png)\n\nVector version: [{stem}.svg]({stem}.svg)"]
    parts += robustness_markdown(runs, rounds, robustness if robustness is not None else pd.DataFrame())
    parts += stability_markdown(rounds)
    parts += ["## Per-round results",
              "Means over trials (test accuracy also min and max); generalization gap = train − test accuracy "
              "(points), ECE on the test split (15 bins), training wall time in seconds. All statistics: "
              "[rounds.csv](rounds.csv)."]
    for run in runs:
        for strategy in strategies.ordered(rounds.loc[rounds["run"] == run.label, "strategy"]):
            parts += [f"### {run.label}: {label_of(strategy)} (`{strategy}`)",
                      markdown_table(round_table(strategy_rounds(rounds, run.label, strategy)),
                                     digits=dict(round_table_cells().values()))]
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------- figures


def new_figure(rows: int, columns: int, panel_size: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    figure = Figure(figsize=(panel_size[0] * columns, panel_size[1] * rows), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(rows, columns, squeeze=False)


def remaining_axis(ax, remaining: pd.Series, ticks: pd.Series | None = None) -> None:
    """Log x axis from 100% (left) to the sparsest level (right), one labelled tick per remaining % of `ticks`
    (default: of `remaining`; strategies that prune at other rates would crowd the labels)."""
    levels = sorted(set(remaining.round(4)), reverse=True)
    ax.set_xscale("log")
    if levels:
        ax.set_xlim(levels[0] * 1.15, levels[-1] / 1.15)
    labelled = levels if ticks is None or ticks.empty else sorted(set(ticks.round(4)), reverse=True)
    ax.xaxis.set_major_locator(FixedLocator(labelled))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.tick_params(axis="x", labelrotation=45 if len(labelled) > 8 else 0)
    ax.set_xlabel("weights remaining (%, log scale)")
    ax.grid(True, alpha=0.3)


def band_plot(ax, rounds: pd.DataFrame, run: str, metric: str) -> None:
    """One line per strategy (mean over trials) with a min–max band."""
    for strategy in strategies.ordered(rounds.loc[rounds["run"] == run, "strategy"]):
        rows = strategy_rounds(rounds, run, strategy)
        line, = ax.plot(rows["remaining"], rows[f"{metric}_mean"], marker="o", markersize=3,
                        color=color_of(strategy), label=label_of(strategy))
        ax.fill_between(rows["remaining"], rows[f"{metric}_min"], rows[f"{metric}_max"], alpha=0.2,
                        color=line.get_color(), linewidth=0)


def add_dense_line(ax, ticket: pd.DataFrame, metric: str) -> None:
    """The winning ticket's round-0 mean as a horizontal dashed line, when round 0 has finished."""
    if 0 in ticket.index:
        ax.axhline(ticket.at[0, f"{metric}_mean"], color="gray", linestyle="--", linewidth=1,
                   label="dense (winning ticket round 0)")


def metric_figure(runs: list[Run], rounds: pd.DataFrame, panels: list[Column]) -> Figure:
    """Rows = runs, columns = `panels`, each as its `Column.plot` says: mean and min–max band vs remaining %."""
    figure, axes = new_figure(len(runs), len(panels), (5.0, 3.6))
    for row, run in zip(axes, runs):
        for ax, column in zip(row, panels):
            band_plot(ax, rounds, run.label, column.name)
            if column.plot.dense_line:
                add_dense_line(ax, strategy_rounds(rounds, run.label, TICKET), column.name)
            remaining_axis(ax, rounds.loc[rounds["run"] == run.label, "remaining"],
                           ticks=strategy_rounds(rounds, run.label, TICKET)["remaining"])
            ax.set_ylabel(column.plot.axis)
            ax.set_title(panel_title(run), fontsize="medium")
        if row[0].get_legend_handles_labels()[0]:  # a run with no finished round has nothing to label
            row[0].legend(fontsize="small")
    return figure


def mean_history(folder: RunFolder, strategy: str, round_index: int) -> tuple[pd.DataFrame, int] | None:
    """The learning curve of one round averaged over the trials that published it, and how many those are; None
    without any (rounds published without their curves have none)."""
    frames = folder.unit_histories(strategy, round_index)
    if not frames:
        return None
    return pd.concat(frames).groupby("iteration").mean().reset_index(), len(frames)


def panel_title(run: Run) -> str:
    """A run's label, the protocol it follows and how many seeds its bands span: run folders alone do not say."""
    seeds = set(run.results.groupby("strategy")["trial"].nunique())
    return f"{run.label} ({preset_of(run.experiment) or 'custom protocol'}){seed_count(seeds)}"


def seed_count(counts: set[int]) -> str:
    """How many seeds a panel's curves average, for its title ('' without curves)."""
    if not counts:
        return ""
    low, high = min(counts), max(counts)
    return f"\n{low} seed{'s' if high > 1 else ''}" if low == high else f"\n{low}–{high} seeds"


def curve_rounds(ticket: pd.DataFrame) -> list[int]:
    """The winning ticket's rounds nearest (in log %) to `CURVE_TARGETS`, and the sparsest one."""
    if ticket.empty:
        return []
    log_remaining = np.log(ticket["remaining"])
    chosen = {int((log_remaining - math.log(target)).abs().idxmin()) for target in CURVE_TARGETS}
    return sorted(chosen | {int(ticket.index.max())})


def learning_curve_figure(runs: list[Run], rounds: pd.DataFrame) -> Figure:
    """Rows = runs; validation and test accuracy vs iteration for selected levels (colour), winning ticket
    solid, random reinit dashed."""
    figure, axes = new_figure(len(runs), 2, (5.5, 3.8))
    for row, run in zip(axes, runs):
        ticket = strategy_rounds(rounds, run.label, TICKET)
        chosen = curve_rounds(ticket)
        colors = colormaps["viridis"](np.linspace(0.0, 0.85, max(len(chosen), 1)))
        seeds = set()
        for color, round_index in zip(colors, chosen):
            for strategy, style in ((TICKET, "-"), (REINIT, "--")):
                curve = mean_history(run.folder, strategy, round_index)
                if curve is None:
                    continue
                history, count = curve
                seeds.add(count)
                label = f"{ticket.at[round_index, 'remaining']:.3g}%" if strategy == TICKET else None
                for ax, column in zip(row, ("val_acc", "test_acc")):
                    ax.plot(history["iteration"], history[column], linestyle=style, color=color, label=label)
        for ax, name in zip(row, ("validation", "test")):
            ax.set_xlabel(f"training iteration (evaluated every {run.experiment.eval_every})")
            ax.set_ylabel(f"{name} accuracy (%)")
            ax.set_title(f"{run.label}: {name}{seed_count(seeds)}", fontsize="medium")
            ax.grid(True, alpha=0.3)
        styles = [Line2D([], [], color="black", linestyle="-", label=label_of(TICKET)),
                  Line2D([], [], color="black", linestyle="--", label=label_of(REINIT))]
        handles, _ = row[0].get_legend_handles_labels()  # one per level, from the winning ticket's curves
        row[1].legend(handles=handles + styles, fontsize="small", title="weights remaining", loc="center left",
                      bbox_to_anchor=(1.02, 0.5))
    return figure


@dataclasses.dataclass(frozen=True)
class ReportFigure:
    """A figure of the report.

    Args:
        caption: Its heading in report.md.
        draw: What draws it from the runs and their aggregated rounds; None: one panel per column plotted in it
            that the rounds have (`panels_of`, `metric_figure`).
    """

    caption: str
    draw: Callable[[list[Run], pd.DataFrame], Figure] | None = None

    def render(self, stem: str, runs: list[Run], rounds: pd.DataFrame) -> Figure:
        return self.draw(runs, rounds) if self.draw else metric_figure(runs, rounds, panels_of(stem, rounds))


FIGURES = {  # in report order
    "test_accuracy": ReportFigure("Test accuracy at early stop vs weights remaining"),
    "early_stop_iteration": ReportFigure("Early-stop iteration vs weights remaining"),
    "learning_curves": ReportFigure("Learning curves of the winning ticket (solid) and random reinit (dashed)",
                                    learning_curve_figure),
    "beyond_accuracy": ReportFigure("Generalization gap, calibration and training time vs weights remaining"),
    "robustness": ReportFigure("Robustness vs weights remaining: common corruptions and FGSM"),
    "stability": ReportFigure("Instability (error barrier between two copies trained on different data orders)"),
}


def optional_figures() -> list[str]:
    """The figures drawn only where the rounds have their columns: those plotting optional columns alone."""
    return [stem for stem in FIGURES if plotted(stem) and all(column.optional for column in plotted(stem))]


FORMAT_COLORS = {"float": "tab:blue", "sparse": "tab:orange", "int8": "tab:green"}


def deployment_figure(table: pd.DataFrame, title: str) -> Figure:
    """`run.py export --all-rounds`: TFLite file size and single-example latency vs weights remaining, one line
    per format; latency with the default delegates (solid) and the builtin kernels (dashed)."""
    figure, axes = new_figure(1, 3, (5.0, 3.6))
    panels = [("bytes", "file size (kB)"), ("gzip_bytes", "gzipped file size (kB)"),
              ("latency_ms", "latency, batch 1, one thread (ms)")]
    for ax, (column, ylabel) in zip(axes[0], panels):
        for fmt, rows in table.groupby("format", sort=False):
            color = FORMAT_COLORS.get(fmt)
            scale = 1e-3 if column.endswith("bytes") else 1.0
            runtimes = "/".join(sorted(set(rows["runtime"]))) if column == "latency_ms" else None
            ax.plot(rows["remaining"], rows[column] * scale, marker="o", markersize=3, color=color,
                    label=f"{fmt} ({runtimes})" if runtimes else fmt)
            if column == "latency_ms" and runtimes != "builtin":  # else the same measurement twice
                ax.plot(rows["remaining"], rows["builtin_latency_ms"], marker="o", markersize=3, color=color,
                        linestyle="--", label=f"{fmt} (builtin)")
        remaining_axis(ax, table["remaining"])
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize="small")
    figure.suptitle(title, fontsize="medium")
    return figure


def save_figure(figure: Figure, directory: Path, stem: str) -> None:
    """PNG and SVG, byte-identical for identical data (no dates, fixed SVG ids), so rebuilt reports diff cleanly."""
    with rc_context({"svg.hashsalt": "lottery_keras"}):
        for suffix in (".png", ".svg"):
            with atomic_path(directory / f"{stem}{suffix}") as tmp:
                figure.savefig(tmp, dpi=150, format=suffix[1:], metadata={"Date": None} if suffix == ".svg" else None)


# ---------------------------------------------------------------------------------------------- entry point


def default_report_dir(run_dirs: list[Path]) -> Path:
    """`<run_dir>/report` for one run, `<common parent>/report` for several."""
    return RunFolder(run_dirs[0]).report_dir if len(run_dirs) == 1 else common_parent(run_dirs) / REPORT


def write_report(run_dirs: list[Path], output_dir: Path | None = None) -> Path:
    """Write report.md, rounds.csv, summary.csv and the figures (PNG + SVG) for `run_dirs`; returns the folder.

    Default folder: `default_report_dir`. Raises when a folder is not a run directory or no round has finished.
    """
    run_dirs = list(dict.fromkeys(Path(run_dir) for run_dir in run_dirs))
    if not run_dirs:
        raise ValueError("no run directory given")
    runs = load_runs(run_dirs)
    frames = [run.results for run in runs if not run.results.empty]
    if not frames:
        raise ValueError(f"no finished round in {', '.join(map(str, run_dirs))}; nothing to report yet")
    report_dir = output_folder(Path(output_dir) if output_dir is not None else default_report_dir(run_dirs))
    rounds = aggregate_rounds(pd.concat(frames, ignore_index=True))
    summary = study_summary(rounds, [run.label for run in runs])
    write_csv(report_dir / "rounds.csv", rounds)
    write_csv(report_dir / "summary.csv", summary)
    for stem in figures_of(rounds):
        save_figure(FIGURES[stem].render(stem, runs, rounds), report_dir, stem)
    robustness = robustness_rounds(runs)
    if not robustness.empty:
        write_csv(report_dir / "robustness.csv", robustness)
    with atomic_path(report_dir / "report.md") as tmp:
        tmp.write_text(markdown_report(runs, rounds, summary, robustness))
    return report_dir
