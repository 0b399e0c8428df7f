"""Lottery tickets for one's own Keras 3 model and data (`find_ticket`, `run.py --model/--data`): a residual model
with batch normalisation on MNIST arrays and MobileNetV2 on a CIFAR-10 `tf.data.Dataset`, through the controller the
built-in architectures use: IMP with rewinding and controls, resume, tickets that load, strip and export to
TFLite, reports, and one clear error for what cannot run."""

from __future__ import annotations

import json
import re

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import lottery_keras
from lottery_keras import cli, data
from lottery_keras.deploy.tflite import TFLiteRunner, export_model, to_tflite
from lottery_keras.lottery.paths import NETWORK, RunFolder
from lottery_keras.nn.network import MaskedNetwork, NetworkError, mask_network, network_fingerprint
from lottery_keras.storage import read_npz
from lottery_keras.train import evaluation

SHORT = dict(rounds=3, iterations=120, eval_every=40, verbose=False)


def residual_model(hidden: int = 64) -> keras.Model:
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    y = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="branch")(x)
    x = keras.layers.BatchNormalization(name="norm")(keras.layers.Add()([x, y]))
    x = keras.layers.Flatten()(keras.layers.MaxPooling2D()(x))
    x = keras.layers.Dropout(0.2)(keras.layers.Dense(hidden, activation="relu", name="hidden")(x))
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))


def arrays(splits: data.Splits, train: int = 3000, val: int = 500, test: int = 1000):
    return ((splits.x_train[:train], splits.y_train[:train]), (splits.x_val[:val], splits.y_val[:val]),
            (splits.x_test[:test], splits.y_test[:test]))


def metrics_mtimes(run_dir) -> dict:
    return {path: path.stat().st_mtime_ns for path in run_dir.rglob("metrics.json")}


def test_a_residual_model_gives_tickets_that_rewind_resume_load_and_export(tmp_path, mnist):
    found = lottery_keras.find_ticket(residual_model(), *arrays(mnist), output_dir=tmp_path, name="mnist3k",
                                      **SHORT)
    table = found.results
    assert sorted(table["strategy"].unique()) == ["magnitude_random", "magnitude_rewind", "random_rewind"]
    for strategy, rows in table.groupby("strategy"):
        np.testing.assert_allclose(rows.sort_values("round")["remaining"], [100.0, 70.0, 49.0], atol=0.01)
    assert (table.loc[table["round"] == 0, "test_acc"] > 80).all()

    # Every Dense and convolution layer is masked, in the network's order; batch normalisation is not.
    ticket = keras.models.load_model(found.ticket(round_index=2))
    assert isinstance(ticket, MaskedNetwork)
    assert list(ticket.get_masks()) == ["conv2d", "branch", "hidden", "logits"]
    assert ticket.layer_kinds()["logits"] == "output" and ticket.layer_kinds()["branch"] == "conv"
    for name, mask in ticket.get_masks().items():
        assert mask.mean() == pytest.approx(0.49, abs=0.01), name

    # Rewinding restores θ0 entirely: the surviving weights and the normalisation's moving statistics.
    theta0 = read_npz(RunFolder(found.run_dir).theta0(0))
    dense = keras.models.load_model(found.ticket(round_index=0))
    for sparse_variable, dense_variable in zip(ticket.state_variables(), dense.state_variables()):
        value, start = (keras.ops.convert_to_numpy(v) for v in (sparse_variable, dense_variable))
        if "kernel" in sparse_variable.path:
            value, start = value[value != 0], start[value != 0]
        np.testing.assert_array_equal(value, start, err_msg=sparse_variable.path)
    assert len(theta0) == len(dense.state_variables())
    trained = keras.models.load_model(found.ticket(round_index=2, trained=True))
    moving = [v for v in trained.state_variables() if "moving_mean" in v.path]
    assert moving and np.abs(keras.ops.convert_to_numpy(moving[0])).max() > 0  # training moved them

    # The same model built again, with the same data and settings, resumes: nothing is trained twice.
    before = metrics_mtimes(found.run_dir)
    again = lottery_keras.find_ticket(residual_model(), *arrays(mnist), output_dir=tmp_path, name="mnist3k",
                                      **SHORT)
    assert again.run_dir == found.run_dir and metrics_mtimes(found.run_dir) == before
    assert network_fingerprint(json.loads((found.run_dir / NETWORK).read_text())) == \
        network_fingerprint(mask_network(residual_model()).get_config())

    # A run stopped after its first round and resumed by another call ends as the uninterrupted one (dropout too).
    resumed = [lottery_keras.find_ticket(residual_model(), *arrays(mnist), output_dir=tmp_path / "resumed",
                                         name="mnist3k", **{**SHORT, "rounds": rounds}) for rounds in (1, 3)][-1]
    pd.testing.assert_frame_equal(resumed.results.drop(columns=["train_seconds", "ticket_init", "ticket_trained"]),
                                  table.drop(columns=["train_seconds", "ticket_init", "ticket_trained"]))

    # The trained ticket strips to plain Keras layers computing the same function, and runs as TFLite.
    plain = lottery_keras.strip_pruning(trained)
    assert {type(layer).__module__.split(".")[0] for layer in plain.layers} == {"keras"}
    x = mnist.x_test[:200]
    reference = keras.ops.convert_to_numpy(trained(x, training=False))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(plain(x, training=False)), reference, atol=1e-5)
    np.testing.assert_allclose(TFLiteRunner(to_tflite(plain, "float"), batch_size=200).predict(x), reference,
                               atol=1e-4)


