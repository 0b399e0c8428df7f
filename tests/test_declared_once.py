"""A new protocol option and a new result column, each declared in one place, reach everything that shows them.

The script below is what a contributor writes: one field of `Experiment` (here in a subclass that stands in for the
edit of `config.py`), one column, and the evaluation that fills it. It runs in a fresh process so that the field is
declared before anything reads the protocol, as an edit of `config.py` would be. Then, with no other change: the
command line takes the option and `--help` explains it, `find_ticket` takes the keyword, a real run on an MNIST slice
records it in config.json and its hash, results.csv carries the column, and `run.py report` tables and draws it;
the published runs keep their hashes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    import contextlib, dataclasses, inspect, io, sys

    import numpy as np

    from lottery_keras import config

    @dataclasses.dataclass(frozen=True)
    class WithSharpness(config.Experiment):
        sharpness_samples: int = config._protocol(config.Option(
            "natural", "random weight perturbations of the sharpness probe (0: none)", maximum=64, added_later=True), 0)

    config.Experiment = WithSharpness  # what declaring the field in config.py does

    import lottery_keras
    from lottery_keras import cli
    from lottery_keras.columns import Column, Plot
    from lottery_keras.lottery import find

    def sharpness(run, unit):
        """The mean rise of the trained ticket's test loss under small random perturbations of its survivors."""
        import keras

        model, (x, y) = run.trained_model(unit), (run.splits.x_test[:500], run.splits.y_test[:500])
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        base, trained = float(loss(y, model(x))), [v.numpy() for v in model.trainable_weights]
        rng, rises = np.random.default_rng(0), []
        for _ in range(run.experiment.sharpness_samples):
            for variable, value in zip(model.trainable_weights, trained):
                variable.assign(value + 0.05 * np.abs(value).mean() * rng.standard_normal(value.shape) * (value != 0))
            rises.append(float(loss(y, model(x))) - base)
        return {"sharpness": float(np.mean(rises))}

    lottery_keras.register_evaluation("sharpness", lottery_keras.Evaluation(
        "the sharpness probe (--sharpness-samples)", lambda run: run.experiment.sharpness_samples > 0, sharpness))

    lottery_keras.register_column(Column("sharpness", "sharp.", "sharpness", optional=True, table_rank=11, digits=3,
                                         plot=Plot("beyond_accuracy", "test-loss rise under perturbation")))

    output = sys.argv[1]
    help_text = io.StringIO()
    with contextlib.redirect_stdout(help_text), contextlib.suppress(SystemExit):
        cli.main(["run", "--help"])
    assert "--sharpness-samples" in help_text.getvalue(), help_text.getvalue()
    assert "random weight perturbations of the sharpness probe" in " ".join(help_text.getvalue().split())
    assert "sharpness_samples" in inspect.signature(lottery_keras.find_ticket).parameters
    assert "sharpness_samples: Random weight perturbations" in lottery_keras.find_ticket.__doc__
    assert find.prepare("lenet300_100", "mnist", sharpness_samples=3).experiment.sharpness_samples == 3
    assert config.from_preset("es667", "mnist", "lenet300_100").hash == "77d8bf14f1"  # published: unchanged
    for bad, message in ((["--sharpness-samples", "-1"], "argument --sharpness-samples: -1 must be 0 or more"),
                         (["--sharpness-samples", "65"], "--sharpness-samples must be at most 64, not 65")):
        error = io.StringIO()
        with contextlib.redirect_stderr(error), contextlib.suppress(SystemExit):
            cli.main(["run", "--dataset", "mnist", "--arch", "lenet300_100", "--dry-run", *bad])
        assert message in error.getvalue(), error.getvalue()
    run = ["run", "--dataset", "mnist", "--arch", "lenet300_100", "--rounds", "2", "--iterations", "40",
           "--eval-every", "20", "--train-subset", "600", "--quiet", "--no-tfmot-check", "--output-dir", output,
           "--sharpness-samples", "2"]
    assert cli.main(run) == 0
    assert cli.main(["report", *(str(path) for path in __import__("pathlib").Path(output).iterdir())]) == 0
''')


def test_an_option_and_a_column_declared_once_reach_the_cli_find_ticket_results_and_the_report(tmp_path):
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    [run_dir] = tmp_path.iterdir()
    recorded = json.loads((run_dir / "config.json").read_text())["experiment"]
    assert recorded["sharpness_samples"] == 2
    results = pd.read_csv(run_dir / "trial_0" / "magnitude_rewind" / "results.csv")
    assert results.columns[-1] == "sharpness" and len(results) == 2
    assert results["sharpness"].notna().all() and (results["sharpness"] > -1).all()
    table_header = next(line for line in (run_dir / "report" / "report.md").read_text().splitlines()
                        if line.startswith("| round |"))
    assert table_header.rstrip(" |").endswith("| sharp.")
    assert "<!-- test-loss rise under perturbation -->" in (run_dir / "report" / "beyond_accuracy.svg").read_text()


def test_register_evaluation_refuses_a_taken_name_and_what_is_not_an_evaluation():
    from lottery_keras import columns
    from lottery_keras.lottery.evaluations import Evaluation, register_evaluation

    with pytest.raises(ValueError, match="an evaluation named 'robustness' is registered already"):
        register_evaluation("robustness", Evaluation("again", lambda run: False, lambda run, unit: {}))
    with pytest.raises(TypeError, match="must be a lottery_keras Evaluation instance, not dict"):
        register_evaluation("sharpness", {"measure": None})
    assert "sharpness" not in columns.EVALUATIONS


def test_an_option_of_an_unknown_kind_is_refused_where_it_is_declared():
    from lottery_keras.config import Option

    with pytest.raises(ValueError, match="unknown option kind 'fraction'; choose one of: count, natural"):
        Option("fraction", "a share of the weights")
