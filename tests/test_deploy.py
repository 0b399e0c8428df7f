"""Exporting a real (small) MNIST ticket: loading guards, mask stripping, TFLite formats and ticket lookup."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("LOTTERY_KERAS_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from lottery_keras import data  # noqa: E402
from lottery_keras.lottery import pruning  # noqa: E402
from lottery_keras.train import loop as training  # noqa: E402
from lottery_keras.config import from_preset  # noqa: E402
from lottery_keras.deploy.tflite import EXPORT_COLUMNS, FORMATS, export_ticket  # noqa: E402
from lottery_keras.deploy.tickets import compact, resolve_ticket, strip_masks  # noqa: E402
from lottery_keras.nn.saving import TicketError, load_ticket  # noqa: E402
from lottery_keras.lottery.paths import RunFolder  # noqa: E402
from lottery_keras.lottery.pruning import remaining_percent  # noqa: E402
from lottery_keras.nn.models import MaskedModel, build_model  # noqa: E402

TEST_IMAGES = 2000


@pytest.fixture(scope="module")
def splits() -> data.Splits:
    return data.load("mnist").head(train=20_000)


@pytest.fixture(scope="module")
def ticket(splits, tmp_path_factory) -> Path:
    """LeNet-300-100 trained 600 iterations, magnitude-pruned to 10% per layer, fine-tuned 300 more."""
    model = build_model("lenet300_100", (28, 28, 1), seed=0)
    training.compile_model(model, 1.2e-3)
    training.train(model, splits.x_train, splits.y_train, iterations=600, batch_size=60, eval_every=600, seed=0)
    kernels = {layer.name: keras.ops.convert_to_numpy(layer.kernel) for layer in model.masked_layers()}
    masks = model.get_masks()
    counts = {name: int(round(0.1 * mask.size)) for name, mask in masks.items()}
    model.set_masks(pruning.magnitude_prune(kernels, masks, counts))
    training.train(model, splits.x_train, splits.y_train, iterations=300, batch_size=60, eval_every=300, seed=1)
    path = tmp_path_factory.mktemp("ticket") / "ticket.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def model(ticket) -> MaskedModel:
    return load_ticket(ticket)


@pytest.fixture(scope="module")
def fresh_process(model, splits, tmp_path_factory) -> Iterator[subprocess.Popen]:
    """A new Python process that loads the mask-stripped model with plain Keras (never importing
    lottery_keras) and checks its logits; started early so its slow TensorFlow import overlaps the export."""
    folder = tmp_path_factory.mktemp("plain")
    strip_masks(model).save(folder / "plain.keras")
    x = splits.x_test[:200]
    np.save(folder / "x.npy", x)
    np.save(folder / "expected.npy", keras.ops.convert_to_numpy(model(x)))
    script = (
        "import sys, numpy as np, keras\n"
        f"model = keras.models.load_model({str(folder / 'plain.keras')!r})\n"
        f"x = np.load({str(folder / 'x.npy')!r}); expected = np.load({str(folder / 'expected.npy')!r})\n"
        "np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)), expected, atol=1e-5)\n"
        "assert not any(name.startswith('lottery_keras') for name in sys.modules)\n"
        "print('OK')\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], cwd=folder, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    yield process
    if process.poll() is None:
        process.kill()
        process.communicate()


@pytest.fixture(scope="module")
def table(ticket, splits, fresh_process) -> pd.DataFrame:
    return export_ticket(ticket, splits, test_limit=TEST_IMAGES)


# ------------------------------------------------------------------------------------------------- TFLite

def test_every_format_is_written_and_measured(table, ticket):
    assert list(table.columns[:len(EXPORT_COLUMNS)]) == EXPORT_COLUMNS
    assert list(table["format"]) == list(FORMATS)
    for row in table.itertuples():
        path = ticket.parent / row.file
        assert path.is_file() and path.stat().st_size == row.bytes
        assert 0 < row.gzip_bytes < row.bytes
        assert row.latency_ms > 0 and row.test_samples == TEST_IMAGES
    on_disk = pd.read_csv(ticket.parent / "export.csv")
    assert list(on_disk["format"]) == list(FORMATS)
    assert not list(ticket.parent.glob(".*"))  # no temporary files left behind


def test_tflite_accuracy_matches_keras(table):
    rows = table.set_index("format")
    assert rows.loc["float", "keras_test_acc"] > 90.0
    for fmt, tolerance in (("float", 0.5), ("sparse", 0.5), ("int8", 1.0)):
        assert abs(rows.loc[fmt, "test_acc"] - rows.loc[fmt, "keras_test_acc"]) <= tolerance, fmt
    assert rows.loc["float", "max_abs_logit_diff"] < 1e-4
    assert rows.loc["sparse", "max_abs_logit_diff"] < 1e-4
    assert rows.loc["float", "agreement"] >= 99.9 and rows.loc["sparse", "agreement"] >= 99.9
    assert rows.loc["int8", "agreement"] >= 98.0
    assert rows.loc["int8", "mean_abs_logit_diff"] < 0.25  # about half an output quantisation step


def test_sparse_files_are_smaller(table, model):
    assert remaining_percent(model.get_masks()) <= 20.0
    rows = table.set_index("format")
    assert rows.loc["sparse", "bytes"] < 0.5 * rows.loc["float", "bytes"]
    assert rows.loc["int8", "bytes"] < rows.loc["sparse", "bytes"]


def test_unknown_format_names_the_choices(ticket, splits):
    with pytest.raises(ValueError, match="float, sparse, int8"):
        export_ticket(ticket, splits, formats=("float", "fp16"))


# ------------------------------------------------------------------------------------------------- strip_masks

def test_strip_masks_is_a_plain_keras_model_with_identical_predictions(model, splits):
    plain = strip_masks(model)
    assert {type(layer).__module__.split(".")[0] for layer in plain.layers} == {"keras"}
    assert [type(layer).__name__ for layer in plain.layers] == ["InputLayer", "Flatten", "Dense", "Dense", "Dense"]
    for layer in model.masked_layers():
        kernel = keras.ops.convert_to_numpy(plain.get_layer(layer.name).kernel)
        np.testing.assert_array_equal(kernel == 0, keras.ops.convert_to_numpy(layer.mask) == 0)
    x = splits.x_test[:500]
    np.testing.assert_allclose(plain.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_stripped_model_loads_in_a_process_without_lottery_keras(fresh_process):
    stdout, stderr = fresh_process.communicate(timeout=180)
    assert fresh_process.returncode == 0, stderr[-3000:]
    assert stdout.strip().endswith("OK")


# ------------------------------------------------------------------------------------------------- load_ticket

def test_load_ticket_round_trip(model, ticket):
    assert isinstance(model, MaskedModel) and model.name == "lenet300_100"
    again = load_ticket(str(ticket))
    for a, b in zip(model.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)


def _expect_ticket_error(path: Path, reason: str) -> None:
    with pytest.raises(TicketError, match=reason) as caught:
        load_ticket(path)
    assert path.name in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_load_ticket_rejects_what_is_not_a_ticket(ticket, tmp_path):
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"this is not a zip archive\n" * 10)
    _expect_ticket_error(garbage, "not a zip")

    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(ticket.read_bytes()[: ticket.stat().st_size // 2])
    _expect_ticket_error(truncated, "truncated or corrupt")

    _expect_ticket_error(tmp_path / "missing.keras", "no such file")

    empty = tmp_path / "empty.keras"
    empty.write_bytes(b"")
    _expect_ticket_error(empty, "not a zip")

    other_zip = tmp_path / "other.keras"
    with zipfile.ZipFile(other_zip, "w") as archive:
        archive.writestr("readme.txt", "hello")
    _expect_ticket_error(other_zip, "not a Keras model file")

    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    plain.save(tmp_path / "plain.keras")
    _expect_ticket_error(tmp_path / "plain.keras", "not a lottery_keras ticket")

    _expect_ticket_error(tmp_path, "directory")


# ------------------------------------------------------------------------------------------------- resolve_ticket

def test_resolve_ticket(ticket, tmp_path):
    run = tmp_path / "mnist-lenet300_100-abc123"
    RunFolder(run).write_config(from_preset("es667", "mnist", "lenet300_100"))
    for round_index, finished in ((0, True), (1, True), (2, False)):
        directory = run / "trial_0" / "magnitude_rewind" / f"round_{round_index:02d}"
        directory.mkdir(parents=True)
        shutil.copy(ticket, directory / "ticket_trained.keras")
        if finished:
            (directory / "metrics.json").write_text(json.dumps({"round": round_index}))
    strategy_dir = run / "trial_0" / "magnitude_rewind"

    assert resolve_ticket(run) == strategy_dir / "round_01" / "ticket_trained.keras"
    assert resolve_ticket(run, round_index=0) == strategy_dir / "round_00" / "ticket_trained.keras"
    assert resolve_ticket(ticket) == ticket
    assert resolve_ticket(strategy_dir / "round_00") == strategy_dir / "round_00" / "ticket_trained.keras"
    assert isinstance(load_ticket(resolve_ticket(run)), MaskedModel)

    with pytest.raises(TicketError, match="finished rounds: 0, 1"):
        resolve_ticket(run, round_index=2)
    with pytest.raises(TicketError, match="magnitude_rewind"):
        resolve_ticket(run, strategy="random_rewind")
    with pytest.raises(TicketError, match="no trial 3; it holds trials 0"):
        resolve_ticket(run, trial=3)
    with pytest.raises(TicketError, match="not a round folder"):
        resolve_ticket(tmp_path / "mnist-lenet300_100-abc123" / "trial_0" / "magnitude_rewind" / "round_02"
                       / "..")  # a strategy directory is not a run directory
    with pytest.raises(TicketError, match="no such"):
        resolve_ticket(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TicketError, match="neither a ticket file nor a run directory"):
        resolve_ticket(tmp_path / "empty")


def test_export_command_writes_the_table(ticket, tmp_path, capsys):
    from lottery_keras import cli

    code = cli.main(["export", str(ticket), "--dataset", "mnist", "--formats", "float,sparse", "--test-limit", "300",
                     "--output-dir", str(tmp_path)])
    assert code == 0
    table = pd.read_csv(tmp_path / "export.csv")
    assert table["format"].tolist() == ["float", "sparse"]
    assert (tmp_path / f"{ticket.stem}_sparse.tflite").stat().st_size == table["bytes"][1]
    assert "sparse" in capsys.readouterr().out


def test_export_command_without_dataset_outside_a_run_is_a_clear_error(ticket, capsys):
    from lottery_keras import cli

    assert cli.main(["export", str(ticket), "--formats", "float"]) == 1
    assert "pass --dataset" in capsys.readouterr().err


def test_export_command_in_a_run_with_a_damaged_config_names_it(ticket, tmp_path, capsys):
    from lottery_keras import cli

    unit = tmp_path / "run" / "trial_0" / "magnitude_rewind" / "round_01"
    unit.mkdir(parents=True)
    shutil.copy(ticket, unit / "ticket_trained.keras")
    (tmp_path / "run" / "config.json").write_text('{"experiment": ')
    assert cli.main(["export", str(unit / "ticket_trained.keras"), "--formats", "float"]) == 1
    assert f"{tmp_path / 'run' / 'config.json'} is damaged: not valid JSON" in capsys.readouterr().err
    assert cli.main(["export", str(unit / "ticket_trained.keras"), "--formats", "float", "--dataset", "mnist",
                     "--test-limit", "100", "--output-dir", str(tmp_path / "out")]) == 0  # the data is named instead


# ------------------------------------------------------------------------------------------------- every round


def test_a_structured_ticket_exports_as_the_smaller_dense_network(model, splits):
    """Units without outgoing weights go: the same logits from a network with fewer parameters."""
    kernels = {layer.name: keras.ops.convert_to_numpy(layer.kernel) for layer in model.masked_layers()}
    structured = load_ticket_copy(model)
    first, second, output = kernels  # the masked layers' names, in forward order
    masks = pruning.structured_prune(kernels, structured.get_masks(), {first: 150, second: 60})
    structured.set_masks(masks)
    plain = strip_masks(structured)
    small = compact(plain)
    units = [layer.units for layer in small.layers if isinstance(layer, keras.layers.Dense)]
    read_by_output = masks[output].any(axis=1)  # of the 60, those the sparse output layer still reads
    read_by_those = masks[second][:, read_by_output].any(axis=1)  # of the 150, those that still feed them
    assert units == [int(read_by_those.sum()), int(read_by_output.sum()), 10]
    assert 140 < units[0] <= 150 and units[1] <= 60
    assert small.count_params() < plain.count_params() / 1.9
    assert all(isinstance(layer, (keras.layers.Dense, keras.layers.InputLayer, keras.layers.Flatten))
               for layer in small.layers)  # plain Keras layers: it loads without lottery_keras
    x = splits.x_test[:500]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(small(x)), keras.ops.convert_to_numpy(plain(x)),
                               atol=1e-5)


def load_ticket_copy(model: MaskedModel) -> MaskedModel:
    copy = model.__class__.from_config(model.get_config())
    copy.build((None, 28, 28, 1))
    copy.set_weights(model.get_weights())
    return copy


def test_export_all_rounds_writes_every_round_a_table_and_a_figure(tmp_path, capsys):
    from lottery_keras import cli

    run_args = ["--dataset", "mnist", "--arch", "lenet300_100", "--strategy", "structured", "--rounds", "3",
                "--iterations", "60", "--eval-every", "60", "--train-subset", "600", "--quiet", "--no-tfmot-check",
                "--output-dir", str(tmp_path)]
    assert cli.main(run_args) == 0
    run_dir = next(tmp_path.glob("mnist-lenet300_100-*"))
    code = cli.main(["export", str(run_dir), "--all-rounds", "--strategy", "structured", "--formats", "float,int8",
                     "--test-limit", "300"])
    assert code == 0, capsys.readouterr().err
    deploy = run_dir / "trial_0" / "structured" / "deploy"
    table = pd.read_csv(deploy / "deploy.csv")
    assert table["round"].tolist() == [0, 0, 1, 1, 2, 2] and table["format"].tolist() == ["float", "int8"] * 3
    dense = table[table["format"] == "float"]["parameters"]  # the smaller dense network, round by round
    assert dense.is_monotonic_decreasing and dense.iloc[-1] < dense.iloc[0]
    assert table[table["format"] == "int8"]["parameters"].nunique() == 1  # the sparse encodings keep the shapes
    assert (table["builtin_latency_ms"] > 0).all() and (table["latency_ms"] > 0).all()
    assert (deploy / "deploy.png").stat().st_size > 10_000 and (deploy / "round_02" / "round_02_int8.tflite").is_file()
    assert cli.main(["export", str(run_dir / "trial_0"), "--all-rounds", "--strategy", "structured"]) == 1
    assert "needs a run directory" in capsys.readouterr().err
