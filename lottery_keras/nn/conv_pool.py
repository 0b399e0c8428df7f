"""Fused CPU kernels for a convolution block: stride-1 convolution → bias → ReLU → 2×2 max-pool.

TensorFlow runs that block as five operations forward and six backward, each over every position of the
convolution's output. `conv_relu_pool` keeps TensorFlow's (oneDNN's) convolution and replaces the rest with the
custom operations of `csrc/conv_pool.cc`: one pass computes bias, ReLU and the pool and records which position of
each 2×2 window won; the backward pass scatters each pooled gradient from that one position straight into the
kernel, bias and input gradients. At most one convolution output in four receives a gradient, so this does at
most a quarter of the backward arithmetic, in two operations instead of six (what that saves:
benchmarks/README.md). Results equal the layers' own up to float summation order (tests/test_conv_pool.py).

The C++ source is compiled on first use against the installed TensorFlow with the system's C++ compiler (`CXX`,
default `g++`; about 10 s) and cached under `LOTTERY_KERAS_CACHE_DIR` (default `~/.cache/lottery_keras`), keyed
by the source, the TensorFlow version and the flags. Where it cannot be built, `native_ops()` warns once and
returns None, and the models run the plain layers; `LOTTERY_KERAS_NATIVE=0` turns the kernels off.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import tensorflow as tf

SOURCE = Path(__file__).with_name("csrc") / "conv_pool.cc"


def cache_dir() -> Path:
    return Path(os.environ.get("LOTTERY_KERAS_CACHE_DIR") or Path.home() / ".cache" / "lottery_keras")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def _arch_flags() -> list[str]:
    """AVX2 + FMA where the CPU has them. Not `-march=native`: on this project's AVX-512 machines the kernels'
    512-bit code ran much slower than their 256-bit code (benchmarks/README.md), and TensorFlow's Eigen headers do
    not compile with GCC 12 under `-march=native` (AVX512-FP16)."""
    if platform.machine() in ("x86_64", "AMD64") and {"avx2", "fma"} <= _cpu_flags():
        return ["-march=x86-64-v3"]
    return []


def _compile_command(compiler: str, output: Path) -> list[str]:
    return [compiler, "-shared", "-fPIC", "-O3", "-w", *_arch_flags(), str(SOURCE), "-o", str(output),
            *tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags()]


def build_library() -> Path:
    """The compiled op library, built now unless this source, TensorFlow and flags are already in the cache.
    Raises RuntimeError, naming the fix, when there is no compiler or the build fails."""
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler {compiler!r} on PATH (install g++, or set CXX)")
    key = hashlib.sha256("\n".join([SOURCE.read_text(), tf.__version__,
                                    *_compile_command(compiler, Path("out"))]).encode()).hexdigest()[:16]
    target = cache_dir() / f"conv_pool-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")  # concurrent builds each write their own
    print(f"lottery_keras: compiling the fused conv-pool kernels into {target} (once, ~10 s)", file=sys.stderr)
    build = subprocess.run(_compile_command(compiler, partial), capture_output=True, text=True)
    if build.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"{compiler} failed to compile {SOURCE.name}:\n{build.stderr[-2000:]}")
    os.replace(partial, target)
    return target


@functools.cache
def native_ops():
    """The loaded custom operations, or None (after one warning saying why) where they cannot be built."""
    if os.environ.get("LOTTERY_KERAS_NATIVE", "1") == "0":
        return None
    try:
        return tf.load_op_library(str(build_library()))
    except (RuntimeError, OSError, tf.errors.OpError) as error:
        warnings.warn(f"lottery_keras: fused conv-pool kernels unavailable, training runs TensorFlow's plain ops "
                      f"(slower): {error}", RuntimeWarning, stacklevel=2)
        return None


def available() -> bool:
    return native_ops() is not None


def conv_relu_pool(x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor, padding: str) -> tf.Tensor:
    """max_pool_2x2(relu(conv2d(x, kernel, stride 1, padding) + bias)), NHWC, float32, square kernel, with the
    fused gradient. Requires `available()`."""
    ops = native_ops()
    if ops is None:
        raise RuntimeError("the fused conv-pool kernels are not available here (see the warning above)")
    padding = padding.upper()

    @tf.custom_gradient
    def block(x, kernel, bias):
        pooled, window = ops.lottery_bias_relu_max_pool(tf.nn.conv2d(x, kernel, 1, padding), bias)

        def gradient(d_pooled):
            d_kernel, d_bias = ops.lottery_conv_pool_filter_grad(x, window, d_pooled, kernel_size=kernel.shape[0],
                                                                 padding=padding)
            d_x = ops.lottery_conv_pool_input_grad(kernel, window, d_pooled, tf.shape(x), padding=padding)
            return d_x, d_kernel, d_bias  # TensorFlow prunes d_x where nothing needs it (the first layer)
        return pooled, gradient

    return block(x, kernel, bias)
