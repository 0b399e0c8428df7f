"""Study reports: several seeds of several runs, next to the values the ES667 study and the paper published.

    <output_dir>/study.md              the tables below in markdown, the figures, and how each number is defined
    <output_dir>/seeds.csv             per (run, trial): the seed's winning-ticket summary
    <output_dir>/tickets.csv           per run: that summary as mean / min / max over seeds, and ES667's values
    <output_dir>/controls.csv          per (run, comparison, round): winning ticket vs a control over seeds, and ES667's
    <output_dir>/paper_claims.csv      per frankle2019 LeNet run: the paper's claims, measured per seed
    <output_dir>/accuracy.png|.svg     accuracy (full range and zoomed) and early-stop iteration vs weights remaining
    <output_dir>/learning_curves.png|.svg   test accuracy vs iteration at informative levels, bands over seeds

Which accuracy: a run of the `es667` protocol is compared through its *final* test accuracy (the ES667 study
evaluated the test set once, after the last iteration); every other run through the test accuracy at the
early-stop iteration (the paper's). Winning-ticket summaries use the seeds that finished every planned round;
comparisons at a round use the seeds that finished it for both strategies. Controls are compared at matched rounds
*before collapse*: rounds down to the last one at which the winning ticket (the mean over seeds, and ES667's) is
still within `COLLAPSE_DROP` points of its dense network, not at the sparsest levels where every network sits near
chance.
"""

from __future__ import annotations

import dataclasses
import math
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from lottery_keras import catalog
from lottery_keras.analysis import report
from lottery_keras.analysis.report import COLLAPSE_DROP, TICKET_TOLERANCE, Run, color_of, label_of, ticket_range
from lottery_keras.config import preset_of
from lottery_keras.lottery import strategies
from lottery_keras.lottery.paths import RunFolder
from lottery_keras.lottery.strategies import (RANDOM_PRUNING_CONTROL, REINIT_CHAIN, REINIT_CONTROL,
                                              WINNING_TICKET as TICKET)
from lottery_keras.storage import atomic_path, write_csv

COMPARISONS = {  # name → the control the winning ticket is held against
    "rewind vs random reinit (paper)": REINIT_CONTROL,
    "rewind vs reinit chain (ES667)": REINIT_CHAIN,
    "magnitude vs random pruning": RANDOM_PRUNING_CONTROL,
}
PAPER_LENET = {"matches_dense_down_to": 3.6, "es_sooner_percent": 38.0}  # Frankle & Carbin 2019, Section 2
PAPER_LEVELS = (21.0, 3.6)  # remaining %: where the paper quotes its LeNet numbers
FIGURES = {
    "accuracy": "Accuracy and early-stop iteration vs weights remaining: mean over seeds, min–max band",
    "learning_curves": "Test accuracy during training at informative levels: mean over seeds, min–max band",
}


# ---------------------------------------------------------------------------------------------- inputs


def es667_reference() -> pd.DataFrame:
    """The ES667 study's published per-round results (`reference/es667.csv`; one trial per configuration)."""
    with resources.files("lottery_keras.analysis").joinpath("reference/es667.csv").open() as stream:
        return pd.read_csv(stream, comment="#")


