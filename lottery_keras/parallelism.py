"""Using every CPU core inside one training step: thread pools and batch shards.

LeNet-5's convolutions are too small for TensorFlow's intra-op parallelism: on 2 cores a step takes about as long
on one thread per op as on two. What does use both cores is splitting the batch into independent shards
(`MaskedModel.batch_shards`) whose convolutional trunks run single-threaded, side by side on TensorFlow's
inter-op pool (LeNet-5: 1.3-1.5x faster per step, `benchmarks/bench_train.py --threads default` against the
default plan). Conv-6 (13% slower sharded) and the XLA-compiled LeNet-300-100 (15% slower on one thread per op)
do better with TensorFlow's own intra-op parallelism; Conv-2/4 are unmeasured and keep it too. So the plan is
per architecture.

Thread pools are process-wide and fixed once TensorFlow's runtime starts, so `configure` must run before the
first TensorFlow operation (the CLI calls it first thing); `batch_shards` then tells a trainer whether the
process runs under the plan, and shards only if it does (sharding under the default pools is slower).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import tensorflow as tf

from lottery_keras.models import ARCH_ALIASES

# Architectures measured faster sharded, on the 2-core CPUs this project runs on (benchmarks/bench_train.py).
SHARDED_ARCHS = frozenset({"lenet5"})
MEASURED_CORES = 2


@dataclass(frozen=True)
class CpuPlan:
    """Shards per batch, and the sizes of TensorFlow's intra-op (per operation) and inter-op pools."""

    batch_shards: int
    intra_op_threads: int
    inter_op_threads: int


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_plan(arch: str) -> CpuPlan | None:
    """The thread plan for training `arch` in this process, or None for TensorFlow's defaults (GPU machines,
    unmeasured core counts, architectures that are faster unsharded)."""
    if ARCH_ALIASES.get(arch.lower(), arch.lower()) not in SHARDED_ARCHS or cpu_cores() != MEASURED_CORES:
        return None
    if tf.config.list_physical_devices("GPU"):  # lists devices without starting the runtime
        return None
    return CpuPlan(batch_shards=MEASURED_CORES, intra_op_threads=1, inter_op_threads=MEASURED_CORES)


def _in_effect(plan: CpuPlan) -> bool:
    return (tf.config.threading.get_intra_op_parallelism_threads() == plan.intra_op_threads
            and tf.config.threading.get_inter_op_parallelism_threads() == plan.inter_op_threads)


def configure(arch: str) -> CpuPlan | None:
    """Set this process's thread pools for training `arch`; returns the plan now in effect (None: defaults).

    A no-op, returning None, once TensorFlow's runtime has started with other settings.
    """
    plan = cpu_plan(arch)
    if plan is None or _in_effect(plan):
        return plan
    try:
        tf.config.threading.set_intra_op_parallelism_threads(plan.intra_op_threads)
        tf.config.threading.set_inter_op_parallelism_threads(plan.inter_op_threads)
    except RuntimeError:  # the runtime already started: its pools cannot change any more
        return None
    return plan


def batch_shards(arch: str) -> int:
    """Shards per batch for training `arch` here: the plan's if the process runs under it, else 1."""
    plan = cpu_plan(arch)
    return plan.batch_shards if plan is not None and _in_effect(plan) else 1
