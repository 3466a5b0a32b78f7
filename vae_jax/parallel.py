"""Data parallelism over every device: a 1-D mesh, batch sharded, everything else replicated."""

from __future__ import annotations

import os
import sys
import threading

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from vae_jax.errors import ConfigError, DistributedError

AXIS = "data"


def make_mesh(devices: list | None = None) -> Mesh:
    """A mesh over all devices (of every process) with the one axis ``'data'``."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (AXIS,), axis_types=(AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the devices."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_divisible(batch_size: int, mesh: Mesh, key: str) -> None:
    n = mesh.devices.size
    if batch_size % n:
        ok = [b for b in range(n, 4 * max(batch_size, n), n)][:3]
        raise ConfigError(
            f"{key}={batch_size} does not divide by the {n} devices "
            f"({jax.devices()[0].platform}); use a multiple of {n}, e.g. " + ", ".join(map(str, ok))
        )


def initialize_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_seconds: int = 300,
) -> None:
    """Join a multi-process (multi-host) run: ``jax.distributed.initialize`` with these values,
    falling back to ``$JAX_COORDINATOR_ADDRESS``, ``$JAX_NUM_PROCESSES``, ``$JAX_PROCESS_ID``,
    and, where all are unset, to JAX's cluster auto-detection (SLURM, Open MPI, TPU pods).
    The values are checked first; the processes wait ``timeout_seconds`` for each other. On
    CPU they exchange gradients over gloo."""
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = _int_from_env("JAX_NUM_PROCESSES")
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = _int_from_env("JAX_PROCESS_ID")
    check_distributed_args(coordinator, num_processes, process_id)
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # JAX aborts the whole process when peers do not come in time (a C++ fatal error, rc 134,
    # no Python exception); a watchdog says what is wrong first, and exits with 2.
    who = "process 0" if process_id == 0 else f"process {process_id}"
    missing = (
        f"the other {num_processes - 1} process(es) did not all connect"
        if process_id == 0 and num_processes
        else "the coordinator (process 0) could not be reached, or not every process came"
    )
    watchdog = threading.Timer(
        timeout_seconds, _give_up, (f"{who} waited {timeout_seconds} s at "
                                    f"{coordinator or '(auto-detected)'}: {missing}",)
    )  # fmt: skip
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(
            coordinator, num_processes, process_id, initialization_timeout=timeout_seconds + 60
        )
    finally:
        watchdog.cancel()


def _give_up(reason: str) -> None:
    print(
        f"error: {reason}. Start every process with the same --coordinator and "
        "--num-processes and its own --process-id 0..n-1 (or wait longer: --peer-timeout)",
        file=sys.stderr,
        flush=True,
    )
    os._exit(DistributedError.exit_code)


def check_distributed_args(
    coordinator: str | None, num_processes: int | None, process_id: int | None
) -> None:
    """Refuse values that cannot make a run, before anything connects."""
    if coordinator is not None:
        host, sep, port = coordinator.rpartition(":")
        if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(
                f"--coordinator {coordinator!r}: expected HOST:PORT, e.g. 10.0.0.1:12355"
            )
    if (num_processes is None) != (process_id is None) and coordinator is not None:
        raise ConfigError("give both --num-processes and --process-id (or neither, to auto-detect)")
    if num_processes is not None and num_processes < 1:
        raise ConfigError(f"--num-processes {num_processes}: expected 1 or more")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ConfigError(
            f"--process-id {process_id}: expected 0..{num_processes - 1} for {num_processes} "
            "processes"
        )


def _int_from_env(name: str) -> int:
    try:
        return int(os.environ[name])
    except ValueError:
        raise ConfigError(f"${name}={os.environ[name]!r}: expected an integer") from None