@dataclasses.dataclass(frozen=True)
class StudyRun:
    """A run with what the study compares it through: its metric and, for es667 runs, ES667's published rounds."""

    run: Run
    preset: str | None
    metric: str
    reference: pd.DataFrame  # columns: strategy, round, remaining, es_iteration, <metric>; empty if none

    @property
    def label(self) -> str:
        return self.run.label

    @property
    def results(self) -> pd.DataFrame:
        return self.run.results

    def complete_trials(self) -> list[int]:
        """Trials whose winning ticket finished every planned round."""
        ticket = self.results[self.results["strategy"] == TICKET]
        rounds = ticket.groupby("trial")["round"].nunique()
        return sorted(rounds.index[rounds >= self.run.experiment.rounds])

    def curve(self, strategy: str, trials: list[int] | None = None) -> pd.DataFrame:
        """Per trial (columns) and round (index): the strategy's metric."""
        rows = self.results[self.results["strategy"] == strategy]
        if trials is not None:
            rows = rows[rows["trial"].isin(trials)]
        return rows.pivot_table(index="round", columns="trial", values=self.metric)

    def remaining(self) -> pd.Series:
        """Remaining % by round (every strategy of a run prunes to the same levels)."""
        return self.results.groupby("round")["remaining"].first()

    def reference_curve(self, strategy: str) -> pd.Series:
        rows = self.reference[self.reference["strategy"] == strategy]
        return rows.set_index("round")[self.metric] if not rows.empty else pd.Series(dtype=float)


def study_run(run: Run, reference: pd.DataFrame) -> StudyRun:
    """The run as the study reads it: diverged rounds (not results) left out, its metric and ES667's values."""
    run = dataclasses.replace(run, results=run.results[~run.results["diverged"]])
    preset = preset_of(run.experiment)
    metric = "final_test_acc" if preset == "es667" else "test_acc"
    mine = reference[(reference["dataset"] == run.experiment.dataset) & (reference["arch"] == run.experiment.arch)]
    if preset != "es667":
        mine = mine.iloc[:0]
    return StudyRun(run, preset, metric, mine.reset_index(drop=True))


# ---------------------------------------------------------------------------------------------- numbers


def ticket_summary(accuracy: pd.Series, remaining: pd.Series) -> dict[str, float]:
    """Dense and peak accuracy, where the peak is, and the winning-ticket range of one accuracy-by-round curve."""
    accuracy = accuracy.dropna()
    if accuracy.empty or 0 not in accuracy.index:
        return dict(dense=math.nan, peak=math.nan, peak_at=math.nan, range_down_to=math.nan)
    peak = accuracy.idxmax()
    return dict(dense=accuracy[0], peak=accuracy[peak], peak_at=remaining[peak],
                range_down_to=ticket_range(accuracy, remaining, accuracy[0]))


def seed_table(study: list[StudyRun]) -> pd.DataFrame:
    rows = []
    for entry in study:
        curves = entry.curve(TICKET, entry.complete_trials())
        for trial in curves.columns:
            rows.append({"run": entry.label, "trial": trial, "metric": entry.metric,
                         **ticket_summary(curves[trial], entry.remaining())})
    return pd.DataFrame(rows, columns=["run", "trial", "metric", "dense", "peak", "peak_at", "range_down_to"])


def spread(values) -> dict[str, float]:
    values = pd.Series(values, dtype=float).dropna()
    if values.empty:
        return {"mean": math.nan, "min": math.nan, "max": math.nan}
    return {"mean": values.mean(), "min": values.min(), "max": values.max()}


def ticket_table(study: list[StudyRun], seeds: pd.DataFrame) -> pd.DataFrame:
    """Per run: each winning-ticket statistic as mean / min / max over complete seeds, and ES667's value."""
    rows = []
    for entry in study:
        own = seeds[seeds["run"] == entry.label]
        row = {"run": entry.label, "metric": entry.metric, "seeds": len(own)}
        published = ticket_summary(entry.reference_curve(TICKET),
                                   entry.reference.groupby("round")["remaining"].first())
        for statistic in ("dense", "peak", "peak_at", "range_down_to"):
            row.update({f"{statistic}_{key}": value for key, value in spread(own[statistic]).items()})
            row[f"{statistic}_es667"] = published[statistic]
        rows.append(row)
    return pd.DataFrame(rows)


