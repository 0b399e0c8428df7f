"""Result columns: what a round's metrics.json and a strategy's results.csv hold, each declared once, as data.

A column is one `Column`: its name, unit, the evaluation that fills it, whether only some rounds have it, and how
the reports label, aggregate and draw it. Everything that writes or reads results follows the declarations: the
early-stop recorder fills the columns of its evaluations (`check_filled`), the controller writes only declared
columns (`check_declared`, through `paths.Unit.write_metrics`), results.csv holds them in registry order
(`results_columns`), and the status summary, the report's statistics, per-round table and figures take them from
here. A new column is one `register_column` call (or one entry below); whatever computes its value writes it
into the round's metrics. Free of TensorFlow: the reports and the command line import it alone.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Iterable, Sequence

from lottery_keras.registry import Registry

EVALUATIONS = {
    "round": "the unit itself: its round and its masks",
    "training": "the early-stop recorder, on the validation and training splits",
    "test": "the early-stop recorder, on the test split",
    "derived": "the controller, from other columns of the round",
    "cost": "the controller: what training the round took",
    "robustness": "--robustness: the trained ticket under corruptions and FGSM",
    "stability": "--stability: a second copy trained on another data order",
}
KINDS = ("number", "flag", "text")
RESERVED = ("run", "trial", "strategy", "trials")  # the columns reports put beside the declared ones
NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclasses.dataclass(frozen=True)
class Plot:
    """A panel of a report figure: a column's mean over trials with its min–max band, against weights remaining.

    Args:
        figure: The stem of the figure it is a panel of (a key of `analysis.report.FIGURES`).
        axis: Its y-axis label.
        dense_line: Also draw the winning ticket's dense (round 0) mean as a dashed line.
    """

    figure: str
    axis: str
    dense_line: bool = False


@dataclasses.dataclass(frozen=True)
class Column:
    """One result column of a round.

    Args:
        name: Its key in metrics.json and its header in results.csv.
        label: How people read it; the header of its mean in the report's per-round table.
        evaluation: What fills it (a key of `EVALUATIONS`).
        unit: What its numbers count ("%", "points", "s", ...; "" for none).
        kind: "number", "flag" (True or False; a missing flag reads False) or "text".
        optional: Only rounds evaluated with an option have it: tables carry it where some round does.
        in_results: results.csv carries it; otherwise it stays in metrics.json.
        in_summary: The status summary table shows its mean over trials.
        table_rank: Its place in the report's per-round table (ascending); None: not shown there.
        range_labels: The headers of its min and max in that table, where the table shows them.
        digits: Decimals of its numbers in that table.
        plot: The figure panel drawing it, if any.
    """

    name: str
    label: str
    evaluation: str
    unit: str = ""
    kind: str = "number"
    optional: bool = False
    in_results: bool = True
    in_summary: bool = False
    table_rank: float | None = None
    range_labels: tuple[str, str] | None = None
    digits: int = 2
    plot: Plot | None = None

    def __post_init__(self):
        if not NAME.fullmatch(self.name) or self.name in RESERVED:
            raise ValueError(f"column name {self.name!r}: use lowercase letters, digits and _, and none of "
                             f"{', '.join(RESERVED)}")
        if self.evaluation not in EVALUATIONS or self.kind not in KINDS:
            raise ValueError(f"column {self.name}: evaluation must be one of {tuple(EVALUATIONS)} (register a new "
                             f"one with lottery_keras.register_evaluation first), kind one of {KINDS}")
        shown = self.plot is not None or self.in_summary or self.table_rank is not None
        if shown and not (self.kind == "number" and self.in_results):
            raise ValueError(f"column {self.name}: only numbers that results.csv carries are averaged over "
                             "trials, so only they can be plotted, summarised or shown in the per-round table")

    @property
    def aggregated(self) -> bool:
        """Reports take its mean, min and max over trials (what identifies a round, `evaluation` 'round', not)."""
        return self.kind == "number" and self.in_results and self.evaluation != "round"


COLUMNS: Registry[Column] = Registry("result column", Column, {column.name: column for column in (
    Column("round", "round", "round"),
    Column("remaining", "remaining %", "round", unit="%", in_summary=True),
    Column("es_iteration", "ES iteration", "training", unit="iterations", in_summary=True, table_rank=1, digits=1,
           plot=Plot("early_stop_iteration", "early-stop iteration")),
    Column("val_acc", "val acc", "training", unit="%", in_summary=True, table_rank=3),
    Column("test_acc", "test acc", "test", unit="%", in_summary=True, table_rank=2,
           range_labels=("test min", "test max"),
           plot=Plot("test_accuracy", "test accuracy at early stop (%)", dense_line=True)),
    Column("final_test_acc", "final test acc", "test", unit="%", in_summary=True, table_rank=4),
    Column("train_acc", "train acc", "training", unit="%"),
    Column("generalization_gap", "gen. gap", "derived", unit="points", table_rank=5,
           plot=Plot("beyond_accuracy", "generalization gap (train − test, points)")),
    Column("ece", "ECE", "test", table_rank=6, digits=4, plot=Plot("beyond_accuracy", "ECE (test split, 15 bins)")),
    Column("val_loss", "val loss", "training"),
    Column("train_seconds", "train s", "cost", unit="s", table_rank=7,
           plot=Plot("beyond_accuracy", "training wall time per round (s)")),
    Column("diverged", "diverged", "training", kind="flag"),
    Column("engine", "engine", "cost", kind="text", in_results=False),
    Column("corruption_acc", "corruption acc", "robustness", unit="%", optional=True, table_rank=8,
           plot=Plot("robustness", "accuracy under corruptions (%, mean)")),
    Column("adversarial_acc", "FGSM acc", "robustness", unit="%", optional=True, table_rank=9,
           plot=Plot("robustness", "accuracy under FGSM (%)")),
    Column("instability", "instability", "stability", unit="points", optional=True, table_rank=10,
           plot=Plot("stability", "error barrier on the test split (points)")),
)})


def register_column(column: Column) -> Column:
    """Declare a result column: metrics.json may hold it, and results.csv, the status summary and the reports
    carry it as it says from then on.

    Args:
        column: A `Column` whose name is free.

    Returns:
        `column`.
    """
    if not isinstance(column, Column):
        raise TypeError(f"register_column takes a lottery_keras Column, not {type(column).__name__}")
    return COLUMNS.register(column.name, column)


def declared(**fields) -> list[Column]:
    """The declared columns, in registry order, whose fields have the values given (e.g. `optional=True`)."""
    return [column for column in COLUMNS.values()
            if all(getattr(column, field) == value for field, value in fields.items())]


def names(columns: Iterable[Column]) -> list[str]:
    return [column.name for column in columns]


def results_columns(present: Iterable[str] = ()) -> list[str]:
    """results.csv's columns, in order: every declared column it carries that is not optional, then the optional
    ones among `present` (the keys some round has)."""
    present = set(present)
    return [column.name for column in declared(in_results=True)
            if not column.optional or column.name in present]


def aggregated_columns(present: Iterable[str]) -> list[str]:
    """The columns reports average over trials, in registry order: the optional ones only among `present`."""
    present = set(present)
    return [column.name for column in COLUMNS.values()
            if column.aggregated and (not column.optional or column.name in present)]


def table_columns() -> list[Column]:
    """The columns of the report's per-round table, in its order (`Column.table_rank`)."""
    shown = [column for column in COLUMNS.values() if column.table_rank is not None]
    return sorted(shown, key=lambda column: column.table_rank)