def test_mobilenet_v2_ticket_from_a_tf_data_dataset(tmp_path, cifar10):
    model = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), alpha=0.35, classes=10,
                                           classifier_activation=None)
    train = tf.data.Dataset.from_tensor_slices((cifar10.x_train[:600], cifar10.y_train[:600])).batch(50)
    val = tf.data.Dataset.from_tensor_slices((cifar10.x_val[:200], cifar10.y_val[:200]))  # single samples
    found = lottery_keras.find_ticket(model, train, val, strategies=["magnitude_rewind"], rounds=2, iterations=20,
                                      eval_every=10, output_dir=tmp_path, name="cifar600", verbose=False)
    assert list(found.results["remaining"]) == pytest.approx([100.0, 70.0], abs=0.05)
    ticket = keras.models.load_model(found.ticket(trained=True))
    assert len(ticket.masked_layers()) == 53  # 35 convolutions, 17 depthwise, the classifier
    splits = data.own_splits("cifar", (cifar10.x_train[:600], cifar10.y_train[:600]),
                             (cifar10.x_val[:200], cifar10.y_val[:200]))
    table = export_model(ticket, splits, tmp_path / "export", formats=["float", "sparse"], test_limit=100,
                         latency_samples=5)
    assert (table["agreement"] >= 99).all() and np.allclose(table["remaining"], 70.0, atol=0.05)


