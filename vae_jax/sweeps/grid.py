"""Sweeps as data: a sweep file, its grid expanded into named points, and shards of it.

A sweep is ``experiments/sweeps/<name>.py`` with ``get_sweep()`` returning::

    {"experiment": "mnist_z20",                     # the base experiment
     "grid": {"model.latent_dim": [2, 5], "model.noise_scale": [0.5, 1.0], "seed": [0, 1]},
     "overrides": {"eval.iwae_test_size": 2000}}    # optional: set for every point

Every combination of the grid's values is a point (the first key varies slowest). A point's
name lists its grid values, ``latent_dim=2,noise_scale=0.5,seed=0``, so it is stable when
values are added to the grid; ``seed`` is always part of the grid (default: the base seed).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import ml_collections

from vae_jax.config.experiments import load_experiment, override, override_keys
from vae_jax.config.keys import with_values
from vae_jax.config.user_files import (
    experiments_dir,
    find_file,
    one_line,
    python_files,
    run_user_file,
)
from vae_jax.core.settings import flatten
from vae_jax.errors import ConfigError

SWEEP_KEYS = ("experiment", "grid", "overrides")


class Point(NamedTuple):
    name: str
    values: dict[str, Any]  # the grid values of this point, by dotted key
    config: ml_collections.ConfigDict


class Sweep(NamedTuple):
    name: str
    experiment: str
    points: list[Point]


def sweeps_dir() -> Path:
    return experiments_dir() / "sweeps"


def available_sweeps(directory: Path | None = None) -> list[str]:
    return python_files(directory or sweeps_dir())


def load_sweep_spec(name: str) -> tuple[str, dict]:
    """``(sweep name, get_sweep())`` of a sweep (a name in ``experiments/sweeps/`` or a path)."""
    path = find_file(name, sweeps_dir(), "sweep")
    module = run_user_file(path, f"vae_jax_sweep_{path.stem}", "the sweep file")
    if not hasattr(module, "get_sweep"):
        raise ConfigError(f"sweep file {path} has no get_sweep() function")
    try:
        return path.stem, module.get_sweep()
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"sweep file {path}: get_sweep() failed: {one_line(e)}") from None


def _format_value(value: Any) -> str:
    if isinstance(value, tuple | list):
        return "-".join(map(_format_value, value))
    text = repr(value) if isinstance(value, float) else str(value)
    if not text or any(c in text for c in "/\\,= \n") or text.startswith("."):
        raise ConfigError(f"grid value {value!r} cannot be part of a folder name")
    return text


def short_names(keys: list[str]) -> dict[str, str]:
    """Each key's last component, or the whole key where two keys share it."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


def point_name(values: dict[str, Any]) -> str:
    short = short_names(list(values))
    return ",".join(f"{short[k]}={_format_value(v)}" for k, v in values.items())


def expand(name: str, spec: dict, overrides: Sequence[str] = ()) -> Sweep:
    """The sweep's points, each config validated: a bad grid, an unknown key or a bad value
    raises :class:`ConfigError` before anything runs. ``overrides`` (``--config.KEY=VALUE``
    arguments) apply to every point and may not name a grid key."""
    source = f"sweep {name}"
    if not isinstance(spec, dict) or set(spec) - set(SWEEP_KEYS) or "grid" not in spec:
        raise ConfigError(
            f"{source}: get_sweep() must return a dict with 'experiment', 'grid' and optionally "
            f"'overrides' (got {sorted(spec) if isinstance(spec, dict) else type(spec).__name__})"
        )
    for part in ("grid", "overrides"):
        if not isinstance(spec.get(part, {}), dict):
            raise ConfigError(
                f"{source}: {part!r} must be a dict of config keys, got {spec[part]!r}"
            )
    experiment = spec.get("experiment", "")
    base = load_experiment(experiment)
    grid = dict(spec["grid"])
    if not grid:
        raise ConfigError(f"{source}: the grid is empty; give at least one key and its values")
    for key, values in grid.items():
        if key not in flatten(base):
            with_values(base, {key: None}, source)  # raises, naming valid keys
        if not isinstance(values, list | tuple) or not values:
            raise ConfigError(
                f"{source}: grid[{key!r}] must be a non-empty list of values, got {values!r}"
            )
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{source}: grid[{key!r}] repeats a value: {values!r}")
    grid.setdefault("seed", [base.seed])
    fixed = with_values(base, dict(spec.get("overrides", {})), source)
    clash = sorted(set(override_keys(overrides)) & set(grid))
    if clash:
        raise ConfigError(
            f"--config.{clash[0]} is a grid key of sweep {name}; edit the sweep's grid "
            "instead (or copy the sweep file)"
        )
    fixed = override(fixed, overrides)
    points = []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo, strict=True))
        pname = point_name(values)
        points.append(Point(pname, values, with_values(fixed, values, f"{source}, {pname}")))
    return Sweep(name, experiment, points)


def parse_shard(text: str) -> tuple[int, int]:
    """``'i/n'`` -> ``(i, n)`` with ``0 <= i < n``."""
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"--shard {text!r}: need n >= 1 and 0 <= i < n")
    return i, n


def shard(points: list[Point], i: int, n: int) -> list[Point]:
    """Every n-th point from the i-th: n machines with i = 0..n-1 cover the sweep once."""
    return points[i::n]
