"""Independent trials on parallel worker processes, with Ray (`run.py --workers N`, or `--ray-address ADDR` for an
existing cluster whose nodes share the run directory's filesystem).

Each trial is one Ray task: a worker process with one TensorFlow thread (on small networks, one single-thread
worker per core beats one process using every core) takes the driver's data from Ray's object store and runs the
trial function the controller gives (`controller.run_trial_in_worker`) into the same run folder, with the same
layout and finish markers as a serial run, so the results are those of a serial run on one thread and a killed
study resumes as usual. A worker that dies costs only its unfinished unit's training since its last checkpoint: Ray
runs the task again, and it resumes from there. The driver holds the run's lock throughout. Ray is imported only
here, and only for runs that ask for workers.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
from typing import Callable, Sequence

from lottery_keras.config import Experiment

RAY_DEFAULT_PORT = 6379


def _ray():
    try:
        import ray
    except ImportError:
        raise ValueError("--workers and --ray-address need Ray: pip install 'ray' (or run without them)") from None
    return ray


def _check_reachable(address: str, timeout: float = 3.0) -> None:
    """Fail at once, naming the address, where Ray itself would wait minutes for a cluster that is not there."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    host, port = (host, port) if host else (port, str(RAY_DEFAULT_PORT))
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot reach the Ray cluster at {address} ({err}); start it with `ray start --head`, "
                         "or check --ray-address") from None


def run_trials(run_trial: Callable[..., int], experiment: Experiment, run_dir: os.PathLike, splits, options,
               names: Sequence[str]) -> None:
    """Run `run_trial(experiment, run_dir, splits, options, names, trial)` for each of `options.trials` as
    parallel Ray tasks (`options.workers` local workers, or the cluster at `options.ray_address`); returns when all
    have finished, raising the first failure as the worker raised it."""
    ray = _ray()
    if options.ray_address:
        _check_reachable(options.ray_address)
    init = dict(address=options.ray_address) if options.ray_address else dict(num_cpus=options.workers)
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR", **init)
    try:
        task = ray.remote(num_cpus=1, max_retries=2)(run_trial)
        shared = ray.put(splits)  # once, not once per task
        pending = [task.remote(experiment, str(run_dir), shared, dataclasses.replace(options, plan=None), list(names),
                               trial)
                   for trial in options.trials]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                trial = ray.get(done[0])
            except ray.exceptions.RayTaskError as err:
                cause = getattr(err, "cause", None)
                raise cause if isinstance(cause, Exception) else RuntimeError(str(err).splitlines()[0]) from None
            if options.verbose:
                print(f"trial {trial} finished", file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
