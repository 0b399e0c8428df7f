"""The execution plan: what `decide` picks per architecture and device, what users can override, what is refused,
and that `apply_threads` sets the process's thread pools (fixed once TensorFlow's runtime starts, so those checks
run in a fresh Python process)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from lottery_keras.nn import native
from lottery_keras.nn.models import Execution, build_model
from lottery_keras.train import plan as execution
from lottery_keras.train.loop import Trainer, plan_for
from lottery_keras.train.plan import ExecutionPlan

CHECK = """
import dataclasses, json, sys
import tensorflow as tf
from lottery_keras.train import plan as execution
arch, start_runtime_first = sys.argv[1], sys.argv[2] == "1"
if start_runtime_first:
    tf.constant(1.0) + 1.0
plan = execution.apply_threads(execution.decide(arch, device="cpu", fused_kernels=False))
print(json.dumps({"shards": plan.batch_shards, "plan_intra": plan.intra_op_threads,
                  "intra": tf.config.threading.get_intra_op_parallelism_threads(),
                  "inter": tf.config.threading.get_inter_op_parallelism_threads()}))
"""

on_measured_cpu = pytest.mark.skipif(execution.cpu_cores() != execution.MEASURED_CORES,
                                     reason=f"the shard table is measured for {execution.MEASURED_CORES} cores")


def apply_in_fresh_process(arch: str, start_runtime_first: bool = False) -> dict:
    result = subprocess.run([sys.executable, "-c", CHECK, arch, str(int(start_runtime_first))],
                            capture_output=True, text=True, timeout=300, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


@on_measured_cpu
def test_lenet5_on_cpu_gets_shards_fused_kernels_and_no_xla():
    plan = execution.decide("lenet5", device="cpu")
    assert (plan.batch_shards, plan.intra_op_threads, plan.inter_op_threads) == (2, 1, 2)
    assert plan.fused_kernels == native.available() and not plan.jit_compile
    assert plan.model_execution == Execution(batch_shards=2, fused_conv_pool=plan.fused_kernels)


def test_lenet300_100_on_cpu_is_xla_compiled_with_tensorflows_pools():
    plan = execution.decide("lenet300_100", device="cpu")
    assert plan.jit_compile and not plan.fused_kernels and plan.batch_shards == 1
    assert plan.intra_op_threads is None and plan.inter_op_threads is None


def test_gpu_compiles_every_architecture_and_runs_no_cpu_kernels():
    for arch in ("lenet300_100", "lenet5", "conv6", None):
        plan = execution.decide(arch, device="gpu")
        assert plan.jit_compile and not plan.fused_kernels and plan.batch_shards == 1


def test_user_overrides_win_over_the_tables():
    plan = execution.decide("lenet5", device="cpu", fused_kernels=False, batch_shards=1, jit_compile=True, threads=2)
    assert (plan.jit_compile, plan.fused_kernels, plan.batch_shards, plan.intra_op_threads) == (True, False, 1, 2)
    assert execution.decide("lenet300_100", device="cpu", jit_compile=False).jit_compile is False
    assert execution.decide("lenet300_100", device="cpu", loop="keras").describe().startswith("CPU · keras loop")


@pytest.mark.parametrize("settings, message", [
    (dict(jit_compile=True, fused_kernels=True), "XLA cannot compile"),
    (dict(device="gpu", fused_kernels=True), "CPU only"),
    (dict(loop="eager"), "unknown training loop"),
    (dict(batch_shards=0), "at least 1"),
])
def test_impossible_plans_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        ExecutionPlan(**settings)


def test_stock_fit_takes_no_jit_choice():
    with pytest.raises(ValueError, match="compiled loop"):
        execution.decide("lenet5", loop="keras", jit_compile=True)


def test_describe_says_every_choice():
    text = ExecutionPlan(fused_kernels=True, batch_shards=2, intra_op_threads=1, inter_op_threads=2).describe()
    assert text == ("CPU · compiled loop · no XLA · fused conv-pool kernels · batches in 2 shards side by side · "
                    "1 thread(s) per operation, 2 operation(s) at once")


def test_a_model_built_for_another_forward_pass_is_refused_by_the_trainer(mnist_small):
    model = build_model("lenet5", mnist_small.input_shape, execution=Execution(batch_shards=2))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="build it with build_model"):
        Trainer(model, mnist_small.x_train, mnist_small.y_train, batch_size=60, plan=ExecutionPlan())


def test_a_model_of_ones_own_trains_as_it_was_built():
    """`plan_for` keeps the model's own forward pass and takes the tables' XLA choice for its architecture."""
    sharded = build_model("lenet5", (28, 28, 1), execution=Execution(batch_shards=2))
    assert plan_for(sharded).model_execution == sharded.execution and not plan_for(sharded).jit_compile
    dense = build_model("lenet300_100", (28, 28, 1))
    assert plan_for(dense).jit_compile == execution.decide("lenet300_100").jit_compile
    assert plan_for(dense).sparse_kernels == execution.decide("lenet300_100").sparse_kernels
    assert dataclasses.replace(plan_for(dense), jit_compile=False, sparse_kernels=False) == ExecutionPlan(
        device=plan_for(dense).device)


@on_measured_cpu
def test_apply_threads_sets_the_pools_of_a_fresh_process():
    assert apply_in_fresh_process("lenet_conv") == {"shards": 2, "plan_intra": 1, "intra": 1, "inter": 2}


def test_other_architectures_keep_tensorflows_pools():
    for arch in ("lenet300_100", "conv6"):
        assert apply_in_fresh_process(arch) == {"shards": 1, "plan_intra": None, "intra": 0, "inter": 0}


@on_measured_cpu
def test_too_late_to_set_the_pools_means_no_shards():
    """Sharding under the default pools is slower than not sharding: a started runtime gets neither."""
    assert apply_in_fresh_process("lenet5", start_runtime_first=True) == {
        "shards": 1, "plan_intra": None, "intra": 0, "inter": 0}