def test_run_py_trains_a_model_file_on_an_npz_and_reports_and_exports_it(tmp_path, mnist, capsys):
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Dropout(0.1)(keras.layers.Dense(64, activation="relu", name="h")(keras.layers.Flatten()(inputs)))
    keras.Model(inputs, keras.layers.Dense(10, name="out")(x), name="my_mlp").save(tmp_path / "mlp.keras")
    (train, _, test) = arrays(mnist, train=2000, test=300)
    np.savez(tmp_path / "digits.npz", x_train=train[0], y_train=train[1], x_test=test[0], y_test=test[1])
    command = ["--model", str(tmp_path / "mlp.keras"), "--data", str(tmp_path / "digits.npz"), "--rounds", "2",
               "--iterations", "60", "--strategy", "core", "--output-dir", str(tmp_path / "out"), "--quiet"]
    assert cli.main(command) == 0
    [run_dir] = (tmp_path / "out").iterdir()
    assert run_dir.name.startswith("digits-my_mlp-") and (run_dir / NETWORK).is_file()
    experiment = RunFolder(run_dir).experiment()
    assert experiment.model and experiment.data and experiment.init == "own"
    assert experiment.eval_every == 1800 // 60  # one epoch of the 90 % left after the validation hold-out
    before = metrics_mtimes(run_dir)
    assert len(before) == 8 and cli.main(command) == 0 and metrics_mtimes(run_dir) == before
    assert cli.main(["report", str(run_dir)]) == 0
    assert "digits / my_mlp" in (run_dir / "report" / "report.md").read_text()
    assert cli.main(["export", str(run_dir), "--formats", "float"]) == 1
    assert "pass that file again with --data" in capsys.readouterr().err
    assert cli.main(["export", str(run_dir), "--data", str(tmp_path / "digits.npz"), "--formats", "float",
                     "--test-limit", "100"]) == 0
    assert cli.main(["--arch", "lenet300_100", "--data", str(tmp_path / "digits.npz"), "--rounds", "1",
                     "--iterations", "30", "--output-dir", str(tmp_path / "out"), "--quiet"]) == 0
    assert any(path.name.startswith("digits-lenet300_100-") for path in (tmp_path / "out").iterdir())


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(10)

    def call(self, inputs):
        return self.dense(inputs)


def _softmax_model():
    inputs = keras.Input((28, 28, 1))
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(inputs)))


def _subclassed():
    model = Subclassed()
    model(np.zeros((1, 4), np.float32))
    return model


def _ending(operation) -> keras.Model:
    inputs = keras.Input((28, 28, 1))
    return keras.Model(inputs, operation(keras.layers.Dense(10)(keras.layers.Flatten()(inputs))))


def _nested():
    block = keras.Sequential([keras.Input((784,)), keras.layers.Dense(32)])
    inputs = keras.Input((28, 28, 1))
    return keras.Model(inputs, keras.layers.Dense(10)(block(keras.layers.Flatten()(inputs))))


def _adapted():
    norm = keras.layers.Normalization()
    norm.adapt(np.random.default_rng(0).normal(size=(50, 28, 28, 1)))
    inputs = keras.Input((28, 28, 1))
    return keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(norm(inputs))))


@pytest.mark.parametrize("make, message", [
    (_subclassed, "needs a Sequential or functional model"),
    (_softmax_model, "ends in a softmax"),
    (lambda: _ending(keras.ops.softmax), "ends in a softmax"),
    (lambda: _ending(keras.layers.Activation("sigmoid")), "ends in a sigmoid"),
    (lambda: keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten()]), "has no layer to prune"),
    (_nested, "holds the model .* as a layer"),
    (lambda: _ending(keras.layers.Lambda(lambda x: 2 * x)), "is a Lambda layer"),
    (_adapted, "holds state adapted to data"),
])
def test_models_that_cannot_give_tickets_are_one_clear_error(make, message):
    with pytest.raises(NetworkError, match=message):
        mask_network(make())


