"""The open strategy registry: a strategy with a new mask criterion, declared outside the package with the public
API alone, runs through the command line's code and the report like a built-in one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import lottery_keras
from lottery_keras import cli
from lottery_keras.lottery import masks, pruning, starts, strategies
from lottery_keras.lottery.paths import RunFolder
from lottery_keras.lottery.seeds import derived_seed
from lottery_keras.nn.saving import load_ticket
from lottery_keras.storage import read_npz

NAME = "smallest_magnitude"


class SmallestMagnitude(lottery_keras.MaskSource):
    """Zhou et al. 2019's "small magnitude" control: keep the smallest surviving weights of the previous round."""

    def pruned_unit(self, strategy, round_index, needed):
        return needed[strategy.name, round_index - 1]

    def masks(self, trial, strategy, round_index, needed):
        previous = needed[strategy.name, round_index - 1]
        smallness = {name: 1.0 / (np.abs(kernel) + 1e-12) for name, kernel in trial.trained_kernels(previous).items()}
        old_masks = trial.read_masks(previous)
        return pruning.magnitude_prune(smallness, old_masks, pruning.layerwise_counts(old_masks, trial.rates,
                                                                                     round_index))


@pytest.fixture
def registered():
    """The new criterion and its strategy in the registries for one test, removed afterwards."""
    lottery_keras.register_mask_source("smallest", SmallestMagnitude())
    strategy = lottery_keras.register_strategy(lottery_keras.Strategy(
        NAME, "smallest magnitude", "tab:pink", masks="smallest", start="theta0",
        dense_round_from=strategies.WINNING_TICKET))
    yield strategy
    del strategies.STRATEGIES[NAME], masks.MASK_SOURCES["smallest"]
    strategies.GROUPS["all"] = tuple(strategies.STRATEGIES)


def test_a_strategy_registered_outside_the_package_runs_from_the_command_line_and_reports(registered, tmp_path,
                                                                                          capsys):
    assert NAME in strategies.resolve(["all"])
    argv = ["--dataset", "mnist", "--arch", "lenet300_100", "--strategy", NAME, "--rounds", "2", "--iterations",
            "60", "--eval-every", "30", "--train-subset", "600", "--output-dir", str(tmp_path), "--quiet",
            "--checkpoint-minutes", "0"]
    assert cli.main(argv) == 0
    run_dir = next(tmp_path.glob("mnist-lenet300_100-*"))
    folder = RunFolder(run_dir)
    table = pd.read_csv(folder.results_csv(0, NAME))
    assert table["remaining"].round(2).tolist() == [100.0, 70.0]

    dense, pruned = folder.unit(0, NAME, 0), folder.unit(0, NAME, 1)
    trained = {layer.name: np.abs(np.asarray(layer.kernel))
               for layer in load_ticket(dense.ticket_trained).masked_layers()}
    mask = read_npz(pruned.masks)["fc1"].astype(bool)
    assert trained["fc1"][mask].max() <= trained["fc1"][~mask].min()  # the smallest weights are the ones kept

    assert cli.main(["report", str(run_dir)]) == 0
    report = (run_dir / "report" / "report.md").read_text()
    assert "smallest magnitude" in report and f"`{NAME}`" in report
    capsys.readouterr()


class SignedReinit(lottery_keras.StartRule):
    """Zhou et al. 2019's "signs matter": a fresh draw's magnitudes with θ0's signs."""

    def weights(self, trial, strategy, round_index, needed):
        fresh = trial.fresh_state(derived_seed(trial.seed, round_index, "signed"))
        return {path: np.abs(value) * np.where(trial.theta0[path] < 0, -1.0, 1.0).astype(value.dtype)
                for path, value in fresh.items()}


@pytest.fixture
def signed_reinit():
    """A strategy with a new start rule, in the registries for one test."""
    lottery_keras.register_start("signed_reinit", SignedReinit())
    strategy = lottery_keras.register_strategy(lottery_keras.Strategy(
        "signed_reinit", "reinit with θ0's signs", "tab:pink", masks="borrowed", start="signed_reinit",
        masks_from=strategies.WINNING_TICKET))
    yield strategy
    del strategies.STRATEGIES[strategy.name], starts.STARTS["signed_reinit"]
    strategies.GROUPS["all"] = tuple(strategies.STRATEGIES)


