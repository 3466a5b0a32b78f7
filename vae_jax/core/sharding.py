"""Data parallelism over every device: a 1-D mesh, the batch sharded (so it must divide over
the devices), everything else replicated."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

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
    """Raise ValueError, naming config ``key`` and a few sizes that do, unless ``batch_size``
    divides over the mesh's devices."""
    n = mesh.devices.size
    if batch_size % n:
        ok = [b for b in range(n, 4 * max(batch_size, n), n)][:3]
        raise ValueError(
            f"{key}={batch_size} does not divide by the {n} devices "
            f"({jax.devices()[0].platform}); use a multiple of {n}, e.g. " + ", ".join(map(str, ok))
        )
