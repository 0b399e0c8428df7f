"""Inputs that cannot run (issue #32): each is refused up front with one line naming the problem and the fix, never
a traceback from inside TensorFlow or Keras, nor accepted silently. One tiny real MNIST run is shared by the module
(for resume, report and export)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

import lottery_keras
from lottery_keras import cli, config
from lottery_keras.sparsity import PolynomialDecay
from lottery_keras.sparsity.layer import PruningError
from lottery_keras.storage import TEMPORARY_PREFIX

RUN = ["--dataset", "mnist", "--arch", "lenet300_100"]
TINY = ["--rounds", "1", "--iterations", "30", "--eval-every", "30", "--train-subset", "600",
        "--strategy", "magnitude_rewind", "--no-tfmot-check", "--no-fused-kernels", "--no-sparse-kernels",
        "--quiet"]  # no native kernels: a first build would say so on stderr


def one_line_error(argv: list[str], capsys) -> str:
    """What `run.py argv` prints on stderr, asserting that it exits 1 with one line and no traceback."""
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and err.startswith("error: "), (code, err)
    return err


def digits(mnist, tmp_path: Path, x=None, y=None, name: str = "digits") -> str:
    """A .npz of 300 real MNIST samples (or the given arrays) as `--data` takes it."""
    path = tmp_path / f"{name}.npz"
    np.savez(path, x_train=mnist.x_train[:300] if x is None else x, y_train=mnist.y_train[:300] if y is None else y)
    return str(path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("runs")
    assert cli.main([*RUN, *TINY, "--output-dir", str(output)]) == 0
    [directory] = output.iterdir()
    return directory


def test_iterations_beyond_the_bound_are_refused_at_once(tmp_path, capsys):
    err = one_line_error([*RUN, "--iterations", "99999999999999999999", "--rounds", "1", "--dry-run",
                          "--output-dir", str(tmp_path)], capsys)
    assert f"--iterations must be at most {config.MAX_ITERATIONS:,} per round" in err
    with pytest.raises(SystemExit) as refused:
        cli.main([*RUN, "--iterations", "1e12", "--rounds", "1", "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert refused.value.code == 2 and err.splitlines() == ["error: argument --iterations: '1e12' is not a whole "
                                                            "number", "`python run.py run --help` lists every option"]
    with pytest.raises(ValueError, match="--iterations must be at most"):
        config.from_preset("es667", "mnist", "lenet5", iterations=10**12)


def test_a_train_subset_beyond_the_training_split_is_refused(tmp_path, mnist, capsys):
    err = one_line_error([*RUN, "--train-subset", "99999999", "--dry-run", "--output-dir", str(tmp_path)], capsys)
    assert "--train-subset 99,999,999 exceeds the training split of mnist, which holds 55,000 samples" in err
    err = one_line_error(["--data", digits(mnist, tmp_path), "--arch", "lenet300_100", "--train-subset", "300",
                          "--dry-run", "--output-dir", str(tmp_path)], capsys)
    assert "exceeds the training split of digits, which holds 270 samples; give at most 270" in err


def test_data_of_strings_or_of_one_class_is_refused(tmp_path, mnist, capsys):
    text = digits(mnist, tmp_path, x=mnist.x_train[:300].astype(str), name="text")
    one_class = digits(mnist, tmp_path, y=np.full(300, 3), name="threes")
    for path, message in [(text, "the training data: the inputs are <U.* values, not numbers"),
                          (one_class, "the training data: every label is class 3; a classifier needs at least two")]:
        err = one_line_error(["--data", path, "--arch", "lenet300_100", "--dry-run", "--output-dir", str(tmp_path)],
                             capsys)
        assert re.search(message, err), err


def test_a_sparsity_that_goes_down_is_refused():
    with pytest.raises(ValueError, match="final_sparsity 0.1 is below initial_sparsity 0.9: pruned weights stay"):
        PolynomialDecay(0.9, 0.1, begin_step=0, end_step=100)


def test_api_arguments_of_the_wrong_type_are_a_type_error_naming_them(tmp_path, mnist):
    inputs = keras.Input((28, 28, 1))
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(inputs)))
    train = (mnist.x_train[:300], mnist.y_train[:300])
    for keyword, message in [(dict(rounds="2"), "rounds must be an int, not str '2'"),
                             (dict(learning_rate="0.1"), "learning_rate must be a number, not str '0.1'"),
                             (dict(iterations=True), "iterations must be an int, not bool True"),
                             (dict(augment="yes"), "augment must be a bool, not str 'yes'"),
                             (dict(lr_drops=[10.5]), r"lr_drops must be a list of ints, not list \[10.5\]")]:
        with pytest.raises(TypeError, match=f"find_ticket\\(\\): {message}"):
            lottery_keras.find_ticket(model, train, output_dir=tmp_path, verbose=False, **keyword)
    assert not list(tmp_path.iterdir())
    with pytest.raises(PruningError, match="pruning_schedule must be a lottery_keras schedule"):
        lottery_keras.prune_low_magnitude(model, "0.5")
    with pytest.raises(PruningError, match="layers must be layer names, one name or a predicate, not 5"):
        lottery_keras.prune_low_magnitude(model, layers=5)


def test_a_data_dir_that_is_missing_or_a_file_says_so(tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    for folder, problem in [(tmp_path / "absent", "does not exist"), (tmp_path / "a_file", "is a file, not a folder")]:
        err = one_line_error([*RUN, *TINY, "--data-dir", str(folder), "--output-dir", str(tmp_path / "out")], capsys)
        assert err.startswith(f"error: --data-dir {folder} {problem}; give the folder that holds mnist/"), err
    assert not (tmp_path / "out").exists()


def test_data_that_is_no_npz_says_so_not_pickle(tmp_path, capsys):
    (tmp_path / "noise.npz").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "notes.npz").write_text("x_train, y_train\n1, 2\n")
    for name in ("noise.npz", "notes.npz"):
        err = one_line_error(["--data", str(tmp_path / name), "--arch", "lenet300_100", "--dry-run"], capsys)
        assert f"{tmp_path / name} is not a valid .npz archive (not a zip file of arrays); save the arrays with " \
               "numpy.savez(" in err and "pickle" not in err


class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(10)

    def call(self, inputs):
        return self.dense(keras.ops.reshape(inputs, (-1, 784)))


def test_a_subclassed_model_file_says_it_is_not_supported(tmp_path, capsys):
    model = Subclassed()
    model(np.zeros((1, 28, 28, 1), np.float32))
    model.save(tmp_path / "sub.keras")
    err = one_line_error(["--model", str(tmp_path / "sub.keras"), "--dataset", "mnist", "--dry-run"], capsys)
    assert "holds a subclassed model (class Subclassed), which is not supported: rebuild it as a Sequential or " \
           "functional model" in err and "Could not locate class" not in err


def test_resuming_in_a_read_only_folder_says_so(run_dir, capsys):
    run_dir.chmod(0o555)
    try:
        if os.access(run_dir, os.W_OK):
            pytest.skip("chmod does not make folders read-only for this user (root)")
        err = one_line_error([*RUN, *TINY, "--output-dir", str(run_dir.parent)], capsys)
    finally:
        run_dir.chmod(0o755)
    assert err == (f"error: {run_dir} is read-only: the run cannot write its files there (its .lock first); make it "
                   f"writable (chmod -R u+w {run_dir}) or give a writable --output-dir")


def test_an_output_dir_that_is_a_file_says_so(run_dir, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    for command in (["report", str(run_dir)], ["study", str(run_dir)], ["export", str(run_dir)]):
        for output, which in [(blocker, blocker), (blocker / "sub", f"{blocker / 'sub'}: {blocker}")]:
            err = one_line_error([*command, "--output-dir", str(output)], capsys)
            assert err == f"error: --output-dir {which} is a file, not a folder; give a folder to write into (it is " \
                          "made if missing)", command


def test_argument_errors_are_one_line_and_where_the_help_is_without_the_usage_block(capsys):
    for argv, message, command in [
        ([*RUN, "--iterations", "ten"], "argument --iterations: 'ten' is not a whole number", "run "),
        ([*RUN, "--bogus", "1"], "unrecognized arguments: --bogus 1", "run "),
        (["--dataset", "imagenet"], "argument --dataset: invalid choice: 'imagenet' (choose from 'cifar-10', "
                                    "'cifar10', 'fashion', 'fashion-mnist', 'fashion_mnist', 'mnist')", "run "),
        (["report"], "the following arguments are required: RUN_DIR", "report "),
        (["report", "somewhere", "--bogus"], "unrecognized arguments: --bogus", "report "),
        (["deploy"], "'deploy' is not a command: choose one of run, report, study, export (with only options, "
                     "`run` is assumed)", ""),
    ]:
        with pytest.raises(SystemExit) as refused:
            cli.main(argv)
        assert refused.value.code == 2
        assert capsys.readouterr().err == f"error: {message}\n`python run.py {command}--help` lists every option\n"


def test_a_report_removes_what_a_killed_report_left(run_dir, tmp_path, capsys):
    report_dir = tmp_path / "report"
    report_dir.mkdir()
    stale = [report_dir / f"{TEMPORARY_PREFIX}accuracy.x1y2z3.svg", run_dir / "report" / f"{TEMPORARY_PREFIX}a.png"]
    for path in stale:
        path.parent.mkdir(exist_ok=True)
        path.touch()
    assert cli.main(["report", str(run_dir), "--output-dir", str(report_dir)]) == 0
    assert cli.main(["report", str(run_dir)]) == 0
    assert not any(path.exists() for path in stale) and (report_dir / "report.md").is_file()
    assert not list(report_dir.glob(f"{TEMPORARY_PREFIX}*"))


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of the shared run, to damage without spoiling it for the other tests."""
    copy = tmp_path / "runs" / run_dir.name
    shutil.copytree(run_dir, copy)
    return copy


