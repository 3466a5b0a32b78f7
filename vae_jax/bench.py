"""``python -m vae_jax.bench`` (``make bench``): training throughput of the experiments on
whatever backend JAX finds.

Each (experiment, batch size) is measured in a fresh process, so that compile time, the time
from the command's start to the first finished step and the peak host memory are its own. The
process runs the real training loop (:func:`vae_jax.training.steps.run_steps`: data on
the device, the step compiled once, no host syncs but once per repetition): one warm-up
repetition, then ``--reps`` repetitions of ``--steps`` steps. Prints a table; ``--json PATH``
also writes the records. Nothing is written anywhere else. Config overrides apply to every
experiment, e.g. ``--config.model.conv_impl=native``. Each experiment runs at its own batch size
unless ``--batch`` names others.

``--peer PYTHON`` (``make bench`` passes ``.venv-torch/bin/python`` once ``make peer-env`` has
made it) also measures the same model in PyTorch eager with that interpreter
(``benchmarks/pytorch_seed_vae.py``, channels-last and NCHW) right after each vae_jax
measurement, ``--rounds`` times in turn (vae_jax, PyTorch, vae_jax, PyTorch, ...), and prints
vae_jax's images/s over the faster PyTorch layout's, round by round. Experiments whose model the
peer does not have (anything but the conv, one-hidden-layer ReLU MLP and resnet architectures
with the plain ELBO on 28x28x1 images) get no peer row.

``--models 1 2 3`` (``make bench-sweep``) also measures K models trained together, as a sweep
trains the points that differ only in seed and noise scale: the step ``jax.vmap``-ed over K
states (seeds 0..K-1, noise scales from 0.5 to 2); images/s then counts every model's images.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

DEFAULT_EXPERIMENTS = ("mnist_z20", "mnist_mlp_z20", "bmnist_resnet")
CPU_IMAGES_PER_REP = 12_800
PEER_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "pytorch_seed_vae.py"


def _dataset(config, data: str):
    """The training set named by ``data`` (mnist / synthetic / auto), and what it was."""
    import numpy as np

    from vae_jax.data.datasets import load_dataset
    from vae_jax.data.images import Dataset
    from vae_jax.errors import DataError

    if data != "synthetic":
        try:
            return load_dataset(config.data), "mnist"
        except (DataError, ImportError):  # no prepared MNIST or no TFDS here
            if data == "mnist":
                raise
    rng = np.random.default_rng(0)  # the speed does not depend on the pixel values
    images = rng.integers(0, 256, (60_000, 28, 28, 1), dtype=np.uint8)
    labels = np.zeros(60_000, np.int32)
    return Dataset(images, labels, images[:1000], labels[:1000]), "synthetic"


class _Trainer(NamedTuple):
    """The real training loop's parts, compiled step and training images (on the devices)."""

    parts: Any
    compiled: Any
    images: Any


def _trainer(config, dataset, models: int):
    """The real training loop's parts and compiled step for ``models`` models (seeds 0..K-1;
    noise scales from 0.5 to 2 when several), and their fresh state and sums."""
    import jax
    import numpy as np

    from vae_jax.core.sharding import make_mesh, replicated
    from vae_jax.core.train_step import zero_sums
    from vae_jax.parts import build_parts, init_state
    from vae_jax.training.steps import compile_step, join_runs

    mesh = make_mesh()
    parts = build_parts(config, dataset.image_shape, mesh, len(dataset.train_images))
    state = join_runs([init_state(parts, seed) for seed in range(models)])
    sums = jax.device_put(join_runs([zero_sums()] * models), replicated(mesh))
    images = jax.device_put(dataset.train_images, replicated(mesh))
    scales = [float(s) for s in np.geomspace(0.5, 2.0, models)]
    scales = scales if models > 1 else [config.model.noise_scale]
    compiled = compile_step(parts, state, sums, images, scales)
    return _Trainer(parts, compiled, images), state, sums


