"""Adam with TensorFlow's fused update kernel.

Keras's `Adam.update_step` is about fifteen small operations per variable (powers, casts, two moment updates,
the division); TensorFlow runs each as its own kernel. For LeNet-5's ten variables that is over a hundred
operations per training step, a tenth of the step on a 2-core CPU (benchmarks/bench_train.py). `FusedAdam` does
the same arithmetic in one `ResourceApplyAdam` kernel per variable:

    m ← m + (g − m)(1 − β1),   v ← v + (g² − v)(1 − β2),   θ ← θ − α·m / (√v + ε),   α = lr·√(1 − β2ᵗ) / (1 − β1ᵗ)

which is Keras's formula, operation for operation. Other backends, and AMSGrad, keep Keras's own update.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops


@keras.saving.register_keras_serializable(package="lottery_keras")
class FusedAdam(keras.optimizers.Adam):
    """`keras.optimizers.Adam` with one fused kernel per variable update on the TensorFlow backend."""

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or keras.backend.backend() != "tensorflow":
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        step = ops.cast(self.iterations + 1, dtype)
        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[index].handle,
            v=self._velocities[index].handle,
            beta1_power=ops.power(ops.cast(self.beta_1, dtype), step),
            beta2_power=ops.power(ops.cast(self.beta_2, dtype), step),
            lr=ops.cast(learning_rate, dtype),
            beta1=ops.cast(self.beta_1, dtype),
            beta2=ops.cast(self.beta_2, dtype),
            epsilon=ops.cast(self.epsilon, dtype),
            grad=ops.cast(gradient, dtype),
        )
