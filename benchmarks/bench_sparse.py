"""Training cost vs density: the dense compiled loop against the native sparse kernels, LeNet-300-100.

For each density (percent of weights surviving in every layer, random masks) this measures, in one process,
the milliseconds per training step of
  (a) dense: `CompiledLoop` (lottery_keras/train/loop.py) as the execution plan runs it (XLA on this CPU), with
      the masks applied after every step, in chunks of `--chunk` steps;
  (b) sparse: `SparseMlpTrainer` (lottery_keras/train/sparse.py), whose native op trains the surviving weights
      only, in the same chunks.
Both run on the same thread count (`--threads`, default 1: the sparse op runs on the calling thread, and studies
run one single-thread worker per core). Data are real MNIST training images when found, else synthetic of the
same shape. Each path is warmed up, then the paths alternate `--reps` times; the table reports medians, so
background load inflates both alike and the ratio stays fair.

Run from the repository root:
    python benchmarks/bench_sparse.py                              # densities 100, 50, 24, 10, 5, 2, 1 %
    python benchmarks/bench_sparse.py --json                       # one JSON list on stdout, nothing else
    python benchmarks/bench_sparse.py --densities 5 --reps 5 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from lottery_keras import data  # noqa: E402
from lottery_keras.nn.models import build_model  # noqa: E402
from lottery_keras.train.loop import CompiledLoop, compile_model  # noqa: E402
from lottery_keras.train.sparse import SparseMlpTrainer  # noqa: E402

DENSITIES = (100.0, 50.0, 24.0, 10.0, 5.0, 2.0, 1.0)


def training_data(samples: int) -> tuple[np.ndarray, np.ndarray, str]:
    try:
        splits = data.load("mnist").head(train=samples)
        return splits.x_train, splits.y_train, "MNIST"
    except data.DataError:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((samples, 28, 28, 1)).astype(np.float32)
        return x, rng.integers(0, 10, samples).astype(np.int32), "synthetic"


def masked_model(density: float) -> keras.Model:
    model = build_model("lenet300_100", (28, 28, 1), 10, "he_normal", 0)
    compile_model(model, 1.2e-3)
    rng = np.random.default_rng(1)
    model.set_masks({layer.name: (rng.random(layer.mask.shape) < density / 100).astype("float32")
                     for layer in model.masked_layers()})
    return model


def timed(run, steps: int) -> float:
    started = time.perf_counter()
    run(steps)
    return 1e3 * (time.perf_counter() - started) / steps


def measure(density: float, x, y, args) -> dict:
    dense_loop = CompiledLoop(masked_model(density), x, y, args.batch, jit_compile=True)
    sparse = SparseMlpTrainer(masked_model(density), x, y, args.batch)
    paths = {"dense": lambda steps: dense_loop.run(0, 0, steps),
             "sparse": lambda steps: sparse.train(steps, steps, 0)}
    for run in paths.values():
        run(args.chunk)  # traces, compiles, warms up
    times = {name: [] for name in paths}
    for rep in range(args.reps):
        for name in (list(paths) if rep % 2 == 0 else list(paths)[::-1]):
            times[name].append(timed(paths[name], args.steps))
    dense, sparse_ms = statistics.median(times["dense"]), statistics.median(times["sparse"])
    return {"arch": "lenet300_100", "density": density, "dense_ms_per_step": round(dense, 4),
            "sparse_ms_per_step": round(sparse_ms, 4), "speedup": round(dense / sparse_ms, 2),
            "threads": args.threads, "batch": args.batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--densities", type=float, nargs="+", default=DENSITIES, help="percent of weights kept")
    parser.add_argument("--steps", type=int, default=1000, help="timed steps per repetition and path")
    parser.add_argument("--chunk", type=int, default=500, help="warm-up steps")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1, help="TensorFlow threads per operation")
    parser.add_argument("--json", action="store_true", help="print one JSON list and nothing else")
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    x, y, source = training_data(max(6000, args.batch * 100))
    rows = [measure(density, x, y, args) for density in args.densities]
    if args.json:
        print(json.dumps(rows))
        return
    print(f"LeNet-300-100, batch {args.batch}, {args.threads} thread(s), {source} data, medians of {args.reps}")
    print("| density % | dense ms/step | sparse ms/step | speedup |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['density']:g} | {row['dense_ms_per_step']:.3f} | {row['sparse_ms_per_step']:.3f} | "
              f"**{row['speedup']:.2f}×** |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
