"""Running a sweep: ``python -m vae_jax sweep <sweep> [--shard i/n] [--vmap auto|on|off]``.

Each point trains in ``<root>/<point name>/`` (default root ``runs/sweeps/<sweep>``) exactly as
``make train`` would train it there, so a rerun skips finished points and resumes unfinished
ones from their checkpoints. Points whose configs differ only in ``seed`` and
``model.noise_scale`` (same array shapes) train together as one compiled program, the train
step ``jax.vmap``-ed over their states, keys and noise scales (see :func:`vmap_pays_off`).
``--shard i/n`` takes every n-th point from the i-th; the summary then covers every point of
the sweep that has finished, whichever process trained it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax

from vae_jax.config.keys import to_json_dict
from vae_jax.core.sharding import make_mesh
from vae_jax.data.datasets import load_dataset
from vae_jax.data.images import Dataset
from vae_jax.errors import ConfigError, NonFiniteError
from vae_jax.outputs.workdir import Workdir
from vae_jax.sweeps import grid as sweep_grid
from vae_jax.sweeps import summary as sweep_summary
from vae_jax.sweeps.grid import Point
from vae_jax.training.run import (
    Run,
    check_runs,
    is_finished,
    together_key,
    train_and_evaluate,
    train_together,
)

VMAP_MODES = ("auto", "on", "off")


def default_root(sweep: str) -> Path:
    return Path("runs") / "sweeps" / sweep


def vmap_pays_off(platform: str) -> bool:
    """``--vmap auto``: vmap on accelerators, not on CPU. ``make bench-sweep`` on 2 CPU cores
    (README, "Sweeps") measured no gain there for either model: one model's step already keeps
    both cores busy. On a GPU or TPU a step of these small models leaves the device mostly idle;
    that is where training several together should pay (not measured yet: no GPU was lent)."""
    return platform != "cpu"


def plan(
    points: list[Point], root: Path, vmap: str, platform: str
) -> tuple[list[Point], list[list[Point]]]:
    """``(finished points, units to train)``; a unit is one point or a group to vmap."""
    finished, todo = [], []
    for p in points:
        run = Workdir(root / p.name)
        done = is_finished(run.history(), run.evaluated_step(), p.config)
        (finished if done else todo).append(p)
    units: dict[str, list[Point]] = {}
    for p in todo:
        together = vmap == "on" or (vmap == "auto" and vmap_pays_off(platform))
        key = together_key(p.config) if together else p.name
        units.setdefault(key, []).append(p)
    return finished, list(units.values())


def _eta(done: int, total: int, seconds: float) -> str:
    if done == 0:
        return "ETA unknown"
    left = seconds / done * (total - done)
    return f"ETA {left / 60:.0f} min" if left >= 60 else f"ETA {left:.0f} s"


def run_sweep(
    name: str,
    overrides: Sequence[str] = (),
    shard: str = "0/1",
    vmap: str = "auto",
    root: str | Path | None = None,
    load_data: Callable | None = None,
) -> Path:
    """Train this shard's unfinished points, then write the summary of every finished point.
    Returns the sweep's root folder. ``load_data(data_config)`` replaces
    :func:`vae_jax.data.load_dataset` (tests)."""
    if vmap not in VMAP_MODES:
        raise ConfigError(f"--vmap {vmap!r}: use one of {', '.join(VMAP_MODES)}")
    sweep_name, spec = sweep_grid.load_sweep_spec(name)
    sweep = sweep_grid.expand(sweep_name, spec, overrides)
    i, n = sweep_grid.parse_shard(shard)
    root = Path(root) if root is not None else default_root(sweep_name)
    mine = sweep_grid.shard(sweep.points, i, n)
    mesh = make_mesh()
    for p in mine:  # refuse a clash or a batch the devices do not divide before training
        check_runs([Run(p.config, root / p.name)], mesh, force=False)
    finished, units = plan(mine, root, vmap, jax.default_backend())
    total, done = len(mine), len(finished)
    print(
        f"sweep {sweep_name}: {len(sweep.points)} points, shard {i}/{n} has {total}; "
        f"{done} finished, {total - done} to train in {len(units)} unit(s) -> {root}"
    )
    datasets: dict[str, Dataset] = {}
    failed: list[str] = []
    start, trained = time.monotonic(), 0
    for unit in units:
        data_key = json.dumps(to_json_dict(unit[0].config.data), sort_keys=True)
        if data_key not in datasets:
            datasets[data_key] = (load_data or load_dataset)(unit[0].config.data)
        names = ", ".join(p.name for p in unit)
        how = f"{len(unit)} together under jax.vmap" if len(unit) > 1 else "1 point"
        print(f"[sweep {sweep_name}] {done + 1}/{total}: {names} ({how})", flush=True)
        failed += _train_unit(unit, root, datasets[data_key], sweep_name)
        done, trained = done + len(unit), trained + len(unit)
        elapsed = time.monotonic() - start
        print(
            f"[sweep {sweep_name}] {done}/{total} points done, {elapsed / 60:.1f} min, "
            f"{_eta(trained, total - len(finished), elapsed)}",
            flush=True,
        )
    print(sweep_summary.write_summary(root, sweep))
    if failed:
        raise NonFiniteError(
            f"sweep {sweep_name}: non-finite loss in {', '.join(failed)} (see above); the other "
            "points finished and are in the summary"
        )
    return root


def _train_unit(unit: list[Point], root: Path, dataset: Dataset, sweep: str) -> list[str]:
    """Train a unit's points (together if there are several); return those that failed."""
    singles = [unit]
    if len(unit) > 1:
        try:
            runs = [Run(p.config, root / p.name, p.name) for p in unit]
            singles = [] if train_together(runs, dataset) is not None else [[p] for p in unit]
        except NonFiniteError as e:
            print(f"{e}\nRetraining these points one by one from their checkpoints.")
            singles = [[p] for p in unit]
    failed = []
    for (p,) in singles:
        try:
            train_and_evaluate(p.config, root / p.name, dataset=dataset, name=p.name)
        except NonFiniteError as e:
            print(f"[sweep {sweep}] {p.name} failed: {e}")
            failed.append(p.name)
    return failed