def precollapse_rounds(entry: StudyRun) -> list[int]:
    """Rounds ≥ 1 down to the last at which the winning ticket's mean (and ES667's ticket) is within
    `COLLAPSE_DROP` points of its dense network."""
    curves = [entry.curve(TICKET).mean(axis=1), entry.reference_curve(TICKET)]
    rounds = []
    for round_index in sorted(curves[0].index):
        if round_index == 0:
            continue
        if any(0 not in curve.index or not curve.get(round_index, math.nan) >= curve[0] - COLLAPSE_DROP
               for curve in curves if not curve.empty):
            break
        rounds.append(round_index)
    return rounds


def shown_rounds(rounds: list[int]) -> list[int]:
    """Every second pre-collapse round and the last one: enough to follow the trend, short enough to read."""
    return sorted({r for r in rounds if r % 2 == 0} | set(rounds[-1:]))


def comparison_rows(entry: StudyRun, name: str, control: str, rounds: list[int]) -> list[dict]:
    ticket, other = entry.curve(TICKET), entry.curve(control)
    published_ticket, published_control = entry.reference_curve(TICKET), entry.reference_curve(control)
    rows = []
    for round_index in rounds:
        if round_index not in ticket.index or round_index not in other.index:
            continue
        both = ticket.loc[round_index].dropna().index.intersection(other.loc[round_index].dropna().index)
        if both.empty:
            continue
        mine, theirs = ticket.loc[round_index, both], other.loc[round_index, both]
        row = {"run": entry.label, "metric": entry.metric, "comparison": name, "control": control,
               "round": round_index, "remaining": entry.remaining()[round_index], "seeds": len(both)}
        for prefix, values in (("ticket", mine), ("control", theirs), ("gap", mine - theirs)):
            row.update({f"{prefix}_{key}": value for key, value in spread(values).items()})
        es667_ticket = published_ticket.get(round_index, math.nan)
        es667_control = published_control.get(round_index, math.nan)
        row.update(ticket_es667=es667_ticket, control_es667=es667_control, gap_es667=es667_ticket - es667_control)
        rows.append(row)
    return rows


CONTROL_COLUMNS = ["run", "metric", "comparison", "control", "round", "remaining", "seeds",
                   *(f"{prefix}_{key}" for prefix in ("ticket", "control", "gap") for key in ("mean", "min", "max")),
                   "ticket_es667", "control_es667", "gap_es667"]


def control_table(study: list[StudyRun]) -> pd.DataFrame:
    """Per run, comparison and shown pre-collapse round: ticket, control and their gap over seeds, and ES667's."""
    rows = []
    for entry in study:
        rounds = shown_rounds(precollapse_rounds(entry))
        for name, control in COMPARISONS.items():
            rows += comparison_rows(entry, name, control, rounds)
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=CONTROL_COLUMNS)


def nearest_round(remaining: pd.Series, level: float) -> int:
    return int((np.log(remaining) - math.log(level)).abs().idxmin())


def _family(arch: str) -> str | None:
    """The paper's group of architectures `arch` belongs to (None for a model of one's own)."""
    return catalog.architecture(arch).family if arch in catalog.architectures() else None


