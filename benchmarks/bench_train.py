"""Training throughput: stock `keras.Model.fit` against the toolkit's compiled loop, per architecture.

For each architecture this measures, in one process, the milliseconds per training step of
  (a) stock Keras: `keras.Model.fit` on numpy arrays (shuffle=True, verbose=0, Keras's default `jit_compile`)
      with `keras.optimizers.Adam`, driving the same masked `train_step` — the user experience, nothing
      subtracted (`--stock-adam fused` gives it the toolkit's `FusedAdam` instead);
  (b) the toolkit's path: `CompiledLoop` (lottery_keras/train/loop.py) running the execution plan
      `train/plan.py` decides for the architecture (its jit choice, fused conv-pool kernels, batch shards) with
      the optimizer of `compile_model` (`FusedAdam`), run in chunks of `--chunk` steps the way `Trainer` runs
      them between evaluations;
  (c) the compiled loop with the opposite jit setting, to learn which setting is faster on this machine;
  (d) where (b) runs the fused conv-pool kernels, (b) without them: what the kernels bring to the whole step.
Each model is a `MaskedModel` compiled with the loss of `compile_model` and given a ~50% random mask, so
the masking is real. Data are synthetic, of the real shapes (standard-normal images, uniform labels; 5,000 samples for
CIFAR shapes to save memory).

Each method first runs one step twice at a fixed position (the first call traces and compiles; the second times
a step), then is warmed up (the compiled loop with a full chunk: its first long call after a short one is
slower). Then the methods alternate, `--reps` timed calls of `--steps` steps each, in rotating order; the table
reports medians, so background load inflates all methods alike and the ratios stay fair. Two guards keep the
runtime bounded: a compiled loop whose call would last over `--max-call-s` runs fewer steps per call (and chunk),
and a method whose step takes over `--slow-s` is reported from its probe step alone, marked `*` (XLA-compiled
loops of convolutions on CPU: about a minute per Conv-6 step here).

Each architecture is measured in its own child process, so that the toolkit's CPU thread plan for it
(`plan.apply_threads`: LeNet-5 on 2 cores runs 2 batch shards, one thread per operation) can be set before
TensorFlow starts; stock `fit` runs in that same process, on unsharded batches. `--threads default` keeps
TensorFlow's default thread pools (and so no shards) instead.

Achieved GFLOP/s of the toolkit path uses the step's analytic arithmetic (see `step_flops`).

Run from the repository root:
    python benchmarks/bench_train.py                        # LeNet-300-100, LeNet-5, Conv-6: a table
    python benchmarks/bench_train.py --arch lenet5 --steps 1000 --reps 5
    python benchmarks/bench_train.py --arch conv6 --batch 128 --json   # one JSON list on stdout, nothing else
    python benchmarks/bench_train.py --save bench_train.json           # the table, and the JSON in a file
    python benchmarks/bench_train.py --arch lenet5 --threads default   # without the CPU thread plan
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from lottery_keras.catalog import canonical_arch  # noqa: E402
from lottery_keras.nn.models import Execution, MaskedModel, build_model  # noqa: E402
from lottery_keras.train import loop as training  # noqa: E402
from lottery_keras.train import schedule  # noqa: E402
from lottery_keras.train import plan as execution  # noqa: E402

MNIST_SHAPE, CIFAR_SHAPE = (28, 28, 1), (32, 32, 3)
LEARNING_RATE = 1.2e-3


@dataclass(frozen=True)
class Workload:
    input_shape: tuple[int, int, int]
    num_samples: int  # synthetic training-set size (CIFAR shapes: smaller than 45k to save memory and time)
    steps: int  # default timed steps per repetition and method


WORKLOADS = {
    "lenet300_100": Workload(MNIST_SHAPE, 55_000, 500),
    "lenet5": Workload(MNIST_SHAPE, 55_000, 500),
    "conv2": Workload(CIFAR_SHAPE, 5_000, 40),
    "conv4": Workload(CIFAR_SHAPE, 5_000, 30),
    "conv6": Workload(CIFAR_SHAPE, 5_000, 20),
}
DEFAULT_ARCHS = ("lenet300_100", "lenet5", "conv6")


# --- arithmetic ----------------------------------------------------------------------------------------------

def layer_costs(arch: str) -> list[tuple[int, int]]:
    """(output positions, kernel weights) of each prunable layer, in forward order. A dense layer has one output
    position; a stride-1 convolution has out_h × out_w of them."""
    def dense(n_in, n_out):
        return 1, n_in * n_out

    def conv(side, k, c_in, c_out):
        return side * side, k * k * c_in * c_out

    if arch == "lenet300_100":
        return [dense(784, 300), dense(300, 100), dense(100, 10)]
    if arch == "lenet5":  # conv1 'same' on 28×28, pool → 14, conv2 'valid' → 10, pool → 5
        return [conv(28, 5, 1, 6), conv(10, 5, 6, 16), dense(400, 120), dense(120, 84), dense(84, 10)]
    depth = int(arch.removeprefix("conv"))  # Conv-2/4/6: pairs of 'same' 3×3 convs, each pair then pooled
    costs, side, channels = [], 32, 3
    for filters in (64, 128, 256)[:depth // 2]:
        costs += [conv(side, 3, channels, filters), conv(side, 3, filters, filters)]
        side, channels = side // 2, filters
    return costs + [dense(side * side * channels, 256), dense(256, 256), dense(256, 10)]


def step_flops(arch: str, batch_size: int) -> int:
    """FLOPs of one training step: 2 · MACs of the forward pass per sample (a MAC is a multiply and an add),
    × 3 for forward + backward (the backward pass computes input and weight gradients, ~2× the forward), × batch.
    MACs per sample = Σ over prunable layers of output positions × kernel weights (dense layers: in × out;
    convs: out_h · out_w · k · k · c_in · c_out). Dense arithmetic: the masks zero weights, they do not skip them.
    Biases, activations, pooling, the loss, Adam and the mask re-application are left out (all O(weights) or
    O(activations), small next to the products)."""
    macs = sum(positions * weights for positions, weights in layer_costs(arch))
    return 2 * macs * 3 * batch_size


def check_costs_match_model(arch: str, model: MaskedModel) -> None:
    """The analytic layer list must describe the built model: same kernel sizes, layer by layer."""
    analytic = [weights for _, weights in layer_costs(arch)]
    built = [int(np.prod(layer.kernel.shape)) for layer in model.masked_layers()]
    if analytic != built:
        raise AssertionError(f"{arch}: analytic kernel sizes {analytic} != model's {built}")


# --- setup ---------------------------------------------------------------------------------------------------

def synthetic_data(workload: Workload, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Float32 standard-normal images and int32 labels in 0..9, like the normalised real splits."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((workload.num_samples, *workload.input_shape), dtype=np.float32)
    y = rng.integers(0, 10, workload.num_samples, dtype=np.int32)
    return x, y


def masked_model(arch: str, input_shape: tuple[int, ...], seed: int, keras_adam: bool = False,
                 model_execution: Execution | None = None) -> MaskedModel:
    """A compiled model with a ~50% random mask on every prunable layer (the same mask for a given seed), with
    the toolkit's optimizer or, `keras_adam`, stock `keras.optimizers.Adam` (same hyperparameters), running its
    forward pass as `model_execution` says (default: plain layers, whole batches)."""
    model = build_model(arch, input_shape, seed=seed, execution=model_execution)
    training.compile_model(model, learning_rate=LEARNING_RATE)
    if keras_adam:
        model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE, epsilon=model.optimizer.epsilon),
                      loss=model.loss)
        model.optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(seed)
    model.set_masks({layer.name: (rng.random(tuple(layer.kernel.shape)) < 0.5).astype(np.float32)
                     for layer in model.masked_layers()})
    return model


# --- the methods ---------------------------------------------------------------------------------------------

@dataclass
class Method:
    """One training path on its own model. `run(n)` trains n steps and returns when done; `probe()` trains one
    step at a fixed position, so a repeated probe hits every compilation cache (a timing of the step alone)."""
    model: MaskedModel
    run: Callable[[int], None]
    probe: Callable[[], None]
    jit_compile: bool
    chunk: int | None  # steps per compiled-loop call; None for `fit`


def stock_fit(model: MaskedModel, x: np.ndarray, y: np.ndarray, batch_size: int) -> Method:
    """`fit` for one epoch of n steps (a whole epoch when n is the epoch length). Later `fit` calls reuse the
    train function the first one traced."""
    def run(num_steps: int) -> None:
        model.fit(x, y, batch_size=batch_size, epochs=1, steps_per_epoch=num_steps, shuffle=True, verbose=0)
    return Method(model, run, lambda: run(1), bool(model.jit_compile), chunk=None)


def compiled_loop(model: MaskedModel, x: np.ndarray, y: np.ndarray, batch_size: int, chunk: int,
                  jit_compile: bool) -> Method:
    """`CompiledLoop.run` in chunks of `chunk` steps, continuing the step count across calls like `Trainer`."""
    loop = training.CompiledLoop(model, x, y, batch_size, jit_compile=jit_compile)
    done = 0

    def run(num_steps: int) -> None:
        nonlocal done
        previous = 0
        for end in schedule.chunk_ends(num_steps, chunk):
            loop.run(seed=0, first_step=done + previous, num_steps=end - previous)
            previous = end
        done += num_steps
    return Method(model, run, lambda: loop.run(seed=0, first_step=0, num_steps=1), loop.jit_compile, chunk)


def timed(work: Callable[[], None], model: MaskedModel) -> float:
    """Seconds taken by `work()`; reading the step counter waits for the device to finish."""
    start = time.perf_counter()
    work()
    int(model.optimizer.iterations.numpy())
    return time.perf_counter() - start


# --- measurement ---------------------------------------------------------------------------------------------

def plan_steps(step_s: float, steps: int, max_call_s: float, slow_s: float) -> int:
    """Timed steps per call for a method whose probed step took `step_s` seconds: `steps`, fewer if a call
    would last longer than `max_call_s`, and 0 (report the probe alone) if one step takes over `slow_s`."""
    if step_s > slow_s:
        return 0
    return max(1, min(steps, math.floor(max_call_s / step_s))) if step_s * steps > max_call_s else steps


def measure(arch: str, plan: execution.ExecutionPlan, workload: Workload, batch_size: int, steps: int, chunk: int,
            reps: int, seed: int, max_call_s: float, slow_s: float, stock_adam: str,
            log: Callable[[str], None]) -> dict:
    """Probe, warm up, then time the methods interleaved (rotating order); return the medians. The toolkit runs
    `plan`; the other-jit method the same plan with the opposite jit choice (unfused under XLA)."""
    x, y = synthetic_data(workload, seed)
    steps = min(steps, schedule.steps_per_epoch(len(x), batch_size))  # `fit` cannot run past one epoch
    chunk = min(chunk, steps)

    def model(keras_adam: bool = False, fused: bool = False) -> MaskedModel:
        return masked_model(arch, workload.input_shape, seed, keras_adam,
                            Execution(batch_shards=plan.batch_shards, fused_conv_pool=fused))

    methods = {"stock": stock_fit(masked_model(arch, workload.input_shape, seed, stock_adam == "keras"), x, y,
                                  batch_size),
               "toolkit": compiled_loop(model(fused=plan.fused_kernels), x, y, batch_size, chunk, plan.jit_compile)}
    methods["other_jit"] = compiled_loop(model(fused=plan.fused_kernels and plan.jit_compile), x, y, batch_size,
                                         chunk, not plan.jit_compile)
    if plan.fused_kernels:
        methods["unfused"] = compiled_loop(model(), x, y, batch_size, chunk, plan.jit_compile)
    check_costs_match_model(arch, methods["stock"].model)

    plan, probe_s = {}, {}
    for name, method in methods.items():
        compile_s = timed(method.probe, method.model)  # traces / compiles
        probe_s[name] = timed(method.probe, method.model)
        # `fit`'s per-call overhead (iterator, shuffling) is part of what it measures: never cut its calls short
        plan[name] = plan_steps(probe_s[name], steps, max_call_s if method.chunk else float("inf"), slow_s)
        if plan[name] and method.chunk:  # the first long call after a short one is slower: warm up a full chunk
            method.run(min(method.chunk, plan[name]))
        log(f"  {arch}: {name} (jit {method.jit_compile}): first step {compile_s:.1f} s, probe step "
            f"{probe_s[name] * 1e3:.1f} ms -> " + (f"{plan[name]} steps per call" if plan[name] else "probe only"))

    samples: dict[str, list[float]] = {name: [] if plan[name] else [probe_s[name] * 1e3] for name in methods}
    timed_names = [name for name in methods if plan[name]]
    for rep in range(reps):
        turn = rep % len(timed_names) if timed_names else 0
        for name in timed_names[turn:] + timed_names[:turn]:
            method = methods[name]
            seconds = timed(lambda: method.run(plan[name]), method.model)
            samples[name].append(seconds * 1e3 / plan[name])
        log(f"  {arch}: rep {rep + 1}/{reps}: " + ", ".join(f"{n} {s[-1]:.2f}" for n, s in samples.items())
            + " ms/step")
    return {**summarise(arch, workload, batch_size, chunk, methods, plan, samples), "stock_adam": stock_adam}


def summarise(arch: str, workload: Workload, batch_size: int, chunk: int, methods: dict[str, Method],
              plan: dict[str, int], samples: dict[str, list[float]]) -> dict:
    median = {name: statistics.median(values) for name, values in samples.items()}
    flops = step_flops(arch, batch_size)
    faster = "toolkit" if median["toolkit"] <= median["other_jit"] else "other_jit"
    return {
        "arch": arch,
        "device": "gpu" if tf.config.list_logical_devices("GPU") else "cpu",
        "toolkit_batch_shards": methods["toolkit"].model.execution.batch_shards,
        "toolkit_fused_conv_pool": methods["toolkit"].model.execution.fused_conv_pool,
        "threads_per_op": tf.config.threading.get_intra_op_parallelism_threads() or "default",
        "batch_size": batch_size,
        "num_samples": workload.num_samples,
        "stock_ms_per_step": median["stock"],
        "toolkit_ms_per_step": median["toolkit"],
        "speedup": median["stock"] / median["toolkit"],
        "other_jit_ms_per_step": median["other_jit"],
        "unfused_ms_per_step": median.get("unfused"),  # None: the toolkit runs no fused kernels here
        "stock_jit": methods["stock"].jit_compile,
        "toolkit_jit": methods["toolkit"].jit_compile,
        "other_jit": methods["other_jit"].jit_compile,
        "faster_jit": methods[faster].jit_compile,
        "gflop_per_step": flops / 1e9,
        "toolkit_gflops": flops / (median["toolkit"] * 1e6),
        "steps_per_call": plan,  # 0: too slow, reported from one probe step
        "chunk": chunk,  # compiled-loop steps per call (at most steps_per_call)
        "samples_ms_per_step": samples,
    }


def format_table(rows: list[dict], device: str) -> str:
    header = (f"{'arch':<13} {'batch':>5} {'stock ms/step':>13} {'toolkit ms/step':>15} {'shards':>6} "
              f"{'speedup':>7} {'other-jit ms/step':>17} {'faster jit':>10} {'unfused ms/step':>15} "
              f"{'GFLOP/step':>10} {'toolkit GFLOP/s':>15}")
    adam = {"keras": "keras.optimizers.Adam", "fused": "FusedAdam"}[rows[0]["stock_adam"]] if rows else ""
    lines = [f"device: {device}; stock = fit with {adam}, toolkit = CompiledLoop with FusedAdam; medians over "
             "interleaved repetitions; [jit_compile]; * = one probe step only; shards: toolkit batch shards (CPU "
             "thread plan); unfused: the toolkit without its fused conv-pool kernels (- : it runs none)",
             header, "-" * len(header)]
    for r in rows:
        star = {name: "*" if steps == 0 else " " for name, steps in r["steps_per_call"].items()}
        unfused = "-" if r["unfused_ms_per_step"] is None else f"{r['unfused_ms_per_step']:.2f}{star['unfused']}"
        lines.append(
            f"{r['arch']:<13} {r['batch_size']:>5} "
            f"{r['stock_ms_per_step']:>7.2f}{star['stock']}[{'T' if r['stock_jit'] else 'F'}] "
            f"{r['toolkit_ms_per_step']:>9.2f}{star['toolkit']}[{'T' if r['toolkit_jit'] else 'F'}] "
            f"{r['toolkit_batch_shards']:>6} {r['speedup']:>6.2f}x "
            f"{r['other_jit_ms_per_step']:>11.2f}{star['other_jit']}[{'T' if r['other_jit'] else 'F'}] "
            f"{str(r['faster_jit']):>10} {unfused:>15} {r['gflop_per_step']:>10.3f} {r['toolkit_gflops']:>15.1f}")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", default=list(DEFAULT_ARCHS),
                        help=f"architectures (default: {' '.join(DEFAULT_ARCHS)}; also: conv2 conv4)")
    parser.add_argument("--steps", type=int, help="timed steps per repetition and method (default: "
                        + ", ".join(f"{a} {w.steps}" for a, w in WORKLOADS.items()) + "; capped at one epoch)")
    parser.add_argument("--batch", type=int, default=60, help="batch size (default 60)")
    parser.add_argument("--chunk", type=int, default=500, help="compiled-loop steps per call (default 500)")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per method (default 3)")
    parser.add_argument("--max-call-s", type=float, default=20.0,
                        help="cap a method's steps per timed call so a call lasts about this long (default 20)")
    parser.add_argument("--slow-s", type=float, default=5.0,
                        help="a method whose step takes longer is reported from one probe step (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", choices=["plan", "default"], default="plan",
                        help="the toolkit's CPU thread plan per architecture (default), or TensorFlow's defaults")
    parser.add_argument("--stock-adam", choices=["keras", "fused"], default="keras",
                        help="the stock method's optimizer: keras.optimizers.Adam (default) or the toolkit's "
                        "FusedAdam")
    parser.add_argument("--json", action="store_true", help="print only a JSON list, one object per arch")
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)  # a child: one arch
    parser.add_argument("--save", metavar="PATH", help="also write that JSON list to PATH")
    return parser.parse_args(argv)


def measure_here(args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    """Measure the one architecture of `args` in this process (a child started by `measure_in_child`)."""
    arch = canonical_arch(args.arch[0])
    if args.threads == "plan":
        plan = execution.apply_threads(execution.decide(arch))  # before the first TensorFlow operation
    else:
        plan = execution.decide(arch, batch_shards=1)
    workload = WORKLOADS[arch]
    return measure(arch, plan, workload, args.batch, args.steps or workload.steps, args.chunk, args.reps, args.seed,
                   args.max_call_s, args.slow_s, args.stock_adam, log)


def measure_in_child(arch: str, args: argparse.Namespace) -> dict:
    """Measure one architecture in a fresh process (thread pools are fixed once TensorFlow starts): it logs to
    our stderr unless we print JSON, and prints its row as JSON on stdout."""
    options = ["--batch", args.batch, "--chunk", args.chunk, "--reps", args.reps, "--max-call-s", args.max_call_s,
               "--slow-s", args.slow_s, "--seed", args.seed, "--threads", args.threads, "--stock-adam", args.stock_adam]
    if args.steps:
        options += ["--steps", args.steps]
    command = [sys.executable, __file__, "--arch", arch, "--in-process", *map(str, options)]
    if args.json:
        command.append("--json")
    return json.loads(subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True).stdout)


def main(argv=None) -> None:
    args = parse_args(argv)
    log = (lambda message: None) if args.json else (lambda message: print(message, file=sys.stderr, flush=True))
    if args.in_process:
        print(json.dumps(measure_here(args, log)))
        return
    started = time.perf_counter()
    rows = [measure_in_child(canonical_arch(name), args) for name in args.arch]
    if args.save:
        with open(args.save, "w") as f:
            json.dump(rows, f, indent=1)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(format_table(rows, rows[0]["device"] if rows else "cpu"))
        print(f"total time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
