"""The fused conv-pool kernels against TensorFlow's own operations, block by block.

For each of LeNet-5's two convolution blocks (conv1: 28×28×1 → 6, `same`; conv2: 14×14×6 → 16, `valid`; each then
bias, ReLU, 2×2 max-pool), measures in one process, alternating, the milliseconds of one forward + backward pass
(the gradients of a weighted sum of the pooled output with respect to input, kernel and bias) of
  plain: `tf.nn.conv2d` → `+ bias` → `tf.nn.relu` → `tf.nn.max_pool2d`, differentiated by TensorFlow;
  fused: `conv_pool.conv_relu_pool` (the same convolution, then the fused kernels of `csrc/conv_pool.cc`);
and the same with the first block's input gradient left out, as in training (nothing needs the gradient of
the images). Each pass runs `--steps` times inside one `tf.function` `while` loop on variables, so nothing is
constant-folded and no Python runs between passes. One thread per operation, like the toolkit's CPU plan; the
batch is 30, one of the plan's two shards of 60 (`--batch` to change). Prints a table of medians and ratios.

    python benchmarks/bench_conv_pool.py
    python benchmarks/bench_conv_pool.py --batch 60 --reps 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from lottery_keras.nn import conv_pool, native  # noqa: E402

# name: (input side, input channels, kernel size, filters, padding, input gradient needed in training)
BLOCKS = {"conv1": (28, 1, 5, 6, "same", False), "conv2": (14, 6, 5, 16, "valid", True)}


def plain_block(x, kernel, bias, padding):
    return tf.nn.max_pool2d(tf.nn.relu(tf.nn.conv2d(x, kernel, 1, padding.upper()) + bias), 2, 2, "VALID")


def training_pass(block, padding: str, with_input_grad: bool, steps: int, x, kernel, bias, weights):
    """A `tf.function` running `steps` forward + backward passes of `block`; returns a scalar that depends on
    every gradient computed, so none is pruned."""
    @tf.function
    def run():
        total = tf.constant(0.0)
        for _ in tf.range(steps):
            xv, kv, bv = x.read_value(), kernel.read_value(), bias.read_value()
            with tf.GradientTape() as tape:
                tape.watch([xv, kv, bv])
                loss = tf.reduce_sum(block(xv, kv, bv, padding) * weights)
            grads = tape.gradient(loss, [xv, kv, bv] if with_input_grad else [kv, bv])
            total += sum(g[(0,) * len(g.shape)] for g in grads)
        return total
    return run


def measure(name: str, batch: int, steps: int, reps: int) -> dict:
    side, channels, size, filters, padding, input_grad = BLOCKS[name]
    rng = np.random.default_rng(0)
    x = tf.Variable(rng.standard_normal((batch, side, side, channels), dtype=np.float32))
    kernel = tf.Variable(rng.normal(scale=0.3, size=(size, size, channels, filters)).astype(np.float32))
    bias = tf.Variable(rng.normal(scale=0.1, size=filters).astype(np.float32))
    weights = tf.constant(rng.standard_normal(plain_block(x, kernel, bias, padding).shape, dtype=np.float32))
    runs = {(method, grad): training_pass(block, padding, grad, steps, x, kernel, bias, weights)
            for method, block in (("plain", plain_block), ("fused", conv_pool.conv_relu_pool))
            for grad in (True, False)}
    samples: dict = {key: [] for key in runs}
    for run in runs.values():
        run()  # trace
    for _ in range(reps):
        for key, run in runs.items():
            start = time.perf_counter()
            run().numpy()
            samples[key].append((time.perf_counter() - start) * 1e3 / steps)
    median = {key: statistics.median(values) for key, values in samples.items()}
    return {"block": name, "training_needs_input_grad": input_grad, **{
        f"{method}_ms{'' if grad else '_no_input_grad'}": median[(method, grad)] for method, grad in runs}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=30, help="images per pass (default 30: one of two shards)")
    parser.add_argument("--steps", type=int, default=300, help="passes per timed call (default 300)")
    parser.add_argument("--reps", type=int, default=5, help="timed calls per method (default 5)")
    args = parser.parse_args()
    tf.get_logger().setLevel("ERROR")  # eight functions, each traced once, make TensorFlow warn of retracing
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    if not native.available():
        raise SystemExit("the fused kernels could not be built here (see the warning above)")
    print(f"ms per forward + backward pass, batch {args.batch}, one thread; medians of {args.reps} calls of "
          f"{args.steps} passes")
    print(f"{'block':<6} {'input grad':>10} {'plain':>8} {'fused':>8} {'speedup':>8}")
    for name in BLOCKS:
        row = measure(name, args.batch, args.steps, args.reps)
        for suffix, label in (("", "yes"), ("_no_input_grad", "no")):
            plain, fused = row[f"plain_ms{suffix}"], row[f"fused_ms{suffix}"]
            used = " (training)" if (label == "yes") == row["training_needs_input_grad"] else ""
            print(f"{name:<6} {label:>10} {plain:>8.3f} {fused:>8.3f} {plain / fused:>7.2f}x{used}")


if __name__ == "__main__":
    main()