def paper_claims(study: list[StudyRun]) -> pd.DataFrame:
    """For frankle2019 LeNet runs, per claim: the paper's value and ours over complete seeds (test accuracy at
    early stop, as the paper measures it)."""
    rows = []
    for entry in study:
        if entry.preset != "frankle2019" or _family(entry.run.experiment.arch) != "lenet":
            continue
        trials, remaining = entry.complete_trials(), entry.remaining()
        ticket = entry.curve(TICKET, trials)
        reinit = entry.curve(REINIT_CONTROL, trials)
        iterations = entry.results[(entry.results["strategy"] == TICKET) & entry.results["trial"].isin(trials)]
        iterations = iterations.pivot_table(index="round", columns="trial", values="es_iteration")
        at = {level: nearest_round(remaining, level) for level in PAPER_LEVELS}
        mean_ticket = ticket.mean(axis=1).dropna()
        claims = {
            "tickets reach the dense accuracy down to (% remaining)": (
                PAPER_LENET["matches_dense_down_to"],
                [ticket_range(ticket[t].dropna(), remaining, ticket[t].get(0, math.nan), tolerance=0.0)
                 for t in ticket]),
            "the same on the seeds' mean curve, as the paper's figures average trials (% remaining)": (
                PAPER_LENET["matches_dense_down_to"],
                [ticket_range(mean_ticket, remaining, mean_ticket.get(0, math.nan), tolerance=0.0)]
                if len(ticket.columns) else []),
            f"early stop sooner than dense at {remaining[at[21.0]]:.3g}% (%)": (
                PAPER_LENET["es_sooner_percent"],
                [100 * (1 - iterations[t].get(at[21.0], math.nan) / iterations[t].get(0, math.nan))
                 for t in iterations]),
        }
        for level in PAPER_LEVELS:  # a control still running, or diverged there, has no value yet
            claims[f"ticket − random reinit at {remaining[at[level]]:.3g}% (points)"] = (
                math.nan, [ticket[t].get(at[level], math.nan) - reinit[t].get(at[level], math.nan)
                           for t in ticket if t in reinit])
        for claim, (paper, values) in claims.items():
            seeds = len(ticket.columns) if "mean curve" in claim else len(values)
            rows.append({"run": entry.label, "claim": claim, "paper": paper, "seeds": seeds, **spread(values)})
    return pd.DataFrame(rows, columns=["run", "claim", "paper", "seeds", "mean", "min", "max"])


# ---------------------------------------------------------------------------------------------- markdown


def cell(mean: float, low: float, high: float, digits: int = 2) -> str:
    """`mean [min, max]` with `digits` decimals (None: 3 significant digits); the mean alone when the spread is one
    value; empty when NaN."""
    if math.isnan(mean):
        return ""
    number = (lambda value: f"{value:.3g}") if digits is None else (lambda value: f"{value:.{digits}f}")
    return number(mean) if math.isclose(low, high) else f"{number(mean)} [{number(low)}, {number(high)}]"


def inside(value: float, low: float, high: float, seeds: int) -> str:
    """Whether a published value lies inside our seeds' min–max; meaningless with fewer than two seeds."""
    if math.isnan(value) or seeds < 2:
        return ""
    return "inside" if low - 1e-9 <= value <= high + 1e-9 else ("above" if value > high else "below")


def ticket_markdown(tickets: pd.DataFrame) -> str:
    rows = []
    for row in tickets.to_dict("records"):
        line = {"run": row["run"], "accuracy": row["metric"], "seeds": row["seeds"]}
        for statistic, title in (("dense", "dense"), ("peak", "peak"), ("peak_at", "peak at %"),
                                 ("range_down_to", f"within {TICKET_TOLERANCE:g} of dense down to %")):
            stats = [row[f"{statistic}_{key}"] for key in ("mean", "min", "max")]
            line[title] = cell(*stats, digits=None if statistic in ("peak_at", "range_down_to") else 2)
            published = row[f"{statistic}_es667"]
            line[f"{title}: ES667"] = "" if math.isnan(published) else f"{published:.3g}" if statistic in (
                "peak_at", "range_down_to") else f"{published:.2f}"
        line["ES667 dense / peak vs our seeds"] = " / ".join(
            inside(row[f"{s}_es667"], row[f"{s}_min"], row[f"{s}_max"], row["seeds"]) or "–" for s in ("dense", "peak"))
        rows.append(line)
    return report.markdown_table(pd.DataFrame(rows))


