"""The callbacks of a pruned model's `fit`: `UpdatePruningStep` makes the masks follow their schedules (tfmot's
role, under its name); `PruningSummaries` writes each layer's sparsity to TensorBoard (tfmot's name too)."""

from __future__ import annotations

import importlib.util

import keras

from lottery_keras.sparsity.layer import OPTIMIZER_APPLIES_MASKS, PruningError
from lottery_keras.sparsity.summary import pruned_layers, sparsity_report


class UpdatePruningStep(keras.callbacks.Callback):
    """Before each training step, updates the masks of every `PruneLowMagnitude` layer whose schedule prunes at
    that step (counted from the optimizer's iteration count when training starts, as tfmot does). The optimizer
    zeroes the pruned weights after each of its steps (`layer.MaskConstraint`; under JAX this callback does, after
    each step), so the weights at rest are the pruned ones."""

    def on_train_begin(self, logs=None):
        self._layers = pruned_layers(self.model)
        if not self._layers:
            raise PruningError("UpdatePruningStep: the model has no PruneLowMagnitude layer; wrap it with "
                               "lottery_keras.prune_low_magnitude first")
        if getattr(self.model, "steps_per_execution", 1) != 1:
            raise PruningError("UpdatePruningStep updates masks between steps: compile with steps_per_execution=1")
        for layer in self._layers:
            layer.updated_by_callback = True
            layer.apply_masks()  # weights set from outside since the last step
        if any(layer.refused_training for layer in self._layers):  # its tracing stopped half way: trace it anew
            self.model.make_train_function(force=True)
            for layer in self._layers:
                layer.refused_training = False
        self._step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_batch_begin(self, batch, logs=None):
        for layer in self._layers:
            layer.update_masks(self._step)

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if not OPTIMIZER_APPLIES_MASKS:
            self.model.jax_state_sync()  # JAX's fit holds the weights outside the variables between steps
            for layer in self._layers:
                layer.apply_masks()


class PruningSummaries(keras.callbacks.Callback):
    """Writes every pruned weight's sparsity, and the model's, to TensorBoard at the end of each epoch (scalars
    `sparsity/<layer>/<weight>` and `sparsity/total` in `log_dir`; needs tensorflow and tensorboard).

    Args:
        log_dir: The TensorBoard log folder.
    """

    def __init__(self, log_dir: str):
        super().__init__()
        self.log_dir = str(log_dir)
        self._writer = None

    def on_train_begin(self, logs=None):
        if importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("tensorboard") is None:
            raise PruningError("PruningSummaries writes TensorBoard logs with TensorFlow's summary writer: pip "
                               "install tensorflow tensorboard (or read lottery_keras.sparsity_report(model))")
        import tensorflow as tf

        self._writer = tf.summary.create_file_writer(self.log_dir)

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        table = sparsity_report(self.model)
        with self._writer.as_default():
            for row in table.itertuples():
                tag = "sparsity/total" if row.layer == "total" else f"sparsity/{row.layer}/{row.weight}"
                tf.summary.scalar(tag, row.sparsity, step=epoch)
        self._writer.flush()

    def on_train_end(self, logs=None):
        self._writer.close()
