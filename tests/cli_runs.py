"""Helpers for tests that run `run.py` in a subprocess and kill it at a chosen point."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def start_run(*args: str, output_dir: Path, quiet: bool = True) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "run.py"), *args, "--output-dir", str(output_dir),
                             *(["--quiet"] if quiet else [])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())


def kill_once_written(process: subprocess.Popen, folder: Path, pattern: str, poll: float = 0.05,
                      timeout: float = 600) -> None:
    """SIGKILL `process` as soon as a file matching `pattern` exists under `folder`."""
    deadline = time.time() + timeout
    while not list(folder.glob(pattern)):
        assert process.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(poll)
    process.send_signal(signal.SIGKILL)
    process.wait()