def test_a_start_rule_registered_outside_the_package_sets_every_rounds_start(signed_reinit, tmp_path, capsys):
    argv = ["--dataset", "mnist", "--arch", "lenet300_100", "--strategy", signed_reinit.name, "--rounds", "2",
            "--iterations", "30", "--eval-every", "30", "--train-subset", "600", "--output-dir", str(tmp_path),
            "--quiet", "--checkpoint-minutes", "0"]
    assert cli.main(argv) == 0
    folder = RunFolder(next(tmp_path.glob("mnist-lenet300_100-*")))
    theta0 = read_npz(folder.theta0(0))
    winning = folder.unit(0, strategies.WINNING_TICKET, 1)
    for round_index in range(2):
        unit = folder.unit(0, signed_reinit.name, round_index)
        mask = read_npz(unit.masks)["fc1"].astype(bool)
        assert mask.all() if round_index == 0 else np.array_equal(mask, read_npz(winning.masks)["fc1"])
        start = load_ticket(unit.ticket_init).get_layer("fc1").kernel.numpy()[mask]
        initial = next(value for path, value in theta0.items() if path.endswith("fc1/kernel"))[mask]
        assert np.all(start * initial >= 0) and not np.allclose(np.abs(start), np.abs(initial))  # a draw may be 0
    capsys.readouterr()


def test_late_rewinding_from_a_dense_round_not_trained_from_theta0_stops_that_chain_with_one_line(tmp_path, capsys):
    strategy = lottery_keras.register_strategy(lottery_keras.Strategy(
        "rewind_after_reinit", "x", "k", masks="magnitude", start="theta0", dense_round_from=strategies.REINIT_CONTROL))
    try:
        argv = ["--dataset", "mnist", "--arch", "lenet300_100", "--strategy", strategy.name, "--rounds", "2",
                "--iterations", "20", "--eval-every", "10", "--rewind-iteration", "10", "--train-subset", "600",
                "--output-dir", str(tmp_path), "--quiet", "--checkpoint-minutes", "0"]
        assert cli.main(argv) == 0
    finally:
        del strategies.STRATEGIES[strategy.name]
        strategies.GROUPS["all"] = tuple(strategies.STRATEGIES)
    warning = capsys.readouterr().err
    assert ("magnitude_random round 0 keeps no rewind point θ_K for late rewinding: it was not trained from θ0"
            in warning)
    assert "its later rounds are skipped" in warning
    folder = RunFolder(next(tmp_path.glob("mnist-lenet300_100-*")))
    assert folder.unit(0, strategy.name, 0).is_finished() and not folder.unit(0, strategy.name, 1).is_finished()


def test_registration_refuses_what_would_fail_later(registered):
    with pytest.raises(ValueError, match="registered already"):
        lottery_keras.register_strategy(registered)
    with pytest.raises(ValueError, match="masks must be one of"):
        lottery_keras.Strategy("x", "x", "k", masks="movement", start="theta0")
    with pytest.raises(ValueError, match="unregistered strategies: nowhere"):
        lottery_keras.register_strategy(lottery_keras.Strategy("x", "x", "k", masks="borrowed", start="reinit",
                                                               masks_from="nowhere"))
    with pytest.raises(ValueError, match="cannot name a folder"):
        lottery_keras.register_strategy(lottery_keras.Strategy("a/b", "x", "k", masks="magnitude", start="theta0"))
    with pytest.raises(ValueError, match="registered already"):
        lottery_keras.register_mask_source("magnitude", SmallestMagnitude())
    with pytest.raises(TypeError, match="MaskSource instance"):
        lottery_keras.register_mask_source("plain", object())
    with pytest.raises(TypeError, match="StartRule instance"):
        lottery_keras.register_start("plain", object())
