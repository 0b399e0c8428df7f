"""How much of a LeNet-5 training step its hidden fully-connected layers cost: the most that sparse kernels for
them could save (the sparse kernels of `train/sparse.py` cover fully-connected layers only).

Times, in one process on one thread, a training step (batch 60, Adam) of plain Keras LeNet-5 (conv 6@5×5 → pool →
conv 16@5×5 → pool → fc 120 → 84 → 10) and of the same network without its fc 120 and 84 layers, both with
TensorFlow's own (oneDNN) kernels, and prints the share of the step the two layers take.

Run from the repository root:
    python benchmarks/bench_lenet5_fc_share.py
"""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

STEPS, REPEATS, BATCH = 300, 5, 60


def lenet5(with_hidden_fc: bool) -> keras.Model:
    layers = [keras.Input((28, 28, 1)), keras.layers.Conv2D(6, 5, padding="same", activation="relu"),
              keras.layers.MaxPooling2D(2), keras.layers.Conv2D(16, 5, activation="relu"),
              keras.layers.MaxPooling2D(2), keras.layers.Flatten()]
    if with_hidden_fc:
        layers += [keras.layers.Dense(120, activation="relu"), keras.layers.Dense(84, activation="relu")]
    return keras.Sequential([*layers, keras.layers.Dense(10)])


def ms_per_step(model: keras.Model) -> float:
    x = tf.random.normal((BATCH, 28, 28, 1), seed=0)
    y = tf.random.uniform((BATCH,), 0, 10, tf.int32, seed=1)
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)

    @tf.function
    def steps(count):
        for _ in tf.range(count):
            with tf.GradientTape() as tape:
                logits = model(x, training=True)
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
            optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

    steps(tf.constant(10))  # trace and warm up
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        steps(tf.constant(STEPS))
        times.append(1e3 * (time.perf_counter() - started) / STEPS)
    return statistics.median(times)


def main() -> None:
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    full, without = ms_per_step(lenet5(True)), ms_per_step(lenet5(False))
    print(f"LeNet-5 step {full:.3f} ms; without fc 120 and 84 {without:.3f} ms; "
          f"their share of the step {100 * (1 - without / full):.0f} %")


if __name__ == "__main__":
    main()
