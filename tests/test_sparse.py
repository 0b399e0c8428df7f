"""The native sparse kernels (`train/sparse.py`, `nn/csrc/sparse_mlp.cc`): the same training as the dense path on
real MNIST, pruned weights exactly 0, the plan's choice per round, and what a run records."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from lottery_keras import config
from lottery_keras.lottery import controller as imp
from lottery_keras.nn import models, native
from lottery_keras.storage import read_json
from lottery_keras.train import plan as execution
from lottery_keras.train import sparse
from lottery_keras.train.loop import Trainer, compile_model
from lottery_keras.train.schedule import LearningRateSchedule

pytestmark = pytest.mark.skipif(not native.available(), reason="no C++ compiler to build the native kernels")


def masked_lenet(density: float, input_shape) -> models.MaskedModel:
    model = models.build_model("lenet300_100", input_shape, seed=3)
    compile_model(model, 1.2e-3)
    rng = np.random.default_rng(4)
    model.set_masks({layer.name: (rng.random(layer.mask.shape) < density).astype(np.float32)
                     for layer in model.masked_layers()})
    return model


def weights(model) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v) for v in model.trainable_weights]


@pytest.mark.parametrize("density, batch", [(0.05, 60), (0.5, 60), (0.1, 32)])
def test_sparse_steps_train_the_same_weights_as_the_dense_loop(mnist_small, density, batch):
    """150 Adam steps on real MNIST, same seed and batches: batch 60 runs the unrolled kernels, 32 the general."""
    x, y = mnist_small.x_train, mnist_small.y_train
    dense, sparse_twin = masked_lenet(density, mnist_small.input_shape), masked_lenet(density, mnist_small.input_shape)
    masks = [keras.ops.convert_to_numpy(layer.mask) for layer in dense.masked_layers()]
    Trainer(dense, x, y, batch_size=batch, plan=execution.ExecutionPlan(jit_compile=True)).train(150, 50, 11)
    sparse.SparseMlpTrainer(sparse_twin, x, y, batch).train(150, 50, 11)
    for want, got in zip(weights(dense), weights(sparse_twin)):  # Adam's m/√v magnifies rounding on tiny gradients
        scale = float(np.abs(want).max())
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale)
    for layer, mask in zip(sparse_twin.masked_layers(), masks):
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        assert np.all(kernel[mask == 0] == 0.0)  # pruned weights are not stored, so exactly 0
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.mask), mask)
    assert int(sparse_twin.optimizer.iterations.numpy()) == 150


def test_sparse_steps_follow_the_schedule_and_the_rewind_offset_as_the_dense_loop(mnist_small):
    """Warm-up, a drop and a start 50 steps into the sample order: both paths take the same steps."""
    x, y = mnist_small.x_train, mnist_small.y_train
    dense, sparse_twin = masked_lenet(0.1, mnist_small.input_shape), masked_lenet(0.1, mnist_small.input_shape)
    schedule = LearningRateSchedule(2e-3, warmup=40, drops=(90,), factor=0.2)
    Trainer(dense, x, y, batch_size=60, plan=execution.ExecutionPlan(jit_compile=True)).train(
        100, 50, 11, schedule=schedule, step_offset=50)
    sparse.SparseMlpTrainer(sparse_twin, x, y, 60).train(100, 50, 11, schedule=schedule, step_offset=50)
    for want, got in zip(weights(dense), weights(sparse_twin)):
        np.testing.assert_allclose(got, want, rtol=0, atol=5e-5 * float(np.abs(want).max()))  # a higher rate
    for model in (dense, sparse_twin):  # the rate of the last step taken, step 149: after the drop
        assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(4e-4)


def steps_with(row_ptr: list[int], cols: list[int], step0=0, rates=(1e-3,)):
    """One step of a 3-input, 2-output single-layer network with the given CSR structure."""
    x, y = np.ones((4, 3), np.float32), np.zeros(4, np.int32)
    values, bias = np.ones(len(cols), np.float32), np.zeros(2, np.float32)
    return native.native_ops().lottery_sparse_mlp_steps(
        x, y, np.zeros((1, 2), np.int32), np.array(step0, np.int64), np.array(rates, np.float32),
        [np.array(row_ptr, np.int32)],
        [np.array(cols, np.int32)], [values], [bias], [np.zeros_like(values)], [np.zeros_like(values)],
        [np.zeros_like(bias)], [np.zeros_like(bias)])


def test_the_kernels_refuse_a_structure_that_does_not_fit():
    with pytest.raises(tf.errors.InvalidArgumentError, match="column 5 outside 0..1"):
        steps_with([0, 1, 1, 1], [5])
    with pytest.raises(tf.errors.InvalidArgumentError, match="must hold its 3 input rows"):
        steps_with([0, 1], [0])
    with pytest.raises(tf.errors.InvalidArgumentError, match="step0 must be a scalar"):
        steps_with([0, 1, 1, 1], [0], step0=[0, 1])
    with pytest.raises(tf.errors.InvalidArgumentError, match="one rate per step"):
        steps_with([0, 1, 1, 1], [0], rates=(1e-3, 1e-3))


def test_a_layer_with_no_surviving_weight_still_trains_its_bias():
    new_values, new_bias = steps_with([0, 0, 0, 0], [])[:2]
    assert new_values[0].shape == (0,) and np.all(new_bias[0].numpy() != 0)


def test_the_plan_runs_sparse_rounds_on_the_kernels_and_dense_rounds_on_the_loop(mnist_small):
    plan = execution.decide("lenet300_100", device="cpu")
    assert plan.sparse_kernels and "sparse kernels below 15% density" in plan.describe()
    for density, engine in ((0.5, "dense"), (0.1, "sparse")):
        model = masked_lenet(density, mnist_small.input_shape)
        trainer = Trainer(model, mnist_small.x_train, mnist_small.y_train, batch_size=60, plan=plan)
        trainer.train(20, 10, 0)
        assert trainer.last_engine == engine
    off = execution.decide("lenet300_100", device="cpu", sparse_kernels=False)
    model = masked_lenet(0.1, mnist_small.input_shape)
    trainer = Trainer(model, mnist_small.x_train, mnist_small.y_train, batch_size=60, plan=off)
    trainer.train(20, 10, 0)
    assert trainer.last_engine == "dense"
    with pytest.raises(ValueError, match="the sparse kernels train lenet300_100"):
        execution.decide("lenet5", device="cpu", sparse_kernels=True)


def test_an_imp_run_records_which_engine_trained_each_round(tmp_path):
    experiment = config.from_preset("es667", "mnist", "lenet300_100", rounds=3, iterations=60, eval_every=30,
                                    train_subset=600, prune_rate=0.9)  # 100, 10, 1 % remaining
    folder = imp.run_experiment(experiment, tmp_path, options=imp.RunOptions(check_tfmot=False, verbose=False))
    units = [folder.unit(0, "magnitude_rewind", r) for r in range(3)]
    assert [read_json(unit.metrics)["engine"] for unit in units] == ["dense", "sparse", "sparse"]
    ticket = keras.models.load_model(units[2].ticket_trained)
    for layer in ticket.masked_layers():
        mask = keras.ops.convert_to_numpy(layer.mask)
        assert np.all(keras.ops.convert_to_numpy(layer.kernel)[mask == 0] == 0.0)
    dense_only = imp.RunOptions(check_tfmot=False, verbose=False,
                                plan=execution.decide("lenet300_100", device="cpu", sparse_kernels=False))
    reference = imp.run_experiment(experiment, tmp_path / "dense", options=dense_only)
    for unit in units:  # the same rounds trained densely: the same results up to float rounding
        mine, theirs = read_json(unit.metrics), read_json(reference.unit(0, "magnitude_rewind", unit.round).metrics)
        assert theirs["engine"] == "dense" and mine["es_iteration"] == theirs["es_iteration"]
        assert mine["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-4)
        assert abs(mine["test_acc"] - theirs["test_acc"]) <= 0.1
