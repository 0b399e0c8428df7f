"""The execution plan: every choice of *how* training runs on this machine, none of *what* it computes.

One frozen `ExecutionPlan` holds the training loop (compiled, or stock `keras.Model.fit`), XLA compilation, the
fused conv-pool kernels, the sparse kernels, batch shards and TensorFlow's thread pools. `decide` makes it once,
from the architecture, the device and the user's overrides, using what measured faster for the architecture (its
spec's `fast_paths` in `catalog.py`; `benchmarks/bench_train.py`, figures in benchmarks/README.md). The CLI
prints it, the controller carries it in its run options, `build_model` takes its `model_execution`, and the
trainer runs it.

Thread pools are process-wide and fixed once TensorFlow's runtime starts, so `apply_threads` must run before the
first TensorFlow operation (the CLI calls it first thing); it returns the plan actually in effect, which shards
no batch if the pools could not be set (sharding under the default pools is slower).
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow as tf

from lottery_keras import catalog
from lottery_keras.nn import native
from lottery_keras.nn.models import Execution

LOOPS = ("compiled", "keras")

# What measured faster is declared per architecture (`catalog.ArchitectureSpec.fast_paths`): XLA pays where
# per-operation overhead dominates (small dense networks); on CPU oneDNN's convolutions beat XLA's, and XLA cannot
# compile the fused kernels (custom operations), which exist for CPU only. Batch shards pay on 2-core CPUs for
# LeNet-5, whose convolutions are too small for intra-op threads; Conv-6 and the XLA-compiled LeNet-300-100 do
# better with TensorFlow's own intra-op parallelism. On GPU every network is XLA-compiled.
MEASURED_CORES = 2  # the core count the shard choices were measured on
# The sparse kernels (`train/sparse.py`) train masked MLPs at a cost that follows the surviving weights; a round
# runs on them when its network's density is below the crossover measured on the project's CPUs (it moves with
# how fast the machine's dense path is; benchmarks/bench_sparse.py, figures in benchmarks/README.md).
SPARSE_BELOW_PERCENT = 15.0


@dataclasses.dataclass(frozen=True)
class ExecutionPlan:
    """How to run training here. `intra_op_threads` / `inter_op_threads` of None keep TensorFlow's defaults."""

    device: str = "cpu"
    loop: str = "compiled"
    jit_compile: bool = False
    fused_kernels: bool = False
    sparse_kernels: bool = False
    batch_shards: int = 1
    intra_op_threads: int | None = None
    inter_op_threads: int | None = None

    def __post_init__(self):
        if self.loop not in LOOPS:
            raise ValueError(f"unknown training loop {self.loop!r}; choose one of: {', '.join(LOOPS)}")
        if self.fused_kernels and self.jit_compile:
            raise ValueError("the fused conv-pool kernels are custom operations, which XLA cannot compile: "
                             "turn off one of jit compilation and the fused kernels")
        if self.fused_kernels and self.device != "cpu":
            raise ValueError("the fused conv-pool kernels run on CPU only")
        if self.sparse_kernels and (self.device != "cpu" or self.loop != "compiled"):
            raise ValueError("the sparse kernels run on CPU, in place of the compiled loop's dense steps")
        if self.batch_shards < 1:
            raise ValueError(f"batch shards must be at least 1, not {self.batch_shards}")
        for name in ("intra_op_threads", "inter_op_threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")

    @property
    def model_execution(self) -> Execution:
        """The part of the plan a model's forward pass follows (`build_model(..., execution=...)`)."""
        return Execution(batch_shards=self.batch_shards, fused_conv_pool=self.fused_kernels)

    def describe(self) -> str:
        """One line for the terminal, e.g. 'CPU · compiled loop · fused conv-pool kernels · 2 batch shards …'."""
        parts = [self.device.upper(), f"{self.loop} loop"]
        if self.loop == "compiled":
            parts.append("XLA" if self.jit_compile else "no XLA")
        if self.fused_kernels:
            parts.append("fused conv-pool kernels")
        if self.sparse_kernels:
            parts.append(f"sparse kernels below {SPARSE_BELOW_PERCENT:g}% density")
        if self.batch_shards > 1:
            parts.append(f"batches in {self.batch_shards} shards side by side")
        threads = [f"{count} {label}" for count, label in ((self.intra_op_threads, "thread(s) per operation"),
                                                         (self.inter_op_threads, "operation(s) at once")) if count]
        parts.append(", ".join(threads) if threads else "TensorFlow's thread pools")
        return " · ".join(parts)


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def current_device() -> str:
    """'gpu' when TensorFlow sees one (listing devices does not start the runtime), else 'cpu'."""
    return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"


