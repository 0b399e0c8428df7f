"""The optional evaluations of a trained round, added to its metrics when the run's options ask for them.

- `--robustness`: the trained ticket's test accuracy under every corruption (robustness.csv) and under FGSM;
- `--stability`: a second copy trained from the same start on another data order, and the error barrier on the
  linear path between the two (stability.csv, `instability`; Frankle et al. 2020).

Finished rounds that lack one get it when a run asks for it; a diverged round gets neither. A copied dense round
takes them from the round it copies (the same network), which is evaluated first if needed.
"""

from __future__ import annotations

import math
import shutil
import sys
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lottery_keras import data
from lottery_keras.columns import declared, names
from lottery_keras.config import adversarial_epsilon
from lottery_keras.lottery.paths import ROBUSTNESS, STABILITY, Unit
from lottery_keras.lottery.seeds import derived_seed
from lottery_keras.lottery.strategies import STRATEGIES
from lottery_keras.storage import atomic_path, write_csv
from lottery_keras.train import evaluation
from lottery_keras.train.callbacks import EarlyStopRecorder

if TYPE_CHECKING:
    from lottery_keras.lottery.controller import TrialRun


class RoundEvaluations:
    """The optional evaluations of one trial's rounds.

    Args:
        run: the trial whose model, trainer, data and options they use.
    """

    def __init__(self, run: TrialRun):
        self.run = run

    def add(self, unit: Unit) -> bool:
        """Add the evaluations the options ask for and the unit lacks; whether any was added."""
        source_name = STRATEGIES[unit.strategy].dense_round_from if unit.strategy in STRATEGIES else None
        if unit.round == 0 and source_name:
            source = self.run.folder.unit(self.run.trial, source_name, 0)
            if source.is_resumable():
                self.add(source)
                return self._borrow(source, unit)
        added = self._add_robustness(unit)
        return self._add_stability(unit) or added

    @staticmethod
    def _borrow(source: Unit, unit: Unit) -> bool:
        metrics, evaluated = unit.read_metrics(), source.read_metrics()
        added = {key: evaluated[key] for key in names(declared(optional=True))
                 if key in evaluated and key not in metrics}
        if not added:
            return False
        for name in (ROBUSTNESS, STABILITY):
            if (source.directory / name).is_file():
                with atomic_path(unit.directory / name) as tmp:
                    shutil.copyfile(source.directory / name, tmp)
        unit.write_metrics({**metrics, **added})
        return True

    def _add_stability(self, unit: Unit) -> bool:
        """With `--stability`, train a copy of the unit from its start on another data order and record the error
        barrier on the linear path between the two (stability.csv, `instability`), unless it is there or the unit
        diverged."""
        run, experiment, splits = self.run, self.run.experiment, self.run.splits
        metrics = unit.read_metrics()
        if not run.options.stability or "instability" in metrics or metrics.get("diverged"):
            return False
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
        instability = math.nan
        if watch.diverged:
            print(f"warning: trial {run.trial} · {unit.strategy} · round {unit.round}: the stability copy "
                  "diverged; its instability is left empty", file=sys.stderr, flush=True)
        else:
            path = evaluation.interpolation_accuracies(run.model, trained, run.model.get_weights(), splits.x_test,
                                                       splits.y_test)
            write_csv(unit.stability, pd.DataFrame({"alpha": list(path), "test_acc": list(path.values())}))
            instability = evaluation.error_barrier(path)
        unit.write_metrics({**metrics, "instability": instability})
        unit.copy_checkpoint.unlink(missing_ok=True)
        return True

    def _add_robustness(self, unit: Unit) -> bool:
        """With `--robustness`, score the unit's trained ticket on the test split under every corruption
        (robustness.csv) and FGSM, and add the means to its metrics, unless they are there or it diverged."""
        metrics = unit.read_metrics()
        if not self.run.options.robustness or "corruption_acc" in metrics or metrics.get("diverged"):
            return False
        model, (x, y) = self.run.trained_model(unit), (self.run.splits.x_test, self.run.splits.y_test)
        normalisation = self._pixel_scale()
        scores = evaluation.corruption_accuracies(model, x, y, normalisation)
        write_csv(unit.robustness, pd.DataFrame([{"corruption": name, "severity": severity, "test_acc": acc}
                                                  for (name, severity), acc in scores.items()]))
        epsilon = adversarial_epsilon(self.run.experiment.dataset)
        unit.write_metrics({**metrics, "corruption_acc": float(np.mean(list(scores.values()))),
                            "adversarial_acc": evaluation.fgsm_accuracy(model, x, y, normalisation, epsilon)})
        return True

    def _pixel_scale(self) -> evaluation.Normalisation:
        """How inputs map to pixels in [0, 1]: the built-in dataset's normalisation, or each channel's training
        range for data of one's own."""
        experiment = self.run.experiment
        if experiment.data:
            return evaluation.Normalisation.spanning(self.run.splits.x_train)
        spec = data.DATASETS[experiment.dataset]
        return evaluation.Normalisation(spec.mean, spec.std)