def _run_steps(trainer: _Trainer, state, sums, step: int, steps: int) -> tuple:
    """``steps`` steps from global ``step``: ``(state, sums, step, seconds)``."""
    from vae_jax.training.steps import run_steps

    parts, compiled, images = trainer
    target, seconds = step + steps, 0.0
    while step < target:
        epoch, start = divmod(step, parts.steps_per_epoch)
        segment = run_steps(parts, compiled, state, sums, images, epoch + 1, start,
                            lambda _: False, until=target)  # fmt: skip
        state, sums, step = segment.state, segment.sums, segment.step
        seconds += segment.seconds
    return state, sums, step, seconds


def measure(
    experiment: str,
    batch_size: int,
    steps: int,
    reps: int,
    data: str,
    overrides: list[str] = (),
    models: int = 1,
) -> dict:
    """One configuration, in this process (see the module docstring)."""
    import jax
    import jax.numpy as jnp

    from vae_jax.config.experiments import load_experiment
    from vae_jax.config.keys import with_values
    from vae_jax.core import flops
    from vae_jax.core.models import ARCHITECTURES, make_model

    config = load_experiment(experiment, overrides)
    config = with_values(config, {"train.batch_size": batch_size}, "bench")
    dataset, data_kind = _dataset(config, data)
    trainer, state, sums = _trainer(config, dataset, models)
    if steps <= 0:
        cpu = jax.default_backend() == "cpu"
        steps = -(-CPU_IMAGES_PER_REP // batch_size) if cpu else trainer.parts.steps_per_epoch
    state, sums, step, _ = _run_steps(trainer, state, sums, 0, 1)  # the first step
    first_step_done = time.time()
    rates = []
    for _ in range(reps + 1):  # a warm-up, then the timed repetitions
        state, sums, step, seconds = _run_steps(trainer, state, sums, step, steps)
        rates.append(steps * batch_size * models / seconds)
    rates = rates[1:]
    median = statistics.median(rates)
    own = ARCHITECTURES[config.model.arch].settings
    native = {k: "native" for k in own if k == "conv_impl"}  # count the math, not the zero taps
    counted = make_model(dataset.image_shape, **{**config.model, **native})
    train_flops = flops.train_flops(counted, dataset.image_shape)
    return {
        "experiment": experiment,
        "arch": config.model.arch,
        "arch_settings": ", ".join(f"{k}={config.model[k]}" for k in own),
        "batch_size": batch_size,
        "models": models,
        **_device_record(),
        "data": data_kind,
        "steps_per_rep": steps,
        "reps": reps,
        "images_per_sec_median": median,
        "images_per_sec_min": min(rates),
        "images_per_sec_max": max(rates),
        "compile_seconds": trainer.compiled.seconds,
        "first_step_unix_time": first_step_done,
        "train_mflop_per_image": train_flops / 1e6,
        "gflops_per_sec": median * train_flops / 1e9,
        "final_step_finite": bool(jnp.all(sums.first_bad < 0)),
    }


def _device_record() -> dict:
    """The backend and its device, and the peak memory so far."""
    import jax

    from vae_jax.outputs.metrics import peak_host_memory_bytes

    device = jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return {
        "backend": jax.default_backend(),
        "device": device.device_kind,
        "devices": jax.device_count(),
        "peak_host_memory_mib": peak_host_memory_bytes() / 2**20,
        "peak_device_memory_mib": (stats or {}).get("peak_bytes_in_use", 0) / 2**20 or None,
    }


def _child(args: argparse.Namespace, overrides: list[str]) -> int:
    experiment, batch, models = args.one[0], int(args.one[1]), int(args.one[2])
    record = measure(experiment, batch, args.steps, args.reps, args.data, overrides, models)
    print("BENCH " + json.dumps(record), flush=True)
    return 0


def _run_one(
    experiment: str, batch: int, models: int, args: argparse.Namespace, overrides: list[str]
) -> dict:
    cmd = [sys.executable, "-m", "vae_jax.bench", "--one", experiment, str(batch), str(models)]
    cmd += ["--steps", str(args.steps), "--reps", str(args.reps), "--data", args.data]
    cmd += overrides
    env = {**os.environ, "TQDM_DISABLE": "1"}
    started = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in out.stdout.splitlines() if line.startswith("BENCH ")]
    if out.returncode != 0 or not lines:
        raise SystemExit(
            f"benchmark of {experiment} at batch {batch} ({models} models) failed "
            f"({out.returncode}):\n" + out.stderr[-3000:]
        )
    record = json.loads(lines[-1].removeprefix("BENCH "))
    record["start_to_first_step_seconds"] = record.pop("first_step_unix_time") - started
    return record