def test_a_garbled_ticket_is_noticed_when_a_run_goes_on(run_dir, tmp_path, capsys):
    copy = copy_of(run_dir, tmp_path)
    ticket = copy / "trial_0" / "magnitude_rewind" / "round_00" / "ticket_init.keras"
    ticket.write_bytes(ticket.read_bytes()[:200])
    more = [arg if arg != "1" else "2" for arg in TINY]  # --rounds 2: round 1 goes on from round 0
    err = one_line_error([*RUN, *more, "--output-dir", str(copy.parent)], capsys)
    assert err.startswith(f"error: {ticket} is damaged: not a whole archive") and \
        err.endswith(f"delete {ticket.parent} and run the same command again to redo that round")
    assert not (ticket.parent.parent / "round_01").exists()


def test_every_reader_refuses_a_garbled_metrics_file_the_same_way(run_dir, tmp_path, capsys):
    copy = copy_of(run_dir, tmp_path)
    metrics = copy / "trial_0" / "magnitude_rewind" / "round_00" / "metrics.json"
    metrics.write_text('{"round": 0, "test_acc": ')
    want = f"error: {metrics} is damaged: not valid JSON"
    for argv in ([*RUN, *TINY, "--output-dir", str(copy.parent)], ["report", str(copy)], ["export", str(copy)]):
        err = one_line_error(argv, capsys)
        assert err.startswith(want) and err.endswith("run the same command again to redo that round"), argv
