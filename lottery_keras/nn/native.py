"""The package's C++ custom operations (`csrc/*.cc`): built on first use, loaded once.

The sources are compiled together against the installed TensorFlow with the system's C++ compiler (`CXX`, default
`g++`; about 10-20 s) into one library cached under `LOTTERY_KERAS_CACHE_DIR` (default `~/.cache/lottery_keras`),
keyed by the sources, the TensorFlow version and the flags. Where it cannot be built, `native_ops()` warns once
and returns None, and callers run TensorFlow's own operations; `LOTTERY_KERAS_NATIVE=0` turns the kernels off.
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

SOURCES = sorted((Path(__file__).with_name("csrc")).glob("*.cc"))


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
    return [compiler, "-shared", "-fPIC", "-O3", "-fopenmp-simd", "-w", *_arch_flags(), *map(str, SOURCES),
            "-o", str(output),
            *tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags()]


def build_library() -> Path:
    """The compiled op library, built now unless this source, TensorFlow and flags are already in the cache.
    Raises RuntimeError, naming the fix, when there is no compiler or the build fails."""
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler {compiler!r} on PATH (install g++, or set CXX)")
    key = hashlib.sha256("\n".join([*(source.read_text() for source in SOURCES), tf.__version__,
                                    *_compile_command(compiler, Path("out"))]).encode()).hexdigest()[:16]
    target = cache_dir() / f"lottery_keras_ops-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")  # concurrent builds each write their own
    print(f"lottery_keras: compiling the native kernels into {target} (once, ~20 s)", file=sys.stderr)
    build = subprocess.run(_compile_command(compiler, partial), capture_output=True, text=True)
    if build.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"{compiler} failed to compile {', '.join(s.name for s in SOURCES)}:\n"
                           f"{build.stderr[-2000:]}")
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
        warnings.warn(f"lottery_keras: native kernels unavailable, training runs TensorFlow's plain ops "
                      f"(slower): {error}", RuntimeWarning, stacklevel=2)
        return None


def available() -> bool:
    return native_ops() is not None
