"""The optional evaluations of a trained round, each registered once, added to its metrics when a run asks.

An evaluation fills the result columns that name it (`Column.evaluation`). The built-in ones:
- `robustness` (`--robustness`): the trained ticket's test accuracy under every corruption (robustness.csv) and
  under FGSM;
- `stability` (`--stability`): a second copy trained from the same start on another data order, and the error
  barrier on the linear path between the two (stability.csv, `instability`; Frankle et al. 2020).

A new one is one `register_evaluation` call beside its columns. Finished rounds that lack an evaluation get it
when a run asks for it; a diverged round gets none. A copied dense round takes them from the round it copies (the
same network), which is evaluated first if needed. Registering loads no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import sys
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd

from lottery_keras import columns, data
from lottery_keras.columns import check_filled, declared, names
from lottery_keras.config import adversarial_epsilon
from lottery_keras.lottery.paths import ROBUSTNESS, STABILITY, Unit
from lottery_keras.lottery.seeds import derived_seed
from lottery_keras.lottery.strategies import STRATEGIES
from lottery_keras.registry import Registry
from lottery_keras.storage import atomic_path, write_csv

if TYPE_CHECKING:
    from lottery_keras.lottery.controller import TrialRun
    from lottery_keras.train import evaluation


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """An optional evaluation of a trained round: it fills the result columns that name it.

    Args:
        description: What it measures and what asks for it (`columns.EVALUATIONS`).
        wanted: Whether a trial's run asks for it (`TrialRun` → bool): a run option or a protocol field.
        measure: The values of its columns for a trained, undiverged round (`TrialRun`, `Unit` → dict); it may
            write files into the round's directory.
        files: The files `measure` writes there, which a copied round takes along.
    """

    description: str
    wanted: Callable[[TrialRun], bool]
    measure: Callable[[TrialRun, Unit], dict]
    files: tuple[str, ...] = ()


def register_evaluation(name: str, evaluation: Evaluation) -> Evaluation:
    """Declare an optional evaluation of trained rounds: columns declared with `evaluation=name` are its results.

    Args:
        name: Its name, which its columns give as their `evaluation`; must be free.
        evaluation: What asks for it and how it measures.

    Returns:
        `evaluation`.
    """
    if name in columns.EVALUATIONS:
        raise ValueError(f"an evaluation named {name!r} is registered already")
    EVALUATIONS.register(name, evaluation)
    columns.EVALUATIONS[name] = evaluation.description
    return evaluation


class RoundEvaluations:
    """The optional evaluations of one trial's rounds.

    Args:
        run: the trial whose model, trainer, data and options they use.
    """

    def __init__(self, run: TrialRun):
        self.run = run

    def add(self, unit: Unit) -> bool:
        """Add the evaluations the run asks for and the unit lacks; whether any was added."""
        source_name = STRATEGIES[unit.strategy].dense_round_from if unit.strategy in STRATEGIES else None
        if unit.round == 0 and source_name:
            source = self.run.folder.unit(self.run.trial, source_name, 0)
            if source.is_resumable():
                self.add(source)
                return self._borrow(source, unit)
        added = False
        for name, evaluation in EVALUATIONS.items():
            added = self._add(name, evaluation, unit) or added
        return added

    def _add(self, name: str, evaluation: Evaluation, unit: Unit) -> bool:
        metrics = unit.read_metrics()
        filled = names(declared(evaluation=name))
        if not evaluation.wanted(self.run) or metrics.get("diverged") or all(key in metrics for key in filled):
            return False
        values = check_filled(evaluation.measure(self.run, unit), [name], f"the {name} evaluation")
        unit.write_metrics({**metrics, **values})
        unit.remove_stale_checkpoints()
        return True

    @staticmethod
    def _borrow(source: Unit, unit: Unit) -> bool:
        metrics, evaluated = unit.read_metrics(), source.read_metrics()
        added = {key: evaluated[key] for key in names(declared(optional=True))
                 if key in evaluated and key not in metrics}
        if not added:
            return False
        for name in (file for evaluation in EVALUATIONS.values() for file in evaluation.files):
            if (source.directory / name).is_file():
                with atomic_path(unit.directory / name) as tmp:
                    shutil.copyfile(source.directory / name, tmp)
        unit.write_metrics({**metrics, **added})
        return True


def measure_stability(run: TrialRun, unit: Unit) -> dict:
    """Train a copy of the unit from its start on another data order and measure the error barrier on the linear
    path between the two (stability.csv; `instability`, NaN where the copy diverged)."""
    from lottery_keras.train import evaluation
    from lottery_keras.train.callbacks import EarlyStopRecorder

    experiment, splits = run.experiment, run.splits
    trained = run.trained_model(unit).get_weights()
    run.model.set_weights(run.read_ticket(unit, unit.ticket_init).get_weights())
    schedule, offset = run.schedule_and_offset(STRATEGIES[unit.strategy], unit.round)
    iterations = experiment.iterations - offset
    watch = EarlyStopRecorder((splits.x_val, splits.y_val), (splits.x_test, splits.y_test),
                              eval_every=experiment.eval_every, iterations=iterations, test_every_eval=False,
                              evaluator=run.evaluator)  # only to stop a diverging copy
    if run.options.verbose:
        print(f"trial {run.trial} · {unit.strategy} · round {unit.round}: training a second copy for the "
              "stability analysis", flush=True)
    run.seed_randomness(unit.round, "copy")
    data_seed = derived_seed(run.seed, unit.round, "data", "copy")
    run.trainer.train(iterations, experiment.eval_every, data_seed, [watch], schedule=schedule, step_offset=offset,
                      checkpoint=run.round_checkpoint(unit.copy_checkpoint, data_seed, iterations, offset))
    if watch.diverged:
        print(f"warning: trial {run.trial} · {unit.strategy} · round {unit.round}: the stability copy "
              "diverged; its instability is left empty", file=sys.stderr, flush=True)
        return {"instability": math.nan}
    path = evaluation.interpolation_accuracies(run.model, trained, run.model.get_weights(), splits.x_test,
                                               splits.y_test)
    write_csv(unit.stability, pd.DataFrame({"alpha": list(path), "test_acc": list(path.values())}))
    return {"instability": evaluation.error_barrier(path)}


def measure_robustness(run: TrialRun, unit: Unit) -> dict:
    """Score the unit's trained ticket on the test split under every corruption (robustness.csv) and FGSM: their
    means."""
    from lottery_keras.train import evaluation

    model, (x, y) = run.trained_model(unit), (run.splits.x_test, run.splits.y_test)
    normalisation = _pixel_scale(run)
    scores = evaluation.corruption_accuracies(model, x, y, normalisation)
    write_csv(unit.robustness, pd.DataFrame([{"corruption": name, "severity": severity, "test_acc": acc}
                                              for (name, severity), acc in scores.items()]))
    epsilon = adversarial_epsilon(run.experiment.dataset)
    return {"corruption_acc": float(np.mean(list(scores.values()))),
            "adversarial_acc": evaluation.fgsm_accuracy(model, x, y, normalisation, epsilon)}


def _pixel_scale(run: TrialRun) -> evaluation.Normalisation:
    """How inputs map to pixels in [0, 1]: the built-in dataset's normalisation, or each channel's training range
    for data of one's own."""
    from lottery_keras.train import evaluation

    if run.experiment.data:
        return evaluation.Normalisation.spanning(run.splits.x_train)
    spec = data.DATASETS[run.experiment.dataset]
    return evaluation.Normalisation(spec.mean, spec.std)


EVALUATIONS: Registry[Evaluation] = Registry("round evaluation", Evaluation, {
    "robustness": Evaluation(columns.EVALUATIONS["robustness"], lambda run: run.options.robustness,
                             measure_robustness, (ROBUSTNESS,)),
    "stability": Evaluation(columns.EVALUATIONS["stability"], lambda run: run.options.stability, measure_stability,
                            (STABILITY,)),
})