def decide(arch: str | None, *, device: str | None = None, loop: str = "compiled", jit_compile: bool | None = None,
           fused_kernels: bool | None = None, sparse_kernels: bool | None = None, batch_shards: int | None = None,
           threads: int | None = None) -> ExecutionPlan:
    """The plan for training `arch` (a registered architecture's name; None for a model of one's own) on `device`
    (default: this machine's): the fast paths its spec declares, each replaced by the argument that names it when
    given. `threads` is the intra-op pool size. Raises ValueError for impossible combinations."""
    spec = catalog.architecture(arch) if arch else None
    device = device or current_device()

    def fast(path: str) -> bool:
        return spec is not None and spec.runs_fast_path(path, device)

    jit = (fast("jit") if device == "cpu" else True) if jit_compile is None else jit_compile
    if loop == "keras":
        if jit_compile:
            raise ValueError("XLA compilation is a choice of the compiled loop; stock fit keeps Keras's own")
        jit = False
    if fused_kernels is None:
        fused_kernels = loop == "compiled" and not jit and fast("fused") and native.available()
    elif fused_kernels and not native.available():
        raise ValueError("the fused conv-pool kernels could not be built here (see the warning above); "
                         "run without them")
    if sparse_kernels is None:
        sparse_kernels = loop == "compiled" and fast("sparse") and native.available()
    elif sparse_kernels and (not fast("sparse") or not native.available()):
        raise ValueError(f"the sparse kernels train {', '.join(_with_fast_path('sparse', 'cpu'))} on CPU, where "
                         "the native kernels build; run without them")
    if batch_shards is None:
        batch_shards = MEASURED_CORES if fast("sharded") and cpu_cores() == MEASURED_CORES else 1
    intra, inter = threads, None
    if batch_shards > 1:  # the shards' operations run single-threaded, side by side on the inter-op pool
        intra, inter = threads or 1, batch_shards
    return ExecutionPlan(device=device, loop=loop, jit_compile=jit, fused_kernels=fused_kernels,
                         sparse_kernels=sparse_kernels, batch_shards=batch_shards, intra_op_threads=intra,
                         inter_op_threads=inter)


def _with_fast_path(path: str, device: str) -> list[str]:
    return [name for name in catalog.architectures() if catalog.architecture(name).runs_fast_path(path, device)]


def _pools_match(plan: ExecutionPlan) -> bool:
    threading = tf.config.threading
    return ((plan.intra_op_threads or 0) == threading.get_intra_op_parallelism_threads()
            and (plan.inter_op_threads or 0) == threading.get_inter_op_parallelism_threads())


def apply_threads(plan: ExecutionPlan) -> ExecutionPlan:
    """Set this process's thread pools as `plan` asks; returns the plan in effect.

    Once TensorFlow's runtime has started with other pools they cannot change: the plan in effect then keeps
    TensorFlow's pools and shards no batch.
    """
    if _pools_match(plan):
        return plan
    try:
        tf.config.threading.set_intra_op_parallelism_threads(plan.intra_op_threads or 0)
        tf.config.threading.set_inter_op_parallelism_threads(plan.inter_op_threads or 0)
    except RuntimeError:
        return dataclasses.replace(plan, batch_shards=1, intra_op_threads=None, inter_op_threads=None)
    return plan
