"""Training a masked model for a fixed number of iterations, fast.

The compiled loop keeps the whole training split on the device and runs `eval_every` steps per host round-trip
inside one `tf.function`: each step draws its batch from an on-device, per-epoch permutation (stateless RNG keyed
by seed and epoch, so any step's batch is reproducible and a run can resume anywhere), optionally augments it on
the device, and calls the model's own `train_step` (optimizer update, then masks). Whether the function is
XLA-compiled, and how the model's forward pass runs (fused kernels, batch shards), is the execution plan's
choice (`plan.py`). Callbacks see the same `on_train_batch_end` calls as under `fit`, once per chunk, with the
step count read from the optimizer.

With the plan's sparse kernels, a round of a masked MLP whose density is below the plan's crossover runs on
`sparse.SparseMlpTrainer` instead: the same schedule (`schedule.py`) over the surviving weights only.

The plan's `loop="keras"` runs stock `keras.Model.fit` on numpy arrays with the same `train_step` and callbacks:
the reference the compiled loop is tested and benchmarked against.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from lottery_keras.nn.models import MaskedModel
from lottery_keras.train import plan as execution
from lottery_keras.train import sparse
from lottery_keras.train.checkpoint import RoundCheckpoint
from lottery_keras.train.optimizers import FusedAdam
from lottery_keras.train.schedule import (LearningRateSchedule, chunk_ends, epoch_permutation, reset_optimizer,
                                          steps_per_epoch)


def compile_model(model: MaskedModel, learning_rate: float, epsilon: float = 1e-8) -> None:
    """Attach Adam (`FusedAdam`: Keras's arithmetic in one kernel per variable) and the cross-entropy loss, and
    create the optimizer's slots up front (so compiled functions never create variables)."""
    model.compile(optimizer=FusedAdam(learning_rate, epsilon=epsilon),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.optimizer.build(model.trainable_variables)


def augment_crop_flip(images: tf.Tensor, seed: tf.Tensor, pad: int = 4) -> tf.Tensor:
    """Per-image random crop (zero padding of `pad` pixels) and random horizontal flip, on the device."""
    batch, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
    offsets = tf.random.stateless_uniform([batch, 2], seed=seed, maxval=2 * pad + 1, dtype=tf.int32)
    flips = tf.random.stateless_uniform([batch], seed=seed + 1, maxval=2, dtype=tf.int32)
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    rows = offsets[:, :1] + tf.range(height)[None]
    cols = offsets[:, 1:] + tf.range(width)[None]
    cols = tf.where(flips[:, None] > 0, tf.reverse(cols, axis=[1]), cols)
    cropped = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(cropped, cols, axis=2, batch_dims=1)


class CompiledLoop:
    """Runs training steps of one model on device-resident data, many per call (see the module docstring)."""

    def __init__(self, model: MaskedModel, x_train: np.ndarray, y_train: np.ndarray, batch_size: int,
                 augment: bool = False, jit_compile: bool = False):
        if jit_compile and model.execution.fused_conv_pool:
            raise ValueError("the model runs the fused conv-pool kernels, custom operations that XLA cannot "
                             "compile: build it without them, or train without jit_compile")
        self.model = model
        self.jit_compile = jit_compile
        self.x = tf.constant(x_train)
        self.y = tf.constant(y_train)
        self.batch_size = batch_size
        self.augment = augment
        self.num_samples = int(x_train.shape[0])
        self.steps_per_epoch = steps_per_epoch(self.num_samples, batch_size)
        self._perm = tf.Variable(tf.zeros([self.num_samples], tf.int32), trainable=False)
        self._run = tf.function(self._run_steps, jit_compile=self.jit_compile)

    def run(self, seed: int, first_step: int, num_steps: int, rates: tf.Tensor | None = None) -> None:
        """Run steps first_step … first_step + num_steps − 1 of the schedule keyed by `seed`, step s at rate
        `rates[s]` (`LearningRateSchedule.table`; default: the optimizer's current rate)."""
        if rates is None:
            rates = tf.reshape(tf.cast(self.model.optimizer.learning_rate, tf.float32), [1])
        self._run(tf.constant(seed, tf.int64), tf.constant(first_step, tf.int64), tf.constant(num_steps, tf.int64),
                  rates)

    def _run_steps(self, seed, first_step, num_steps, rates):
        spe = tf.constant(self.steps_per_epoch, tf.int64)
        self._perm.assign(epoch_permutation(seed, first_step // spe, self.num_samples))
        # A while loop on tensors, not tf.range: XLA would otherwise compile anew for every (first, count) pair.
        step, last = first_step, first_step + num_steps
        while step < last:
            position = step % spe
            if position == 0 and step != first_step:
                self._perm.assign(epoch_permutation(seed, step // spe, self.num_samples))
            # tf.slice keeps the batch size static; a Python slice with tensor bounds becomes a dynamic shape
            # that XLA pads to the whole training set.
            index = tf.slice(self._perm, [tf.cast(position, tf.int32) * self.batch_size], [self.batch_size])
            images = tf.gather(self.x, index)
            if self.augment:
                images = augment_crop_flip(images, tf.stack([seed, step]))
            self.model.optimizer.learning_rate.assign(rates[tf.minimum(step, tf.size(rates, tf.int64) - 1)])
            self.model.train_step((images, tf.gather(self.y, index)))
            step += 1


def plan_for(model: MaskedModel) -> execution.ExecutionPlan:
    """The default plan for a model as built: the tables' loop and XLA choice for its architecture, and the
    forward pass the model was built with."""
    default = execution.decide(model.arch, fused_kernels=False, batch_shards=1)
    jit = default.jit_compile and not model.execution.fused_conv_pool
    return dataclasses.replace(default, jit_compile=jit, fused_kernels=model.execution.fused_conv_pool,
                               sparse_kernels=default.sparse_kernels and sparse.supports(model),
                               batch_shards=model.execution.batch_shards)


class Trainer:
    """Trains one compiled masked model on one training split, round after round, as `plan` says (default:
    `plan_for(model)`). The compiled loop is traced once and reused; each `train` call starts from a fresh
    optimizer state and the model's current weights."""

    def __init__(self, model: MaskedModel, x_train: np.ndarray, y_train: np.ndarray, *, batch_size: int,
                 augment: bool = False, plan: execution.ExecutionPlan | None = None):
        plan = plan or plan_for(model)
        if plan.model_execution != model.execution:
            raise ValueError(f"the plan runs the forward pass as {plan.model_execution}, the model was built for "
                             f"{model.execution}: build it with build_model(..., execution=plan.model_execution)")
        if augment and plan.loop == "keras":
            raise ValueError("augmentation runs on the device in the compiled loop; use loop='compiled'")
        self.model, self.x_train, self.y_train = model, x_train, y_train
        self.batch_size, self.plan = batch_size, plan
        self._compiled = (CompiledLoop(model, x_train, y_train, batch_size, augment, plan.jit_compile)
                          if plan.loop == "compiled" else None)
        self._sparse = None
        if plan.sparse_kernels:
            if augment or not sparse.supports(model):
                raise ValueError("the plan's sparse kernels train masked float32 MLPs without augmentation; "
                                 "decide the plan with sparse_kernels=False")
            self._sparse = sparse.SparseMlpTrainer(model, x_train, y_train, batch_size)
        self.last_engine: str | None = None  # which path ran the last `train` call: 'dense' or 'sparse'

    def train(self, iterations: int, eval_every: int, seed: int,
              callbacks: Sequence[keras.callbacks.Callback] = (), *, schedule: LearningRateSchedule | None = None,
              step_offset: int = 0, pause_at: Sequence[int] = (), checkpoint: RoundCheckpoint | None = None
              ) -> None:
        """Run `iterations` steps from a fresh optimizer. Callbacks get `on_train_begin`, `on_train_batch_end`
        at least at every multiple of `eval_every`, at each step of `pause_at` and at the last step
        (`model.optimizer.iterations` says which step), and `on_train_end`.

        `schedule` gives each step's learning rate (default: the optimizer's rate, constant). With
        `step_offset` K the steps are steps K … K + iterations − 1 of the sample order and of the schedule
        (training resumed from a rewind point); the optimizer and the callbacks still count from 0. With a
        `checkpoint`, training goes on from it if it has one and saves it now and then (not under `fit`)."""
        if iterations < 1 or eval_every < 1:
            raise ValueError(f"iterations ({iterations}) and eval_every ({eval_every}) must be at least 1")
        if schedule is None:
            schedule = LearningRateSchedule(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
        if self._sparse is not None and sparse.density_percent(self.model) < execution.SPARSE_BELOW_PERCENT:
            self.last_engine = "sparse"
            return self._sparse.train(iterations, eval_every, seed, callbacks, schedule=schedule,
                                      step_offset=step_offset, pause_at=pause_at, checkpoint=checkpoint)
        self.last_engine = "dense"
        reset_optimizer(self.model)
        if self._compiled is None:
            if step_offset:
                raise ValueError("keras.Model.fit cannot start inside an epoch's sample order: train from a "
                                 "rewind point with the compiled loop")
            _train_with_fit(self.model, self.x_train, self.y_train, iterations, self.batch_size, seed,
                            [_ScheduleRates(schedule), *callbacks])
            return
        callback_list = keras.callbacks.CallbackList(list(callbacks), model=self.model)
        self.model.stop_training = False
        callback_list.on_train_begin()
        done = checkpoint.restore(self.model, callbacks, "dense")[0] if checkpoint else 0
        rates = tf.constant(schedule.table(step_offset + iterations))
        for end in chunk_ends(iterations, eval_every, pause_at):
            if end <= done:
                continue
            self._compiled.run(seed, step_offset + done, end - done, rates)
            done = end
            callback_list.on_train_batch_end(done - 1, {})
            if self.model.stop_training:
                break
            if checkpoint and done < iterations:
                checkpoint.maybe_save(self.model, done, callbacks)
        callback_list.on_train_end()


def train(model: MaskedModel, x_train: np.ndarray, y_train: np.ndarray, *, iterations: int, batch_size: int,
          eval_every: int, seed: int, callbacks: Sequence[keras.callbacks.Callback] = (), augment: bool = False,
          plan: execution.ExecutionPlan | None = None) -> None:
    """Train a compiled masked model once (see `Trainer` to train the same model repeatedly)."""
    Trainer(model, x_train, y_train, batch_size=batch_size, augment=augment, plan=plan).train(
        iterations, eval_every, seed, callbacks)


class _ScheduleRates(keras.callbacks.Callback):
    """Sets the optimizer's learning rate before each step under `fit`, as the compiled loop does in its graph."""

    def __init__(self, schedule: LearningRateSchedule):
        super().__init__()
        self.schedule = schedule

    def on_train_batch_begin(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        self.model.optimizer.learning_rate.assign(self.schedule.at([step])[0])


class _StopAfter(keras.callbacks.Callback):
    def __init__(self, iterations: int):
        super().__init__()
        self.iterations = iterations

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations) >= self.iterations:
            self.model.stop_training = True


def _train_with_fit(model, x_train, y_train, iterations, batch_size, seed, callbacks) -> None:
    keras.utils.set_random_seed(seed)
    epochs = math.ceil(iterations / steps_per_epoch(len(x_train), batch_size))
    model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0,
              callbacks=[*callbacks, _StopAfter(iterations)])