def test_data_and_settings_that_cannot_run_are_one_clear_error(tmp_path, mnist, cifar10, capsys):
    model = residual_model()
    (x, y), val, test = arrays(mnist, train=300, val=100, test=100)
    cases = [
        (dict(train=(x, y[:-1])), data.DataError, "300 inputs but 299 labels"),
        (dict(train=(x, y + 10)), ValueError, "labels go up to 19, but model .* has 10 outputs"),
        (dict(train=(cifar10.x_train[:300], cifar10.y_train[:300]), validation=None, test=None), ValueError,
         r"takes inputs of shape \(28, 28, 1\), but .* have shape \(32, 32, 3\)"),
        (dict(train=tf.data.Dataset.from_tensor_slices((x, y)).repeat()), data.DataError, "repeats forever"),
        (dict(strategies=["structured"]), ValueError, "structured strategy follows units"),
        (dict(robustness=True, train=(x.reshape(300, -1), y), validation=None, test=None), ValueError,
         r"--robustness corrupts images \(height, width, channels\); the .* samples have shape \(784,\)"),
        (dict(batch_size=5000), ValueError, "batch size 5000 exceeds"),
        (dict(train=(x, np.array(["a"] * 300))), data.DataError, "labels must be class indices"),
        (dict(train=(x, np.full(300, 2**31))), data.DataError, "class indices below 1,000,000"),
        (dict(train=(x, np.full((300, 10), 0.1))), data.DataError, "must be one-hot rows"),
        (dict(train=(x[:1], y[:1]), validation=None), data.DataError, "one training sample cannot also give"),
        (dict(train=(np.where(np.arange(300)[:, None, None, None] == 7, np.nan, x), y)), data.DataError,
         "784 input values are NaN"),
        (dict(augment=True, train=(x.reshape(300, -1), y), validation=None, test=None), ValueError,
         "augmentation crops and flips images"),
        (dict(model=_subclassed()), NetworkError, "needs a Sequential or functional model"),
    ]
    for overrides, error, message in cases:
        arguments = dict(model=model, train=(x, y), validation=val, test=test, rounds=1, iterations=5,
                         output_dir=tmp_path, verbose=False)
        with pytest.raises(error, match=message):
            lottery_keras.find_ticket(**{**arguments, **overrides})
    assert not list(tmp_path.iterdir())  # refused before any run folder was made
    np.savez(tmp_path / "wrong.npz", images=x, labels=y)
    np.savez(tmp_path / "tiny_images.npz", x_train=x[:, :8, :8], y_train=y)
    (tmp_path / "truncated.npz").write_bytes((tmp_path / "wrong.npz").read_bytes()[:5000])
    (tmp_path / "not_a_model.keras").write_text("hello")
    _ending(keras.layers.Lambda(lambda x: 2 * x)).save(tmp_path / "lambda.keras")
    for argv, message in [
        (["--arch", "lenet5", "--data", str(tmp_path / "wrong.npz")], "must hold arrays named x_train"),
        (["--model", str(tmp_path / "not_a_model.keras"), "--dataset", "mnist"], "is not a .keras model file"),
        (["--model", str(tmp_path / "lambda.keras"), "--dataset", "mnist"], "holds a Lambda layer"),
        (["report", str(tmp_path / "absent")], "absent: no such folder"),
        (["--model", str(tmp_path / "absent.keras"), "--dataset", "mnist"], "no such file"),
        (["--arch", "lenet5"], "give one of --dataset NAME"),
        (["--arch", "lenet5", "--data", str(tmp_path / "tiny_images.npz")], "needs images of at least 12×12"),
        (["--arch", "lenet5", "--data", str(tmp_path / "truncated.npz")], "is not a readable .npz archive"),
        (["--dataset", "mnist", "--arch", "lenet5", "--layers", "fc1"], "use it with --model"),
        (["--data", str(tmp_path / "wrong.npz"), "--arch", "lenet5", "--preset", "frankle2019"],
         "es667 protocol applies"),
    ]:
        assert cli.main([*argv, "--output-dir", str(tmp_path / "out")]) == 1, argv
        assert re.search(message, capsys.readouterr().err), argv


