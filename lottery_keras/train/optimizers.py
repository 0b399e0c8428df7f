"""Adam with TensorFlow's fused update kernel.

Keras's `Adam.update_step` is about fifteen small operations per variable (powers, casts, two moment updates,
the division); TensorFlow runs each as its own kernel. For LeNet-5's ten variables that is over a hundred
operations per training step, a tenth of the step on a 2-core CPU (benchmarks/bench_train.py). `FusedAdam` does
the same arithmetic in one `ResourceApplyAdam` kernel per variable:

    m ← m + (g − m)(1 − β1),   v ← v + (g² − v)(1 − β2),   θ ← θ − α·m / (√v + ε),   α = lr·√(1 − β2ᵗ) / (1 − β1ᵗ)

which is Keras's formula, operation for operation. Other backends, and AMSGrad, keep Keras's own update.

Outside a distribution strategy, each variable is also updated as soon as its own gradient exists. Keras first
all-reduces the gradients; on one device that is an identity, but a single one for all of them (an `IdentityN`
op), so every update waits for the last gradient of the backward pass, the first layer's. Without it, the dense
layers' updates overlap the convolutions' backward pass instead of lengthening the step.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops


@keras.saving.register_keras_serializable(package="lottery_keras")
class FusedAdam(keras.optimizers.Adam):
    """`keras.optimizers.Adam` with one fused kernel per variable update on the TensorFlow backend."""

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if self._keras_update() or tf.distribute.has_strategy():
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        scalars = {}  # the step's β powers, learning rate, … per variable dtype, computed once
        for gradient, variable in zip(grads, trainable_variables):
            if variable.dtype not in scalars:
                scalars[variable.dtype] = self._scalars(learning_rate, variable.dtype)
            self._apply(gradient, variable, scalars[variable.dtype])

    def update_step(self, gradient, variable, learning_rate):
        if self._keras_update():
            return super().update_step(gradient, variable, learning_rate)
        self._apply(gradient, variable, self._scalars(learning_rate, variable.dtype))

    def _keras_update(self) -> bool:
        return self.amsgrad or keras.backend.backend() != "tensorflow"

    def _scalars(self, learning_rate, dtype) -> dict:
        step = ops.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = ops.cast(self.beta_1, dtype), ops.cast(self.beta_2, dtype)
        return {"beta1_power": ops.power(beta_1, step), "beta2_power": ops.power(beta_2, step),
                "lr": ops.cast(learning_rate, dtype), "beta1": beta_1, "beta2": beta_2,
                "epsilon": ops.cast(self.epsilon, dtype)}

    def _apply(self, gradient, variable, scalars: dict) -> None:
        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(var=variable.handle, m=self._momentums[index].handle,
                                     v=self._velocities[index].handle,
                                     grad=ops.cast(gradient, variable.dtype), **scalars)
