"""`UpdatePruningStep`: the callback that makes a pruned model's masks follow their schedules during `fit`, in
tfmot's role (and under its name)."""

from __future__ import annotations

import keras

from lottery_keras.sparsity.wrapper import PruningError, pruned_layers


class UpdatePruningStep(keras.callbacks.Callback):
    """Before each training step, updates the masks of every `PruneLowMagnitude` layer whose schedule prunes at
    that step (the step is the optimizer's iteration count); after it, zeroes the pruned weights the optimizer
    moved (the layers zero them before every call too), so the weights at rest are the pruned ones."""

    def on_train_begin(self, logs=None):
        if not pruned_layers(self.model):
            raise PruningError("UpdatePruningStep: the model has no PruneLowMagnitude layer; wrap it with "
                               "lottery_keras.prune_low_magnitude first")
        if getattr(self.model, "steps_per_execution", 1) != 1:
            raise PruningError("UpdatePruningStep updates masks between steps: compile with steps_per_execution=1")

    def on_train_batch_begin(self, batch, logs=None):
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        for layer in pruned_layers(self.model):
            layer.update_mask(step)

    def on_train_batch_end(self, batch, logs=None):
        for layer in pruned_layers(self.model):
            layer.apply_mask()