def control_markdown(controls: pd.DataFrame, comparison: str) -> str:
    chosen = controls[controls["comparison"] == comparison]
    if chosen.empty:
        return "No run has this control yet."
    rows = []
    for row in chosen.to_dict("records"):
        rows.append({
            "run": row["run"], "remaining %": f"{row['remaining']:.3g}", "seeds": row["seeds"],
            "winning ticket": cell(row["ticket_mean"], row["ticket_min"], row["ticket_max"]),
            label_of(row["control"]): cell(row["control_mean"], row["control_min"], row["control_max"]),
            "gap": cell(row["gap_mean"], row["gap_min"], row["gap_max"]),
            "ES667 ticket": row["ticket_es667"], "ES667 control": row["control_es667"], "ES667 gap": row["gap_es667"],
            "ES667 gap vs our seeds": inside(row["gap_es667"], row["gap_min"], row["gap_max"], row["seeds"]),
            "our gap": ("crosses 0" if row["gap_min"] <= 0 <= row["gap_max"] and row["seeds"] > 1 else ""),
        })
    frame = pd.DataFrame(rows)
    frame = frame.rename(columns={label_of(c): "control" for c in chosen["control"].unique()})
    return report.markdown_table(frame)


def paper_markdown(claims: pd.DataFrame) -> str:
    frame = pd.DataFrame([{"run": row["run"], "claim": row["claim"],
                           "paper": "" if math.isnan(row["paper"]) else f"{row['paper']:g}",
                           "ours": cell(row["mean"], row["min"], row["max"]), "seeds": row["seeds"]}
                          for row in claims.to_dict("records")])
    return report.markdown_table(frame)


def runs_table(study: list[StudyRun]) -> pd.DataFrame:
    rows = []
    for entry in study:
        exp = entry.run.experiment
        trials = entry.results.groupby("strategy")["trial"].nunique()
        rows.append({"run": entry.label, "protocol": entry.preset or "custom", "accuracy compared": entry.metric,
                     "evaluated every (iterations)": exp.eval_every, "iterations": exp.iterations,
                     "rounds planned": exp.rounds, "complete seeds": len(entry.complete_trials()),
                     "seeds started per strategy": ", ".join(f"{s} {trials[s]}" for s in
                                                           strategies.ordered(trials.index)),
                     "run folder": entry.run.folder.directory.name})
    return pd.DataFrame(rows)


def study_markdown(study: list[StudyRun], tickets: pd.DataFrame, controls: pd.DataFrame,
                   claims: pd.DataFrame) -> str:
    parts = [
        f"# Study report: {', '.join(entry.label for entry in study)}",
        "Each number is the mean over seeds, with [min, max] over seeds. `final_test_acc` is the test "
        "accuracy after the last iteration (what the ES667 study published), `test_acc` the test accuracy at the "
        "early-stop iteration (minimum validation loss; the paper's). ES667 values come from the study's "
        "published results (one seed each, `lottery_keras/analysis/reference/es667.csv`); its reinitialisation "
        f"control is its own chain (`{REINIT_CHAIN}` here), while `{REINIT_CONTROL}` is the paper's (the "
        "winning ticket's masks, freshly initialised). *inside / above / below*: where ES667's value lies "
        "relative to our seeds' min–max; *crosses 0*: the seeds disagree on the sign of the gap.",
        "## Runs and seeds", report.markdown_table(runs_table(study)),
        "## Winning tickets",
        f"Dense and peak accuracy of the winning ticket, where the peak is, and how far it stays within "
        f"{TICKET_TOLERANCE:g} points of its dense network (every round from dense down to that level), per seed "
        "that finished every round. Table: [tickets.csv](tickets.csv), per seed: [seeds.csv](seeds.csv).",
        ticket_markdown(tickets),
    ]
    for comparison in COMPARISONS:
        parts += [f"## {comparison[0].upper()}{comparison[1:]}",
                  f"At matched rounds before collapse (every second round, and the last at which the winning ticket "
                  f"is within {COLLAPSE_DROP:g} points of dense); gap = winning ticket − control, per seed. Table: "
                  "[controls.csv](controls.csv).",
                  control_markdown(controls, comparison)]
    if not claims.empty:
        parts += ["## The paper's LeNet claims (frankle2019 runs)",
                  "Test accuracy at the early-stop iteration, per seed that finished every round; the paper's "
                  "values are from its Section 2 (it states the reinitialised tickets' deficit in figures, not "
                  "numbers). Table: [paper_claims.csv](paper_claims.csv).",
                  paper_markdown(claims)]
    for stem, caption in FIGURES.items():
        parts += [f"## {caption}", f"![{caption}]({stem}.png)\n\nVector version: [{stem}.svg]({stem}.svg)"]
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------- figures