def plotted(figure: str) -> list[Column]:
    """The columns drawn as panels of `figure`, in registry order."""
    return [column for column in COLUMNS.values() if column.plot is not None and column.plot.figure == figure]


def unmeasured(evaluations: Sequence[str]) -> dict[str, float]:
    """NaN for every number the `evaluations` fill, in registry order: the values of a round they could not
    measure."""
    return {column.name: math.nan for column in COLUMNS.values()
            if column.evaluation in evaluations and column.kind == "number"}


def check_declared(values: dict, where: str) -> dict:
    """`values`, once every key is a declared column.

    Args:
        values: A round's metrics, by column name.
        where: What holds them, for the message.

    Returns:
        `values`.

    Raises:
        ValueError: naming the undeclared keys and where to declare them.
    """
    undeclared = [key for key in values if key not in COLUMNS]
    if undeclared:
        raise ValueError(f"{where} holds undeclared result column(s) {', '.join(undeclared)}: declare each once, "
                         "in lottery_keras/columns.py or with lottery_keras.columns.register_column, so that "
                         "results.csv and the reports carry it")
    return values


def check_filled(values: dict, evaluations: Sequence[str], where: str) -> dict:
    """`values`, once they are exactly the declared columns that `evaluations` fill.

    Args:
        values: What an evaluation measured, by column name.
        evaluations: The keys of `EVALUATIONS` it performs.
        where: What measured them, for the message.

    Returns:
        `values`.

    Raises:
        ValueError: naming the undeclared keys and the declared columns it left out.
    """
    check_declared(values, where)
    missing = [column.name for column in COLUMNS.values()
               if column.evaluation in evaluations and column.name not in values]
    foreign = [key for key in values if COLUMNS[key].evaluation not in evaluations]
    if missing or foreign:
        raise ValueError(f"{where} must fill exactly the columns of the {'/'.join(evaluations)} evaluation(s): "
                         f"it lacks {', '.join(missing) or 'none'} and holds {', '.join(foreign) or 'none'} of "
                         "others (see lottery_keras/columns.py)")
    return values
