"""The CPU thread plan: which architectures shard, and that `configure` sets the process's thread pools.

Thread pools are fixed once TensorFlow's runtime starts, so each check runs in a fresh Python process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lottery_keras import parallelism

CHECK = """
import json, sys
import tensorflow as tf
from lottery_keras import parallelism
arch, start_runtime_first = sys.argv[1], sys.argv[2] == "1"
if start_runtime_first:
    tf.constant(1.0) + 1.0
plan = parallelism.configure(arch)
print(json.dumps({"plan": plan and plan.__dict__, "shards": parallelism.batch_shards(arch),
                  "intra": tf.config.threading.get_intra_op_parallelism_threads(),
                  "inter": tf.config.threading.get_inter_op_parallelism_threads()}))
"""

on_measured_cpu = pytest.mark.skipif(parallelism.cpu_cores() != parallelism.MEASURED_CORES,
                                     reason=f"the plan is measured for {parallelism.MEASURED_CORES} cores")


def configure_in_fresh_process(arch: str, start_runtime_first: bool = False) -> dict:
    result = subprocess.run([sys.executable, "-c", CHECK, arch, str(int(start_runtime_first))],
                            capture_output=True, text=True, timeout=300, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


@on_measured_cpu
def test_lenet5_gets_two_shards_and_one_thread_per_operation():
    state = configure_in_fresh_process("lenet_conv")  # aliases resolve
    assert state == {"plan": {"batch_shards": 2, "intra_op_threads": 1, "inter_op_threads": 2},
                     "shards": 2, "intra": 1, "inter": 2}


def test_other_architectures_keep_tensorflows_defaults():
    for arch in ("lenet300_100", "conv6"):
        assert configure_in_fresh_process(arch) == {"plan": None, "shards": 1, "intra": 0, "inter": 0}


@on_measured_cpu
def test_too_late_to_configure_means_no_shards():
    """Sharding under the default pools is slower than not sharding: a started runtime gets neither."""
    assert configure_in_fresh_process("lenet5", start_runtime_first=True) == {
        "plan": None, "shards": 1, "intra": 0, "inter": 0}


def test_this_test_process_does_not_shard():
    assert parallelism.batch_shards("lenet5") == 1