def band(ax, remaining: pd.Series, curves: pd.DataFrame, strategy: str) -> None:
    """Mean over seeds (columns) vs remaining %, with the min–max band."""
    x = remaining[curves.index]
    ax.plot(x, curves.mean(axis=1), marker="o", markersize=3, color=color_of(strategy), label=label_of(strategy))
    ax.fill_between(x, curves.min(axis=1), curves.max(axis=1), color=color_of(strategy), alpha=0.2, linewidth=0)


def reference_line(ax, entry: StudyRun, strategy: str, column: str) -> None:
    rows = entry.reference[entry.reference["strategy"] == strategy]
    if not rows.empty:
        ax.plot(rows["remaining"], rows[column], linestyle=":", marker="x", markersize=4, color=color_of(strategy))


def accuracy_figure(study: list[StudyRun]) -> Figure:
    """Rows = runs; columns: accuracy over the full range, zoomed on the top points, early-stop iteration."""
    figure, axes = report.new_figure(len(study), 3, (5.0, 3.6))
    for row, entry in zip(axes, study):
        remaining = entry.remaining()
        names = strategies.ordered(entry.results["strategy"].unique())
        for ax, column in zip(row, (entry.metric, entry.metric, "es_iteration")):
            for strategy in names:
                curves = entry.results[entry.results["strategy"] == strategy].pivot_table(
                    index="round", columns="trial", values=column)
                band(ax, remaining, curves, strategy)
                reference_line(ax, entry, strategy, column)
            report.remaining_axis(ax, remaining)
        zoom_top_points(row[1], entry, remaining)
        row[0].set_ylabel(f"{entry.metric} (%)")
        row[1].set_ylabel(f"{entry.metric} (%), zoomed")
        row[2].set_ylabel("early-stop iteration")
        for ax in row:
            ax.set_title(report.panel_title(entry.run), fontsize="medium")
        handles, _ = row[0].get_legend_handles_labels()
        if not entry.reference.empty:
            handles.append(Line2D([], [], color="black", linestyle=":", marker="x", label="ES667 (published, 1 seed)"))
        row[2].legend(handles=handles, fontsize="small", loc="upper left")
    return figure


def zoom_top_points(ax, entry: StudyRun, remaining: pd.Series) -> None:
    """Limit the axes to the top accuracy points and the levels before collapse, where the claims live."""
    ticket = entry.curve(TICKET)
    if ticket.empty or 0 not in ticket.index:
        return
    dense = ticket.loc[0].mean()
    top = max(ticket.max(axis=1).max(), entry.reference_curve(TICKET).max() if not entry.reference.empty else 0)
    ax.set_ylim(dense - TICKET_TOLERANCE - 1.0, top + 0.3)
    ax.axhline(dense - TICKET_TOLERANCE, color="gray", linestyle="--", linewidth=1)
    precollapse = precollapse_rounds(entry)
    if precollapse:
        sparsest = remaining[min(precollapse[-1] + 1, remaining.index.max())]
        ax.set_xlim(right=sparsest / 1.15)


def curve_levels(entry: StudyRun) -> list[int]:
    """Dense, the round nearest 21% (where the paper compares early stopping), the last pre-collapse round and the
    first collapsed one, of those the run has finished."""
    remaining, precollapse = entry.remaining(), precollapse_rounds(entry)
    chosen = [nearest_round(remaining, PAPER_LEVELS[0]), *([0] if 0 in remaining.index else [])]
    if precollapse:
        chosen.append(precollapse[-1])
        if precollapse[-1] + 1 in remaining.index:
            chosen.append(precollapse[-1] + 1)
    return sorted(set(chosen))


