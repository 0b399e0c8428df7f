"""The IMP controller on tiny real MNIST runs: files, rewinding, controls, saved tickets, resume, CLI."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from cli_runs import REPO, kill_once_written, start_run
from lottery_keras import cli, config, data
from lottery_keras.lottery import controller as imp
from lottery_keras.analysis.report import write_report
from lottery_keras.lottery import pruning, saliency
from lottery_keras.lottery.paths import RunFolder
from lottery_keras.lottery.strategies import STRATEGIES
from lottery_keras.storage import read_json, read_npz

TINY = dict(rounds=3, iterations=60, eval_every=30, train_subset=600)


def tiny_experiment(**overrides):
    return config.from_preset("es667", "mnist", "lenet300_100", **{**TINY, **overrides})


@pytest.fixture(scope="module")
def finished_trial(tmp_path_factory):
    """A three-round run of all strategies, plus the controller object that ran it."""
    experiment = tiny_experiment()
    options = imp.RunOptions(strategies=STRATEGIES, verbose=False)
    folder = imp.prepare_run_folder(experiment, tmp_path_factory.mktemp("run"))
    trial = imp.TrialRun(experiment, imp.load_splits(experiment, None), folder, 0, options)
    trial.run(STRATEGIES)
    return folder.directory, trial


def kernels(path):
    model = keras.models.load_model(path)
    return model, {layer.name: keras.ops.convert_to_numpy(layer.kernel) for layer in model.masked_layers()}


def test_results_csv_has_the_expected_columns_and_remaining_sequence(finished_trial):
    run_dir, _ = finished_trial
    for strategy in STRATEGIES:
        table = pd.read_csv(run_dir / "trial_0" / strategy / "results.csv")
        for column in ("round", "remaining", "es_iteration", "val_acc", "test_acc", "final_test_acc"):
            assert column in table
        if strategy != "structured":  # whole units: its own sequence (test_structured_pruning_…)
            assert table["remaining"].round(2).tolist() == [100.0, 70.0, 49.0]
        assert table["round"].tolist() == [0, 1, 2]
        assert table["es_iteration"].isin([30, 60]).all()
        assert (table["test_acc"] > 50).all()


def test_every_round_writes_its_files(finished_trial):
    run_dir, _ = finished_trial
    assert read_json(run_dir / "config.json")["experiment"]["iterations"] == 60
    for strategy in STRATEGIES:
        for r in range(3):
            directory = RunFolder(run_dir).unit(0, strategy, r).directory
            for name in ("ticket_init.keras", "ticket_trained.keras", "masks.npz", "history.csv", "metrics.json"):
                assert (directory / name).is_file(), directory / name
            history = pd.read_csv(directory / "history.csv")
            assert history["iteration"].tolist() == [30, 60]


def test_rewound_weights_are_theta0_at_survivors_and_zero_elsewhere(finished_trial):
    run_dir, trial = finished_trial
    theta0 = read_npz(run_dir / "trial_0" / "theta0.npz")
    for strategy in ("magnitude_rewind", "random_rewind"):
        model, start = kernels(RunFolder(run_dir).unit(0, strategy, 2).directory / "ticket_init.keras")
        masks = read_npz(RunFolder(run_dir).unit(0, strategy, 2).directory / "masks.npz")
        for layer in model.masked_layers():
            original = next(value for path, value in theta0.items() if path.endswith(f"{layer.name}/kernel"))
            np.testing.assert_array_equal(start[layer.name], original * masks[layer.name])
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.mask), masks[layer.name])


def test_magnitude_masks_prune_the_smallest_trained_weights(finished_trial):
    run_dir, _ = finished_trial
    _, trained = kernels(RunFolder(run_dir).unit(0, "magnitude_rewind", 1).directory / "ticket_trained.keras")
    old = read_npz(RunFolder(run_dir).unit(0, "magnitude_rewind", 1).directory / "masks.npz")
    new = read_npz(RunFolder(run_dir).unit(0, "magnitude_rewind", 2).directory / "masks.npz")
    for name, w in trained.items():
        dropped, kept = (old[name] == 1) & (new[name] == 0), new[name] == 1
        assert np.abs(w[dropped]).max() <= np.abs(w[kept]).min()


def test_magnitude_random_reuses_the_masks_with_different_weights(finished_trial):
    run_dir, _ = finished_trial
    for r in (1, 2):
        rewind = read_npz(RunFolder(run_dir).unit(0, "magnitude_rewind", r).directory / "masks.npz")
        reinit = read_npz(RunFolder(run_dir).unit(0, "magnitude_random", r).directory / "masks.npz")
        for name in rewind:
            np.testing.assert_array_equal(rewind[name], reinit[name])
        _, w_rewind = kernels(RunFolder(run_dir).unit(0, "magnitude_rewind", r).directory / "ticket_init.keras")
        _, w_reinit = kernels(RunFolder(run_dir).unit(0, "magnitude_random", r).directory / "ticket_init.keras")
        for name in w_rewind:
            survivors = rewind[name] == 1
            assert not np.allclose(w_rewind[name][survivors], w_reinit[name][survivors])
            assert np.all(w_reinit[name][~survivors] == 0)


def test_reinit_chain_prunes_its_own_trained_weights_and_starts_fresh(finished_trial):
    run_dir, _ = finished_trial
    unit = RunFolder(run_dir).unit
    dense_chain, dense_reinit = (read_json(unit(0, name, 0).metrics) for name in ("reinit_chain", "magnitude_random"))
    assert dense_chain == dense_reinit  # round 0 is the control's dense reinitialised network, copied
    _, trained = kernels(unit(0, "reinit_chain", 1).ticket_trained)
    old, new = read_npz(unit(0, "reinit_chain", 1).masks), read_npz(unit(0, "reinit_chain", 2).masks)
    ticket = read_npz(unit(0, "magnitude_rewind", 2).masks)
    for name, w in trained.items():
        dropped, kept = (old[name] == 1) & (new[name] == 0), new[name] == 1
        assert np.abs(w[dropped]).max() <= np.abs(w[kept]).min()
        assert not np.array_equal(new[name], ticket[name])
    _, start = kernels(unit(0, "reinit_chain", 2).ticket_init)
    _, reinit_start = kernels(unit(0, "magnitude_random", 2).ticket_init)
    for name, w in start.items():  # the same fresh draw as the paper's control, under the chain's own masks
        both = (new[name] == 1) & (ticket[name] == 1)
        np.testing.assert_array_equal(w[both], reinit_start[name][both])
        assert np.all(w[new[name] == 0] == 0)


def test_lr_rewind_and_finetune_start_from_the_trained_weights_and_coincide_at_a_constant_rate(finished_trial):
    run_dir, _ = finished_trial
    unit = RunFolder(run_dir).unit
    for r in (1, 2):
        masks = read_npz(unit(0, "lr_rewind", r).masks)
        _, previous = kernels(unit(0, "lr_rewind", r - 1).ticket_trained)
        _, start = kernels(unit(0, "lr_rewind", r).ticket_init)
        for name, w in start.items():
            np.testing.assert_array_equal(w, previous[name] * masks[name])
        lr_rewind, finetune = (read_json(unit(0, name, r).metrics) for name in ("lr_rewind", "finetune"))
        assert lr_rewind == finetune  # es667's rate is constant: the same computation, copied (timing included)


def test_oneshot_prunes_the_dense_round_straight_to_each_level(finished_trial):
    run_dir, trial = finished_trial
    unit = RunFolder(run_dir).unit
    _, dense = kernels(unit(0, "magnitude_rewind", 0).ticket_trained)
    ones = {name: np.ones_like(w) for name, w in dense.items()}
    for r in (1, 2):
        want = pruning.magnitude_prune(dense, ones, pruning.layerwise_counts(ones, trial.rates, r))
        got = read_npz(unit(0, "oneshot", r).masks)
        for name in dense:
            np.testing.assert_array_equal(got[name], want[name])
        _, start = kernels(unit(0, "oneshot", r).ticket_init)
        _, theta0 = kernels(unit(0, "magnitude_rewind", 0).ticket_init)
        for name, w in start.items():
            np.testing.assert_array_equal(w, theta0[name] * got[name])
    ticket = read_npz(unit(0, "magnitude_rewind", 2).masks)  # iterative pruning chooses other weights by round 2
    assert any(not np.array_equal(ticket[name], read_npz(unit(0, "oneshot", 2).masks)[name]) for name in ticket)


def test_snip_prunes_theta0_by_connection_sensitivity(finished_trial):
    run_dir, trial = finished_trial
    unit = RunFolder(run_dir).unit
    model, theta0 = kernels(unit(0, "magnitude_rewind", 0).ticket_init)
    x, y = trial.splits.x_train[:1000], trial.splits.y_train[:1000]
    scores = saliency.snip_scores(model, x, y)
    ones = {name: np.ones_like(w) for name, w in theta0.items()}
    masks = {r: read_npz(unit(0, "snip", r).masks) for r in (1, 2)}
    for r, got in masks.items():
        want = pruning.magnitude_prune(scores, ones, pruning.layerwise_counts(ones, trial.rates, r))
        for name in theta0:
            np.testing.assert_array_equal(got[name], want[name])
    for name, w in kernels(unit(0, "snip", 2).ticket_init)[1].items():
        np.testing.assert_array_equal(w, theta0[name] * masks[2][name])
        assert np.all(masks[2][name] <= masks[1][name])  # one ranking: the levels nest
        assert not np.array_equal(masks[2][name], read_npz(unit(0, "magnitude_rewind", 2).masks)[name])


def test_structured_pruning_removes_whole_neurons_of_the_smallest_norm(finished_trial):
    run_dir, _ = finished_trial
    unit = RunFolder(run_dir).unit
    for r in (1, 2):
        old, new = read_npz(unit(0, "structured", r - 1).masks), read_npz(unit(0, "structured", r).masks)
        _, trained = kernels(unit(0, "structured", r - 1).ticket_trained)
        names, inputs = list(trained), None  # inputs: the units of the layer before that survive
        for name, following in zip(names[:-1], names[1:]):
            units = new[name].any(axis=0)
            kept = old[name] if inputs is None else old[name] * inputs[:, None]
            assert np.all(new[name][:, units] == kept[:, units]) and not new[name][:, ~units].any()
            inputs = units
            assert units.sum() == pruning.target_count(units.size, pruning.structured_unit_rate(0.3), r)
            assert not new[following][~units].any()  # the removed neurons' outgoing weights go too
            norms = np.abs(trained[name] * kept).sum(axis=0)  # over the inputs that remain
            assert norms[units].min() >= norms[old[name].any(axis=0) & ~units].max()
        assert new[names[-1]].any(axis=0).all()  # every class keeps its output unit
    structured, ticket = (read_json(unit(0, name, 2).metrics)["remaining"]
                          for name in ("structured", "magnitude_rewind"))
    assert ticket < structured < 70  # the first layer's inputs stay, so it keeps more than unstructured pruning


def test_late_rewinding_and_a_step_schedule(tmp_path):
    """--rewind-iteration 30: survivors restart from the dense round's weights after 30 steps and train the
    other 30; with a drop at step 30, fine-tuning (at the final rate) and LR rewinding differ."""
    experiment = tiny_experiment(rounds=2, rewind_iteration=30, lr_drops=(30,), lr_drop_factor=0.5)
    assert experiment.run_name != tiny_experiment().run_name
    names = ["magnitude_rewind", "lr_rewind", "finetune"]
    imp.run_experiment(experiment, tmp_path, options=imp.RunOptions(strategies=names, verbose=False))
    unit = RunFolder.for_experiment(experiment, tmp_path).unit
    theta_k = read_npz(unit(0, "magnitude_rewind", 0).rewind_point)
    theta0 = read_npz(RunFolder.for_experiment(experiment, tmp_path).theta0(0))
    model, start = kernels(unit(0, "magnitude_rewind", 1).ticket_init)
    masks = read_npz(unit(0, "magnitude_rewind", 1).masks)
    for layer in model.masked_layers():
        path = layer.kernel.path
        assert not np.allclose(theta_k[path], theta0[path])
        np.testing.assert_array_equal(start[layer.name], theta_k[path] * masks[layer.name])
    assert read_json(unit(0, "magnitude_rewind", 1).metrics)["es_iteration"] == 60  # steps 30 … 59 after K = 30
    lr_rewind, finetune = (read_json(unit(0, name, 1).metrics) for name in ("lr_rewind", "finetune"))
    assert lr_rewind["val_loss"] != finetune["val_loss"]
    text = (write_report([RunFolder.for_experiment(experiment, tmp_path).directory]) / "report.md").read_text()
    assert "×0.5 at steps 30; rewind to step 30" in text and "same computation" not in text


def test_the_report_says_when_lr_rewinding_and_finetuning_coincide(finished_trial, tmp_path):
    run_dir, _ = finished_trial
    text = (write_report([run_dir], tmp_path) / "report.md").read_text()
    assert "the learning rate is constant, so *LR rewinding*" in text and "lr schedule" not in text


def test_random_rewind_masks_are_independent_of_the_magnitude_masks(finished_trial):
    run_dir, _ = finished_trial
    magnitude = read_npz(RunFolder(run_dir).unit(0, "magnitude_rewind", 2).directory / "masks.npz")
    random = read_npz(RunFolder(run_dir).unit(0, "random_rewind", 2).directory / "masks.npz")
    for name in magnitude:
        assert magnitude[name].sum() == random[name].sum()
        overlap = float((magnitude[name] * random[name]).sum() / magnitude[name].sum())
        assert abs(overlap - 0.49) < 0.15, overlap  # independent masks at 49% density overlap ~49%


def test_a_loaded_ticket_predicts_like_the_in_memory_model(finished_trial):
    run_dir, trial = finished_trial
    last_trained = RunFolder(run_dir).unit(0, list(STRATEGIES)[-1], 2)  # the model in memory holds the last unit
    loaded = keras.models.load_model(last_trained.ticket_trained)
    x = trial.splits.x_test[:500]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), trial.model.predict(x, verbose=0), atol=1e-5)


def test_a_rerun_skips_finished_rounds(finished_trial):
    run_dir, _ = finished_trial
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("metrics.json")}
    imp.run_experiment(tiny_experiment(), run_dir.parent, options=imp.RunOptions(strategies=["all"], verbose=False))
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("metrics.json")} == before
    assert Path(read_json(run_dir / "config.json")["data_source"]).name == "mnist"  # where the data came from


def test_a_clone_of_a_published_run_trains_again_what_it_lacks_the_tickets_of(finished_trial, tmp_path):
    """Published runs commit metrics and histories, not tickets: resuming a clone retrains, with the same results."""
    run_dir, _ = finished_trial
    clone = tmp_path / run_dir.name
    shutil.copytree(run_dir, clone, ignore=shutil.ignore_patterns("*.keras", "*.npz"))
    published = RunFolder(clone).results()
    imp.run_experiment(tiny_experiment(), tmp_path, options=imp.RunOptions(strategies=["all"], verbose=False))
    assert all(unit.is_resumable() for unit in RunFolder(clone).finished_units(0, "magnitude_rewind"))
    pd.testing.assert_frame_equal(RunFolder(clone).results().drop(columns="train_seconds"),
                                  published.drop(columns="train_seconds"))


def test_a_results_table_left_short_by_a_kill_is_repaired_on_resume(finished_trial, tmp_path):
    """A kill between a unit's metrics.json and the table's rewrite leaves the table a round short."""
    run_dir, _ = finished_trial
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    table = copy / "trial_0" / "random_rewind" / "results.csv"
    full = pd.read_csv(table)
    full.iloc[:-1].to_csv(table, index=False)
    before = {p: p.stat().st_mtime_ns for p in copy.rglob("metrics.json")}
    imp.run_experiment(tiny_experiment(), tmp_path, options=imp.RunOptions(strategies=["all"], verbose=False))
    pd.testing.assert_frame_equal(pd.read_csv(table), full)
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("metrics.json")} == before  # nothing retrained


def test_more_rounds_extend_the_same_run_directory():
    assert tiny_experiment(rounds=5).run_name == tiny_experiment().run_name
    assert tiny_experiment(iterations=61).run_name != tiny_experiment().run_name


def test_kill_and_resume_gives_the_same_results(tmp_path):
    args = ["--dataset", "mnist", "--arch", "lenet300_100", "--strategy", "all", "--rounds", "3",
            "--iterations", "600", "--eval-every", "200", "--train-subset", "3000", "--no-tfmot-check"]
    reference = start_run(*args, output_dir=tmp_path / "straight")
    assert reference.wait(timeout=600) == 0, reference.stderr.read()

    kill_once_written(start_run(*args, output_dir=tmp_path / "killed"), tmp_path / "killed",
                      "*/trial_0/magnitude_rewind/round_01/metrics.json")
    assert not list((tmp_path / "killed").glob("*/trial_0/random_rewind/round_02/metrics.json"))

    resumed = start_run(*args, output_dir=tmp_path / "killed")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    for strategy in STRATEGIES:
        straight, = (tmp_path / "straight").glob(f"*/trial_0/{strategy}/results.csv")
        killed, = (tmp_path / "killed").glob(f"*/trial_0/{strategy}/results.csv")
        a, b = (pd.read_csv(p).drop(columns="train_seconds") for p in (straight, killed))
        pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("args, message", [
    (["--dataset", "imagenet", "--arch", "lenet5"], "invalid choice: 'imagenet'"),
    (["--dataset", "mnist", "--arch", "resnet"], "invalid choice: 'resnet'"),
    (["--dataset", "mnist", "--arch", "lenet5", "--strategy", "best"], "invalid choice: 'best'"),
    (["--dataset", "mnist", "--arch", "lenet5", "--prune-rate", "1.5"], "1.5 must be a fraction strictly between 0 and 1"),
    (["--dataset", "mnist", "--arch", "lenet5", "--prune-rate", "0.995"], "--prune-rate must be at most 0.99 (a round"),
    (["--dataset", "mnist", "--arch", "lenet5", "--prune-fc", "0"], "argument --prune-fc: 0 must be a fraction"),
    (["--dataset", "mnist", "--arch", "lenet5", "--rounds", "0"], "must be at least 1"),
    (["--dataset", "mnist", "--arch", "lenet5", "--lr", "-1"], "argument --lr: -1 must be positive"),
    (["--dataset", "mnist", "--arch", "lenet5", "--lr", "inf"], "--lr must be at most 1 (Adam diverges beyond), not inf"),
    (["--dataset", "mnist", "--arch", "lenet5", "--lr", "nan"], "argument --lr: nan must be positive"),
    (["--dataset", "mnist", "--arch", "lenet5", "--lr", "1000"], "at most 1 (Adam diverges beyond)"),
    (["--dataset", "mnist", "--arch", "lenet5", "--lr", "1e-320"], "round to 0 in float32"),
    (["--dataset", "mnist", "--arch", "lenet5", "--prune-rate", "1e-300"], "round to 0 in float32"),
    (["--dataset", "mnist", "--arch", "lenet5", "--seed", "-1"], "argument --seed: -1 must be 0 or more"),
    (["--dataset", "mnist", "--arch", "lenet5", "--seed", str(2**40)], "--seed must be at most 2,147,483,647"),
    (["--dataset", "mnist", "--arch", "lenet5", "--rewind-iteration", "40000"], "--rewind-iteration must lie in 0"),
    (["--dataset", "mnist", "--arch", "lenet5", "--rewind-iteration", "-5"], "must be 0 or more"),
    (["--dataset", "mnist", "--arch", "lenet5", "--warmup", "50000"], "--warmup must lie in 0"),
    (["--dataset", "mnist", "--arch", "lenet5", "--lr-drops", "30000,20000"], "--lr-drops must be increasing"),
    (["--dataset", "mnist", "--arch", "lenet5", "--lr-drops", "20k"], "not a comma-separated list of steps"),
    (["--dataset", "mnist", "--arch", "lenet5", "--lr-drop-factor", "2"], "--lr-drop-factor must lie in (0, 1]"),
    (["--dataset", "mnist", "--arch", "lenet5", "--strategy", "structured", "--pruning-scope", "global",
      "--data-dir", "/nonexistent"], "run it with layerwise pruning"),
    (["deploy", "--dataset", "mnist"], "'deploy' is not a command: choose one of run, report, study, export"),
])
def test_bad_arguments_exit_nonzero_with_a_message(args, message, capsys):
    try:
        code = cli.main(args)
    except SystemExit as exit_info:  # refused by the parser
        code = exit_info.code
    assert code != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unwritable_output_dir_is_a_one_line_error(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code = cli.main(["--dataset", "mnist", "--arch", "lenet300_100", "--output-dir", str(blocker), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.startswith("error: cannot write the run directory") and "--output-dir" in err
    assert len(err.splitlines()) == 1


def test_missing_data_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    import tensorflow_datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no internet")

    monkeypatch.setattr(tensorflow_datasets, "load", offline)
    monkeypatch.setattr(data, "WELL_KNOWN_ROOTS", ())
    monkeypatch.setenv("LOTTERY_KERAS_DATA_DIR", str(tmp_path / "nowhere"))
    code = cli.main(["--dataset", "cifar10", "--arch", "conv2", "--output-dir", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert err.startswith("error: cifar10 was not found") and "LOTTERY_KERAS_DATA_DIR" in err


@pytest.mark.parametrize("text, trials", [("3", (0, 1, 2)), ("1-4", (1, 2, 3, 4)), ("2-2", (2,))])
def test_trials_are_a_count_or_a_range(text, trials, tmp_path, capsys):
    assert cli.main(["--dataset", "mnist", "--arch", "lenet5", "--trials", text, "--dry-run",
                     "--output-dir", str(tmp_path)]) == 0
    assert f"trials: {', '.join(map(str, trials))}" in capsys.readouterr().out


@pytest.mark.parametrize("text", ["0", "4-1", "-1", "two"])
def test_impossible_trials_are_refused(text, capsys):
    with pytest.raises(SystemExit):
        cli.main(["--dataset", "mnist", "--arch", "lenet5", "--trials", text, "--dry-run"])
    assert "--trials" in capsys.readouterr().err


def test_dry_run_prints_the_configuration_and_run_directory(tmp_path, capsys):
    assert cli.main(["--dataset", "fashion", "--arch", "lenet_conv", "--preset", "frankle2019", "--dry-run",
                     "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    experiment = config.from_preset("frankle2019", "fashion_mnist", "lenet5")
    assert str(tmp_path / experiment.run_name) in out
    assert "prune_output: 0.1" in out and "learning_rate: 0.0012" in out
    assert not any(tmp_path.iterdir())


def test_a_diverged_round_is_flagged_everywhere_and_never_averaged(tmp_path, capsys):
    experiment = tiny_experiment(learning_rate=1.0, eval_every=20)
    options = imp.RunOptions(strategies=["magnitude_rewind", "magnitude_random"], check_tfmot=False, verbose=False)
    folder = imp.run_experiment(experiment, tmp_path, options=options)
    err = capsys.readouterr().err
    assert "round 0: training diverged" in err and "its later rounds are skipped" in err
    metrics_text = folder.unit(0, "magnitude_rewind", 0).metrics.read_text()
    assert "NaN" not in metrics_text and json.loads(metrics_text)["diverged"] is True
    assert not folder.unit(0, "magnitude_rewind", 1).directory.exists()  # no masks from blown-up weights
    assert pd.read_csv(folder.results_csv(0, "magnitude_rewind"))["diverged"].tolist() == [True]

    from lottery_keras.analysis import report
    report_dir = report.write_report([folder.directory])
    rounds = pd.read_csv(report_dir / "rounds.csv")
    assert rounds["diverged"].tolist() == [1, 1] and rounds["trials"].tolist() == [0, 0]
    assert rounds["test_acc_mean"].isna().all()
    assert pd.read_csv(report_dir / "summary.csv")["dense_test_acc"].isna().all()
    assert "**Diverged**" in (report_dir / "report.md").read_text()
    assert imp.summary_table(folder)["diverged"].tolist() == [1, 1]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def other_layers(path: Path) -> None:
    np.savez(path, fc9=np.ones((3, 3), np.float32))


def other_shapes(path: Path) -> None:
    with np.load(path) as saved:
        np.savez(path, **{name: np.ones((2, 2), np.float32) for name in saved.files})


def plain_keras_model(path: Path) -> None:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.save(path)


RUN_ARGS = ["--dataset", "mnist", "--arch", "lenet300_100", "--strategy", "all", "--rounds", "3", "--iterations",
            "60", "--eval-every", "30", "--train-subset", "600", "--no-tfmot-check", "--quiet"]


@pytest.mark.parametrize("damage, file, command, expected", [
    (truncate, "trial_0/magnitude_rewind/round_01/masks.npz", "run", "delete"),
    (plain_keras_model, "trial_0/magnitude_rewind/round_01/ticket_trained.keras", "run", "not a lottery_keras ticket"),
    (truncate, "trial_0/magnitude_rewind/round_01/ticket_trained.keras", "run", "delete"),
    (truncate, "trial_0/theta0.npz", "run", "recreated from the seed"),
    (other_layers, "trial_0/magnitude_rewind/round_01/masks.npz", "run", "does not hold one mask per masked layer"),
    (other_layers, "trial_0/theta0.npz", "run", "does not hold weights of this run's model"),
    (other_shapes, "trial_0/magnitude_rewind/round_01/masks.npz", "run", "does not hold one mask per masked layer"),
    (truncate, "trial_0/random_rewind/round_00/metrics.json", "report", "not valid JSON"),
    (truncate, "config.json", "report", "not valid JSON"),
    (lambda path: path.write_bytes(b"\x00\xff\xfe garbage"), "trial_0/random_rewind/results.csv", "report",
     "restore it from git"),
    (lambda path: path.write_text('{"experiment": {"dataset": "mnist"}, "hash": "x"}'), "config.json", "report",
     "does not describe a valid experiment"),
])
def test_a_damaged_run_folder_is_one_line_naming_the_file(finished_trial, tmp_path, capsys, damage, file, command,
                                                         expected):
    run_dir, _ = finished_trial
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    for metrics in copy.glob("trial_0/*/round_02/metrics.json"):
        metrics.unlink()  # round 2 must run again, from round 1's files
    if file == "trial_0/theta0.npz":
        shutil.rmtree(copy / "trial_0" / "magnitude_rewind" / "round_02")  # a rewinding round reads θ0 first
    damage(copy / file)
    args = [*RUN_ARGS, "--output-dir", str(tmp_path)] if command == "run" else ["report", str(copy)]
    code = cli.main(args)
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and str(copy / file) in err and expected in err


def test_a_second_process_on_the_same_run_is_told_it_is_in_use(tmp_path, capsys):
    folder = imp.prepare_run_folder(tiny_experiment(), tmp_path)
    with folder.lock():
        env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
        holder = subprocess.run([sys.executable, str(REPO / "run.py"), *RUN_ARGS, "--output-dir", str(tmp_path)],
                                capture_output=True, text=True, timeout=300, env=env)
    assert holder.returncode == 1 and holder.stderr.count("\n") == 1, holder.stderr
    assert f"{folder.directory} is in use by process {os.getpid()}" in holder.stderr
    with folder.lock():  # released: the next holder gets it
        pass


def test_leftovers_of_killed_writes_are_removed_and_files_follow_the_umask(finished_trial, tmp_path):
    run_dir, _ = finished_trial
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    leftovers = [copy / "trial_0" / ".tmp-theta0.abc.npz", copy / "trial_0" / "magnitude_rewind" / ".tmp-round_01"]
    leftovers[0].write_bytes(b"half")
    leftovers[1].mkdir()
    imp.run_experiment(tiny_experiment(), tmp_path, options=imp.RunOptions(strategies=["all"], verbose=False))
    assert not any(path.exists() for path in leftovers)
    mode = (copy / "config.json").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_a_full_disk_names_the_file_it_could_not_write(tmp_path, monkeypatch):
    from lottery_keras import storage

    def no_space(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", no_space)
    with pytest.raises(OSError, match=f"cannot write {tmp_path / 'x.json'}: No space left on device"):
        storage.write_json(tmp_path / "x.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_ctrl_c_at_any_moment_is_one_line(monkeypatch, capsys):
    def interrupted(prog):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["--dataset", "mnist", "--arch", "lenet5"]) == 130
    assert capsys.readouterr().err.strip().startswith("interrupted: finished rounds are saved")


@pytest.mark.parametrize("args", [["--output-dir", ""], ["--data-dir", " "], ["report", "x", "--output-dir", ""]])
def test_an_empty_folder_option_is_refused(args, capsys):
    argv = args if args[0] == "report" else ["--dataset", "mnist", "--arch", "lenet5", *args]
    with pytest.raises(SystemExit):
        cli.main(argv)
    assert "must name a folder" in capsys.readouterr().err
