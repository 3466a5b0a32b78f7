"""The devices: multi-process (multi-host) start-up, and compiling for them (the mesh, the
shardings and the check that a batch divides over the devices are :mod:`vae_jax.core.sharding`)."""

from __future__ import annotations

import os
import sys
import threading

import jax

from vae_jax.errors import ConfigError, DistributedError


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
    except ValueError as e:  # JAX found no cluster and was not told enough to form one
        raise DistributedError(
            f"cannot start a multi-process run: {e} Give every process --coordinator HOST:PORT "
            "--num-processes N --process-id I (or $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, "
            "$JAX_PROCESS_ID), or start them under SLURM, Open MPI or on a TPU pod, where "
            "--distributed alone finds the others"
        ) from None
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


# XLA:CPU's YNNPACK library fusions run these small convs and matmuls 1.5-3x slower than its
# Eigen kernels on the 2-core AVX2 machine we measured (README, "Performance").
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def compile_fast(lowered: jax.stages.Lowered) -> jax.stages.Compiled:
    """``lowered.compile()``, with :data:`CPU_COMPILER_OPTIONS` on CPU when this jaxlib knows
    them (the plain compile otherwise)."""
    if jax.default_backend() == "cpu":
        try:
            return lowered.compile(compiler_options=CPU_COMPILER_OPTIONS)
        except Exception as e:  # an XLA build without the option: "No such compile option"
            if "option" not in str(e).lower():
                raise
    return lowered.compile()