def test_robustness_on_images_of_ones_own_scales_each_channel_from_its_training_range(tmp_path, mnist):
    """Digits as raw 0–255 pixels: corruptions act on the training range mapped onto [0, 1], so σ 0.32 noise is
    a third of the range, not a third of a grey level."""
    spec = data.DATASETS["mnist"]
    (x, y), val, test = arrays(mnist, train=1200, val=200, test=300)
    raw = [(255 * (images * spec.std[0] + spec.mean[0]), labels) for images, labels in ((x, y), val, test)]
    scale = evaluation.Normalisation.spanning(raw[0][0])
    np.testing.assert_allclose(scale.to_pixels(raw[0][0]).min(), 0, atol=1e-6)
    np.testing.assert_allclose(scale.to_pixels(raw[0][0]).max(), 1, atol=1e-6)
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Rescaling(1 / 255),
                              keras.layers.Conv2D(8, 5, activation="relu"), keras.layers.MaxPooling2D(4),
                              keras.layers.Flatten(), keras.layers.Dense(10)], name="raw_cnn")
    found = lottery_keras.find_ticket(model, *raw, strategies=["magnitude_rewind"], rounds=2, iterations=200,
                                      eval_every=100, robustness=True, output_dir=tmp_path, name="raw",
                                      verbose=False)
    table = found.results
    assert table[["corruption_acc", "adversarial_acc"]].notna().all().all()
    assert (table["adversarial_acc"] < table["final_test_acc"]).all()
    scores = pd.read_csv(RunFolder(found.run_dir).unit(0, "magnitude_rewind", 1).robustness)
    assert len(scores) == 12
    noisiest = scores.query("corruption == 'gaussian_noise' and severity == 3")["test_acc"].item()
    assert noisiest < table["final_test_acc"].iloc[-1] - 5
    assert cli.main(["report", str(found.run_dir)]) == 0
    assert "each channel's training range onto [0, 1]" in (found.run_dir / "report" / "report.md").read_text()


def test_the_fingerprint_names_the_architecture_not_its_names_or_seeds():
    first, second = (mask_network(residual_model()).get_config() for _ in range(2))
    assert first["network"]["config"]["name"] != second["network"]["config"]["name"]  # Keras numbers them
    assert network_fingerprint(first) == network_fingerprint(second)
    assert network_fingerprint(mask_network(residual_model(hidden=32)).get_config()) != network_fingerprint(first)
    assert network_fingerprint(mask_network(residual_model(), layers=["hidden"]).get_config()) != \
        network_fingerprint(first)


def test_the_output_rate_goes_to_the_layer_computing_the_logits():
    inputs = keras.Input((16,))
    trunk = keras.layers.Dense(32, activation="relu", name="trunk")(inputs)
    side = keras.layers.Dense(32, name="side")(trunk)  # a later branch, summed into the trunk before the logits
    logits = keras.layers.Dense(10, name="logits")(keras.layers.Add()([trunk, keras.layers.Dense(32)(side)]))
    kinds = mask_network(keras.Model(inputs, logits)).layer_kinds()
    assert kinds["logits"] == "output" and list(kinds.values()).count("output") == 1
    summed = keras.layers.Add()([keras.layers.Dense(10, name="a")(inputs), keras.layers.Dense(10, name="b")(inputs)])
    assert "output" not in mask_network(keras.Model(inputs, summed)).layer_kinds().values()


def test_a_sequential_conv1d_model_on_sequences(tmp_path, mnist):
    """Rows of MNIST digits as sequences of 28 steps: a Sequential Conv1D model, the strategy group `core`."""
    model = keras.Sequential([keras.Input((28, 28)), keras.layers.Conv1D(16, 3, activation="relu"),
                              keras.layers.GlobalMaxPooling1D(), keras.layers.Dense(10)], name="rows")
    (x, y), val, test = arrays(mnist, train=1200, val=200, test=200)
    found = lottery_keras.find_ticket(model, (x[..., 0], y), (val[0][..., 0], val[1]), (test[0][..., 0], test[1]),
                                      strategies="core", rounds=2, iterations=40, eval_every=20,
                                      output_dir=tmp_path, name="rows", verbose=False)
    assert found.run_dir.name.startswith("rows-rows-")
    assert sorted(found.results["strategy"].unique()) == ["magnitude_random", "magnitude_rewind", "random_rewind",
                                                          "reinit_chain"]
    ticket = keras.models.load_model(found.ticket(round_index=1))
    assert list(ticket.layer_kinds().values()) == ["conv", "output"]
    assert all(mask.mean() == pytest.approx(0.7, abs=0.01) for mask in ticket.get_masks().values())