def peer_args(experiment: str, overrides: list[str]) -> list[str] | None:
    """The PyTorch peer's arguments for an experiment's model, or None where it has none."""
    from vae_jax.config.experiments import load_experiment

    config = load_experiment(experiment, overrides)
    m, plain = config.model, config.objective.name == "elbo" and config.objective.k == 1
    plain = plain and m.likelihood == "bernoulli" and m.prior == "standard"
    if not plain or m.posterior != "gaussian" or config.data.name not in ("mnist", "synthetic"):
        return None
    if m.arch == "conv":
        args = ["--model", "conv"]
    elif m.arch == "mlp" and len(m.mlp_hidden_dims) == 1 and m.mlp_activation == "relu":
        args = ["--model", "mlp", "--hidden", str(m.mlp_hidden_dims[0])]
    elif m.arch == "resnet":
        widths = [str(w) for w in m.resnet_widths]
        args = ["--model", "resnet", "--widths", *widths, "--blocks", str(m.resnet_blocks)]
    else:
        return None
    args += ["--latent-dim", str(m.latent_dim)]
    return [*args, "--binarize"] if config.data.binarize == "dynamic" else args


def _run_peer(python: str, args: list[str], batch: int, reps: int) -> dict:
    """The PyTorch peer's record for one model and batch size: both layouts, the faster one
    named."""
    steps = -(-CPU_IMAGES_PER_REP // batch)
    cmd = [python, str(PEER_SCRIPT), *args, "--batch", str(batch), "--steps", str(steps)]
    out = subprocess.run([*cmd, "--reps", str(reps), "--json", "-"], capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("PEER ")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"the PyTorch peer failed ({out.returncode}):\n" + out.stderr[-3000:])
    layouts = json.loads(lines[-1].removeprefix("PEER "))
    best = max(layouts, key=lambda r: r["images_per_sec_median"])
    return {**best, "layouts": layouts}


def _measure_pair(name, batch, models, args, overrides, peer) -> dict:
    """vae_jax's record; with a peer, the peer's measured right after it, and the ratio."""
    record = _run_one(name, batch, models, args, overrides)
    if peer is None:
        return record
    print(f"  PyTorch peer of {name} at batch {batch} ...", file=sys.stderr, flush=True)
    theirs = _run_peer(args.peer, peer, batch, args.reps)
    record["peer"] = theirs
    record["vs_peer"] = record["images_per_sec_median"] / theirs["images_per_sec_median"]
    return record


def format_peer_table(records: list[dict]) -> str:
    """vae_jax against the PyTorch peer, one row per measured pair (round)."""
    head = "| experiment | batch | vae_jax images/s | PyTorch images/s (faster layout) | ratio |"
    rows = [head, "|---|---|---|---|---|"]
    for r in records:
        if "peer" not in r:
            continue
        p = r["peer"]
        rows.append(
            f"| {r['experiment']} | {r['batch_size']} | {r['images_per_sec_median']:,.0f} "
            f"| {p['images_per_sec_median']:,.0f} ({p['layout']}, {p['framework']}) "
            f"| {r['vs_peer']:.2f}x |"
        )
    return "\n".join(rows)


def format_table(records: list[dict]) -> str:
    head = (
        "| backend | experiment | arch (its settings) | batch | models "
        "| images/s (median, min-max) "
        "| GFLOP/s | compile s | start to 1st step s | host MiB | device MiB |"
    )
    rows = [head, "|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|"]
    for r in records:
        arch = f"{r['arch']} ({r['arch_settings']})" if r["arch_settings"] else r["arch"]
        device_mib = f"{r['peak_device_memory_mib']:.0f}" if r["peak_device_memory_mib"] else "-"
        rows.append(
            f"| {r['backend']} ({r['device']}) | {r['experiment']} | {arch} | {r['batch_size']} "
            f"| {r.get('models', 1)} | {r['images_per_sec_median']:,.0f} "
            f"({r['images_per_sec_min']:,.0f}-"
            f"{r['images_per_sec_max']:,.0f}) | {r['gflops_per_sec']:.1f} "
            f"| {r['compile_seconds']:.1f} | {r['start_to_first_step_seconds']:.1f} "
            f"| {r['peak_host_memory_mib']:,.0f} | {device_mib} |"
        )
    return "\n".join(rows)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vae_jax.bench", description=__doc__.split("\n")[0])
    p.add_argument("--experiments", nargs="+", default=list(DEFAULT_EXPERIMENTS))
    p.add_argument(
        "--batch", nargs="+", type=int, help="batch sizes (default: each experiment's own)"
    )
    p.add_argument(
        "--steps",
        type=int,
        default=0,
        help=f"steps per repetition (default: {CPU_IMAGES_PER_REP} images on CPU, an epoch else)",
    )
    p.add_argument("--reps", type=int, default=5, help="timed repetitions after the warm-up")
    p.add_argument("--data", choices=("auto", "mnist", "synthetic"), default="auto")
    p.add_argument("--json", type=Path, help="also write the records to this JSON file")
    p.add_argument(
        "--models",
        nargs="+",
        type=int,
        default=[1],
        help="models trained together under jax.vmap (as a sweep does), e.g. 1 2 3",
    )
    p.add_argument("--peer", metavar="PYTHON", help="a Python with torch: measure the peer too")
    p.add_argument("--rounds", type=int, default=1, help="vae_jax/peer pairs, in turn")
    p.add_argument(
        "--one", nargs=3, metavar=("EXPERIMENT", "BATCH", "MODELS"), help=argparse.SUPPRESS
    )
    return p


def _plan(args: argparse.Namespace, overrides: list[str]) -> list[tuple[str, int]]:
    """(experiment, batch size) pairs to measure; a ConfigError for a bad name or key."""
    from vae_jax.config.experiments import load_experiment
    from vae_jax.errors import ConfigError

    plan = []
    for name in args.experiments:
        own = load_experiment(name, overrides).train.batch_size
        plan += [(name, batch) for batch in args.batch or [own]]
    if args.reps < 1 or args.rounds < 1 or min([b for _, b in plan] + args.models) < 1:
        raise ConfigError("--reps, --rounds and every --batch and --models must be positive")
    if args.peer and not Path(args.peer).exists():
        raise ConfigError(f"--peer {args.peer}: no such interpreter (make peer-env makes one)")
    return plan


def main(argv: list[str] | None = None) -> int:
    args, overrides = _parser().parse_known_args(argv)
    if args.one:
        return _child(args, overrides)
    from vae_jax.errors import ConfigError

    try:
        plan = _plan(args, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    records = []
    for name, batch in plan:
        peer = peer_args(name, overrides) if args.peer else None
        for models in args.models:
            for _ in range(args.rounds if models == 1 else 1):
                print(f"measuring {name} at batch {batch}, {models} model(s) ...",
                      file=sys.stderr, flush=True)  # fmt: skip
                records.append(_measure_pair(name, batch, models, args, overrides,
                                             peer if models == 1 else None))  # fmt: skip
    print(
        f"{platform.node()} | {platform.processor() or platform.machine()} | {os.cpu_count()} CPUs"
    )
    print(format_table(records))
    if any("peer" in r for r in records):
        print()
        print(format_peer_table(records))
    if args.json:
        from vae_jax.atomic_io import write_json

        write_json(args.json, {"host": platform.node(), "records": records})
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
