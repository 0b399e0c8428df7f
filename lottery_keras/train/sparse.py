"""Training that gets cheaper as the ticket gets sparser: masked fully-connected networks on the native sparse
kernels (`nn/csrc/sparse_mlp.cc`).

For a round, `SparseMlpTrainer` packs each layer's surviving weights into CSR form, runs the steps between two
evaluations in one call of the native op (forward, backward and Adam over the surviving weights only, in the
compiled loop's exact batch order), and writes the weights back into the Keras model before the callbacks look
at it, so early stopping, evaluation and saved tickets are unchanged. Pruned weights stay exactly 0: they are not
stored. Results equal the dense path's up to float summation order (tests/test_sparse.py). The execution plan
chooses it for a round when the network's density is below `plan.SPARSE_BELOW_PERCENT`, set from the crossover
benchmarks/bench_sparse.py measured on the project's 2-core CPUs.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from lottery_keras.nn.models import MaskedModel
from lottery_keras.nn.native import native_ops
from lottery_keras.train.checkpoint import RoundCheckpoint
from lottery_keras.train.schedule import (LearningRateSchedule, chunk_ends, epoch_permutation, reset_optimizer,
                                          steps_per_epoch)


@dataclasses.dataclass(frozen=True)
class SparseLayer:
    """One layer's surviving positions in CSR form by input row, and where each value sits in the kernel."""

    rows: np.ndarray
    cols: np.ndarray
    row_ptr: np.ndarray
    shape: tuple[int, int]

    @classmethod
    def of(cls, mask: np.ndarray) -> "SparseLayer":
        rows, cols = np.nonzero(mask)  # row-major order: CSR by input row
        row_ptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=mask.shape[0]))]).astype(np.int32)
        return cls(rows, cols.astype(np.int32), row_ptr, tuple(mask.shape))

    def values(self, kernel: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(kernel[self.rows, self.cols], dtype=np.float32)

    def kernel(self, values: np.ndarray) -> np.ndarray:
        dense = np.zeros(self.shape, np.float32)
        dense[self.rows, self.cols] = values
        return dense


def supports(model: MaskedModel) -> bool:
    """Whether the model is a masked ReLU MLP on flattened float32 inputs (what the kernels compute)."""
    layers = model.masked_layers()
    return (all(layer.kind == "fc" for layer in layers) and model.dtype_policy.compute_dtype == "float32"
            and [layer.activation.__name__ for layer in layers] == ["relu"] * (len(layers) - 1) + ["linear"])


def density_percent(model: MaskedModel) -> float:
    masks = [keras.ops.convert_to_numpy(layer.mask) for layer in model.masked_layers()]
    return 100.0 * sum(float(mask.sum()) for mask in masks) / sum(mask.size for mask in masks)


class SparseMlpTrainer:
    """Trains a masked MLP on the native sparse kernels (see the module docstring); same interface as
    `loop.Trainer.train`."""

    def __init__(self, model: MaskedModel, x_train: np.ndarray, y_train: np.ndarray, batch_size: int):
        if not supports(model):
            raise ValueError(f"the sparse kernels train masked ReLU MLPs in float32, not {model.arch} "
                             f"({model.dtype_policy.name})")
        self.ops = native_ops()
        if self.ops is None:
            raise RuntimeError("the native kernels are not available here (see the warning above)")
        self.model, self.batch_size = model, batch_size
        self.x = tf.constant(x_train.reshape(len(x_train), -1), tf.float32)
        self.y = tf.constant(y_train, tf.int32)
        self.num_samples = int(x_train.shape[0])
        self.steps_per_epoch = steps_per_epoch(self.num_samples, batch_size)
        self._permutation_cache: dict[tuple[int, int], np.ndarray] = {}

    def _permutation(self, seed: int, epoch: int) -> np.ndarray:
        """One epoch's sample order, kept while its epoch spans two calls (an argsort of the training set)."""
        key = (seed, epoch)
        if key not in self._permutation_cache:
            self._permutation_cache = {key: epoch_permutation(seed, epoch, self.num_samples).numpy()}
        return self._permutation_cache[key]

    def batches(self, seed: int, first_step: int, num_steps: int) -> np.ndarray:
        """The sample indices [steps, batch] of steps first_step …, exactly as `loop.CompiledLoop` draws them."""
        steps = np.arange(first_step, first_step + num_steps)
        epochs, positions = np.divmod(steps, self.steps_per_epoch)
        out = np.empty((num_steps, self.batch_size), np.int32)
        for epoch in np.unique(epochs):
            permutation = self._permutation(seed, int(epoch))
            chosen = epochs == epoch
            starts = positions[chosen] * self.batch_size
            out[chosen] = permutation[starts[:, None] + np.arange(self.batch_size)]
        return out

    def train(self, iterations: int, eval_every: int, seed: int,
              callbacks: Sequence[keras.callbacks.Callback] = (), *, schedule: LearningRateSchedule | None = None,
              step_offset: int = 0, pause_at: Sequence[int] = (), checkpoint: RoundCheckpoint | None = None
              ) -> None:
        reset_optimizer(self.model)
        optimizer, layers = self.model.optimizer, self.model.masked_layers()
        if schedule is None:
            schedule = LearningRateSchedule(float(keras.ops.convert_to_numpy(optimizer.learning_rate)))
        callback_list = keras.callbacks.CallbackList(list(callbacks), model=self.model)
        self.model.stop_training = False
        callback_list.on_train_begin()
        structure = [SparseLayer.of(keras.ops.convert_to_numpy(layer.mask) > 0) for layer in layers]
        n = len(layers)
        shapes = [(len(s.cols),) for s in structure] * 2 + [tuple(layer.bias.shape) for layer in layers] * 2
        done, saved = (checkpoint.restore(self.model, callbacks, "sparse",
                                          {f"moment_{index}": shape for index, shape in enumerate(shapes)})
                       if checkpoint else (0, {}))
        values = [s.values(keras.ops.convert_to_numpy(layer.kernel)) for s, layer in zip(structure, layers)]
        biases = [keras.ops.convert_to_numpy(layer.bias).astype(np.float32) for layer in layers]
        moments = ([saved[f"moment_{index}"] for index in range(4 * n)] if saved else
                   [np.zeros_like(v) for v in values] * 2 + [np.zeros_like(b) for b in biases] * 2)
        adam = dict(beta1=float(optimizer.beta_1), beta2=float(optimizer.beta_2), epsilon=float(optimizer.epsilon))
        for end in chunk_ends(iterations, eval_every, pause_at):
            if end <= done:
                continue
            steps = np.arange(step_offset + done, step_offset + end)
            outputs = self.ops.lottery_sparse_mlp_steps(
                self.x, self.y, self.batches(seed, step_offset + done, end - done), tf.constant(done, tf.int64),
                schedule.at(steps),
                [s.row_ptr for s in structure], [s.cols for s in structure], values, biases,
                moments[:n], moments[n:2 * n], moments[2 * n:3 * n], moments[3 * n:], **adam)
            values, biases, moments = outputs[0], outputs[1], [*outputs[2], *outputs[3], *outputs[4], *outputs[5]]
            for s, layer, v, b in zip(structure, layers, values, biases):
                layer.kernel.assign(s.kernel(v.numpy()))
                layer.bias.assign(b)
            optimizer.iterations.assign(end)
            optimizer.learning_rate.assign(schedule.at([step_offset + end - 1])[0])
            done = end
            callback_list.on_train_batch_end(done - 1, {})
            if self.model.stop_training:
                break
            if checkpoint and done < iterations:
                checkpoint.maybe_save(self.model, done, callbacks,
                                      lambda: {f"moment_{index}": np.asarray(m) for index, m in enumerate(moments)})
        callback_list.on_train_end()
