"""The open architecture registry: an architecture declared in one `ArchitectureSpec`, outside the package, runs
through the command line's code (presets, the execution plan, image checks) and the report like a built-in one."""

from __future__ import annotations

import pandas as pd
import pytest

import lottery_keras
from lottery_keras import catalog, cli, config
from lottery_keras.lottery.paths import RunFolder
from lottery_keras.nn.saving import load_ticket
from lottery_keras.train import plan as execution

NAME = "lenet100"


@pytest.fixture
def registered():
    """LeNet-100 (one hidden layer of 100 units) for one test, removed afterwards."""
    spec = lottery_keras.register_architecture(lottery_keras.ArchitectureSpec(
        NAME, "lottery_keras.nn.models:LeNetFC", ("fc", "output"), model_args={"hidden": (100,)},
        presets={"frankle2019": {"learning_rate": 1e-3, "iterations": 1_000}}, fast_paths={"cpu": {"jit"}},
        aliases=("lenet-100",)))
    yield spec
    del catalog._ARCHITECTURES[NAME], catalog._ALIASES["lenet-100"]


def test_an_architecture_registered_outside_the_package_runs_from_the_command_line_and_reports(registered,
                                                                                              tmp_path, capsys):
    assert config.from_preset("frankle2019", "mnist", "lenet-100").learning_rate == 1e-3
    plan = execution.decide(NAME, device="cpu")
    assert plan.jit_compile and not plan.sparse_kernels and plan.batch_shards == 1
    argv = ["--dataset", "mnist", "--arch", "lenet-100", "--rounds", "2", "--iterations", "60", "--eval-every",
            "30", "--train-subset", "600", "--output-dir", str(tmp_path), "--quiet", "--checkpoint-minutes", "0"]
    assert cli.main(argv) == 0
    run_dir = next(tmp_path.glob(f"mnist-{NAME}-*"))
    folder = RunFolder(run_dir)
    table = pd.read_csv(folder.results_csv(0, "magnitude_rewind"))
    assert table["remaining"].round(2).tolist() == [100.0, 70.0]
    ticket = load_ticket(folder.unit(0, "magnitude_rewind", 1).ticket_init)
    assert [tuple(layer.kernel.shape) for layer in ticket.masked_layers()] == [(784, 100), (100, 10)]
    assert ticket.arch == NAME
    assert cli.main(["report", str(run_dir)]) == 0
    assert f"mnist / {NAME}" in (run_dir / "report" / "report.md").read_text()
    capsys.readouterr()


def test_a_preset_without_values_for_an_architecture_says_so():
    catalog.register_architecture(catalog.ArchitectureSpec("nopaper", "lottery_keras.nn.models:LeNetFC",
                                                           ("fc", "fc", "output")))
    try:
        with pytest.raises(ValueError, match="frankle2019 preset has no protocol for nopaper"):
            config.from_preset("frankle2019", "mnist", "nopaper")
        assert config.from_preset("es667", "mnist", "nopaper").iterations == 40_000
    finally:
        del catalog._ARCHITECTURES["nopaper"]
