"""The IWAE NLL bound of a run's checkpoints against the CPU time it took to reach them:

    python -m vae_jax.evaluation.curve runs/bmnist_resnet [--k 1000] [--images 500]
        [--every 5] [--reference 86.76 "Burda et al. VAE"]

Each epoch's checkpoint (of those kept; every ``--every``-th) is bounded with ``--k`` samples on
the first ``--images`` test images; the x-axis is the CPU time of the training process up to
that epoch (``cpu_seconds`` of metrics.jsonl, all its threads) divided by the cores it could
use (``cpu_cores``, recorded per epoch): minutes of the whole machine. Writes ``curve.json``
and ``figures/nll_vs_cpu_minutes.png`` in the run's folder; the test -ELBO of every epoch is
drawn too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from vae_jax.atomic_io import write_json
from vae_jax.errors import ConfigError, VaeJaxError
from vae_jax.outputs.workdir import Workdir


def measure(workdir: Workdir, k: int, images: int, every: int) -> dict:
    """``{"points": [{epoch, step, cpu_minutes, iwae_nll, stderr}], "epochs": [...]}``."""
    from vae_jax.data.datasets import load_dataset
    from vae_jax.evaluation.trained_run import TrainedRun, restore_run
    from vae_jax.outputs.checkpoints import Checkpointer
    from vae_jax.outputs.metrics import cpu_cores

    history = workdir.history()
    cores = [r.get("cpu_cores", cpu_cores()) for r in history]  # older runs: this machine's
    seconds = [r.get("cpu_seconds", 0.0) for r in history]
    minutes = np.cumsum(np.divide(seconds, cores)) / 60
    steps = set(Checkpointer.steps_in(workdir.checkpoints))
    if not any(r["step"] in steps for r in history):
        raise ConfigError(
            f"{workdir.path} keeps no checkpoint of a finished epoch; train with a larger "
            "checkpoint.max_to_keep to draw the curve"
        )
    parts, _, _ = restore_run(workdir)
    test = load_dataset(parts.config.data).test_images[:images]
    points = []
    for i, record in enumerate(history):
        chosen = (i + 1) % every == 0 or i + 1 == len(history)
        if record["step"] not in steps or not chosen:
            continue
        bounds = TrainedRun(*restore_run(workdir, record["step"])).iwae(test, k=k)
        points.append(
            {
                "epoch": record["epoch"],
                "step": record["step"],
                "cpu_minutes": float(minutes[i]),
                "iwae_nll": float(-bounds.mean()),
                "stderr": float(bounds.std(ddof=1) / np.sqrt(len(bounds))),
            }
        )
        print(f"epoch {record['epoch']}: {points[-1]['iwae_nll']:.2f} nats", flush=True)
    epochs = [
        {"epoch": r["epoch"], "cpu_minutes": float(m), "test_neg_elbo": r["test_neg_elbo_nats"]}
        for r, m in zip(history, minutes, strict=True)
    ]
    return {"k": k, "images": len(test), "cores": max(cores), "points": points, "epochs": epochs}


def plot(curve: dict, path: Path, title: str, references: list[tuple[float, str]]) -> None:
    from vae_jax.outputs.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    e = curve["epochs"]
    ax.plot([r["cpu_minutes"] for r in e], [r["test_neg_elbo"] for r in e], color="lightgray",
            label="test -ELBO (every epoch)")  # fmt: skip
    p = curve["points"]
    ax.errorbar(
        [r["cpu_minutes"] for r in p],
        [r["iwae_nll"] for r in p],
        yerr=[r["stderr"] for r in p],
        marker="o",
        capsize=3,
        label=f"IWAE NLL bound, k={curve['k']} ({curve['images']} test images)",
    )
    for value, label in references:
        ax.axhline(value, ls="--", lw=0.8, color="tab:red")
        ax.annotate(f"{label} ({value})", (0, value), fontsize=8, va="bottom")
    finite = [r["iwae_nll"] for r in p] + [v for v, _ in references]
    ax.set_ylim(min(finite) - 2, max(finite) + 12)
    ax.set_xlabel(f"CPU minutes of the whole machine ({curve['cores']} cores)")
    ax.set_ylabel("nats per test image")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vae_jax.evaluation.curve")
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--reference", nargs=2, action="append", default=[],
                        metavar=("NATS", "LABEL"))  # fmt: skip
    args = parser.parse_args(argv)
    if min(args.k, args.images, args.every) < 1:
        parser.error("--k, --images and --every must be positive")
    run = Workdir(args.workdir)
    try:
        curve = measure(run, args.k, args.images, args.every)
    except VaeJaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    write_json(run.curve_json, curve)
    references = [(float(v), label) for v, label in args.reference]
    title = f"{run.path.name}: the NLL bound against CPU time"
    plot(curve, run.curve_figure, title, references)
    print(f"wrote {run.curve_json} and {run.curve_figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