def history_band(entry: StudyRun, strategy: str, round_index: int) -> tuple[pd.DataFrame, int] | None:
    """Test accuracy by iteration: mean / min / max over the seeds with a learning curve for the round, and how
    many seeds those are (rounds published without their curves have none)."""
    histories = entry.run.folder.unit_histories(strategy, round_index)
    if not histories:
        return None
    stacked = pd.concat(histories).groupby("iteration")["test_acc"]
    return pd.DataFrame({"mean": stacked.mean(), "min": stacked.min(), "max": stacked.max()}), len(histories)


def learning_curve_figure(study: list[StudyRun]) -> Figure:
    columns = max(len(curve_levels(entry)) for entry in study)
    figure, axes = report.new_figure(len(study), columns, (4.2, 3.2))
    for row, entry in zip(axes, study):
        levels = curve_levels(entry)
        for ax, round_index in zip(row, levels):
            seeds = set()
            for strategy in strategies.ordered(entry.results["strategy"].unique()):
                band = history_band(entry, strategy, round_index)
                if band is None:
                    continue
                curve, count = band
                seeds.add(count)
                ax.plot(curve.index, curve["mean"], color=color_of(strategy), label=label_of(strategy))
                ax.fill_between(curve.index, curve["min"], curve["max"], color=color_of(strategy), alpha=0.2,
                                linewidth=0)
            if not ax.lines:
                ax.text(0.5, 0.5, "no learning curve here", transform=ax.transAxes, ha="center", color="gray")
            ax.set_title(f"{entry.label}: {entry.remaining()[round_index]:.3g}% remaining{report.seed_count(seeds)}",
                         fontsize="medium")
            ax.set_xlabel(f"iteration (evaluated every {entry.run.experiment.eval_every})")
            ax.set_ylabel("test accuracy (%)")
            ax.grid(True, alpha=0.3)
        for ax in row[len(levels):]:
            ax.set_visible(False)
        if row[0].get_legend_handles_labels()[0]:
            row[0].legend(fontsize="small", loc="lower right")
    return figure


# ---------------------------------------------------------------------------------------------- entry point


def default_study_dir(run_dirs: list[Path]) -> Path:
    return report.common_parent(run_dirs) / "study"


def protocol_runs(run_dirs: list[Path]) -> list[Path]:
    """The runs that follow a preset protocol: what the published study compares with ES667 and the paper (runs
    of other protocols, late rewinding say, have reports of their own)."""
    return [Path(run_dir) for run_dir in run_dirs if preset_of(RunFolder(run_dir).experiment())]


def write_study(run_dirs: list[Path], output_dir: Path | None = None) -> Path:
    """Write study.md, its tables and figures for `run_dirs` (default folder: `study/` beside the runs)."""
    run_dirs = list(dict.fromkeys(Path(run_dir) for run_dir in run_dirs))
    if not run_dirs:
        raise ValueError("no run directory given")
    reference = es667_reference()
    study = [entry for entry in (study_run(run, reference) for run in report.load_runs(run_dirs))
             if not entry.results.empty]
    if not study:
        raise ValueError(f"no finished round in {', '.join(map(str, run_dirs))}; nothing to report yet")
    output_dir = Path(output_dir) if output_dir is not None else default_study_dir(run_dirs)
    seeds = seed_table(study)
    tickets, controls, claims = ticket_table(study, seeds), control_table(study), paper_claims(study)
    for name, table in (("seeds", seeds), ("tickets", tickets), ("controls", controls), ("paper_claims", claims)):
        write_csv(output_dir / f"{name}.csv", table)
    report.save_figure(accuracy_figure(study), output_dir, "accuracy")
    report.save_figure(learning_curve_figure(study), output_dir, "learning_curves")
    with atomic_path(output_dir / "study.md") as tmp:
        tmp.write_text(study_markdown(study, tickets, controls, claims))
    return output_dir
