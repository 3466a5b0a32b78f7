"""A sweep's summary: ``summary.csv``, ``summary.md`` and PNG plots in the sweep's folder.

One row per finished point (trained to its last epoch), read from the point's
``metrics.jsonl`` and ``eval.json``; every number is in nats per image (test set).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from vae_jax.atomic_io import atomic_write_text
from vae_jax.outputs import plots
from vae_jax.outputs.metrics import read_jsonl
from vae_jax.outputs.plots import plt
from vae_jax.sweeps.grid import Sweep, point_name

COLUMNS = (
    "point",
    "latent_dim",
    "noise_scale",
    "seed",
    "epochs",
    "test_neg_elbo_nats",
    "iwae_nll_nats",
    "recon_nats",
    "kl_nats",
    "active_units",
    "train_seconds",
    "wall_seconds",
    "images_per_sec",
    "models_together",
)


def _row(path: Path, point) -> dict | None:
    history = read_jsonl(path / "metrics.jsonl")
    config = point.config
    if len(history) < config.train.num_epochs:
        return None
    last = history[-1]
    ev = {}
    if (path / "eval.json").exists():
        ev = json.loads((path / "eval.json").read_text())
    train_seconds = sum(r["train_seconds"] for r in history)
    wall = sum(r["train_seconds"] + r["eval_seconds"] + r["compile_seconds"] for r in history)
    return {
        "point": point.name,
        "latent_dim": config.model.latent_dim,
        "noise_scale": config.model.noise_scale,
        "seed": config.seed,
        "epochs": len(history),
        "test_neg_elbo_nats": ev.get("test_neg_elbo_nats", last["test_neg_elbo_nats"]),
        "iwae_nll_nats": ev.get("iwae_nll_nats", math.nan),
        "recon_nats": ev.get("distortion_nats", last["test_recon_nats"]),
        "kl_nats": ev.get("rate_nats", last["test_kl_nats"]),
        "active_units": ev.get("active_units", ""),
        "train_seconds": train_seconds,
        "wall_seconds": wall + ev.get("seconds", 0.0),
        "images_per_sec": sum(r["images_per_sec"] for r in history) / len(history),
        "models_together": last.get("models_together", 1),
    }


def collect(root: Path, sweep: Sweep) -> list[dict]:
    """The rows of the points that have finished, in grid order."""
    rows = [_row(root / p.name, p) for p in sweep.points]
    return [r for r in rows if r is not None]


def _fmt(value) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.2f}"
    return str(value)


def format_markdown(rows: list[dict], sweep: Sweep) -> str:
    head = [
        f"# Sweep {sweep.name} (base experiment {sweep.experiment})",
        "",
        f"{len(rows)} of {len(sweep.points)} points finished. Nats per test image; "
        "recon = distortion, KL = rate (of q actually sampled); wall time includes "
        "evaluation; images/s per run (runs trained together share the time).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    body = ["| " + " | ".join(_fmt(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(head + body) + "\n"


def plot_elbo_vs_latent(rows: list[dict], path: Path, title: str) -> None:
    """Test -ELBO against latent size, a line per noise scale, error bars = std over seeds."""
    by_scale: dict[float, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_scale[r["noise_scale"]][r["latent_dim"]].append(r["test_neg_elbo_nats"])
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for scale in sorted(by_scale):
        dims = sorted(by_scale[scale])
        vals = [by_scale[scale][d] for d in dims]
        mean = [float(np.mean(v)) for v in vals]
        std = [float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in vals]
        ax.errorbar(dims, mean, yerr=std, marker="o", capsize=3, label=f"noise scale {scale:g}")
    ax.set_xscale("log")
    dims = sorted({r["latent_dim"] for r in rows})
    ax.set_xticks(dims, [str(d) for d in dims])
    ax.minorticks_off()
    ax.set_xlabel("latent dimensions")
    ax.set_ylabel("test -ELBO (nats per image)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    plots.save_figure(fig, path)


def plot_rate_distortion(rows: list[dict], path: Path, title: str) -> None:
    """One point per run: rate (KL) against distortion (reconstruction), by latent size."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    dims = sorted({r["latent_dim"] for r in rows})
    scales = sorted({r["noise_scale"] for r in rows})
    markers = "osD^v<>p*h"
    cmap = plt.get_cmap("viridis", max(len(dims), 2))
    for r in rows:
        ax.scatter(
            r["kl_nats"],
            r["recon_nats"],
            color=cmap(dims.index(r["latent_dim"])),
            marker=markers[scales.index(r["noise_scale"]) % len(markers)],
            s=40,
        )
    for i, d in enumerate(dims):
        ax.scatter([], [], color=cmap(i), marker="o", label=f"z={d}")
    for j, s in enumerate(scales):
        ax.scatter([], [], color="gray", marker=markers[j % len(markers)], label=f"noise {s:g}")
    # lines of equal -ELBO = rate + distortion
    lo = min(r["kl_nats"] + r["recon_nats"] for r in rows)
    xs = np.linspace(0, max(r["kl_nats"] for r in rows) * 1.05, 2)
    for total in np.linspace(lo, lo + 40, 3):
        ax.plot(xs, total - xs, color="lightgray", lw=0.8, zorder=0)
    ax.set_xlabel("rate: KL(q || p) (nats per image)")
    ax.set_ylabel("distortion: -log p(x|z) (nats per image)")
    ax.set_title(title + "\n(gray lines: equal -ELBO, 20 nats apart)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    plots.save_figure(fig, path)


def plot_reconstructions(root: Path, sweep: Sweep, rows: list[dict], path: Path) -> None:
    """Every finished point's epoch-1 and late-epoch reconstruction grids in one image: a row
    per value of the first grid key, a pair of columns per combination of the others."""
    done = {r["point"] for r in rows}
    points = [p for p in sweep.points if p.name in done]
    keys = list(sweep.points[0].values)
    row_vals = list(dict.fromkeys(p.values[keys[0]] for p in sweep.points))
    col_names = list(
        dict.fromkeys(point_name({k: p.values[k] for k in keys[1:]}) for p in sweep.points)
    )
    fig, axes = plt.subplots(
        len(row_vals),
        2 * len(col_names),
        figsize=(2.2 * 2 * len(col_names), 2.5 * len(row_vals)),
        squeeze=False,
    )
    for ax in axes.flat:
        ax.set_axis_off()
    short = keys[0].rsplit(".", 1)[-1]
    for p in points:
        r = row_vals.index(p.values[keys[0]])
        c = col_names.index(point_name({k: p.values[k] for k in keys[1:]}))
        fig_dir = root / p.name / "figures"
        late = min(p.config.figures.late_epoch, p.config.train.num_epochs)
        for j, epoch in enumerate((1, late)):
            ax = axes[r, 2 * c + j]
            file = plots.recon_path(fig_dir, epoch)
            if file.exists():
                ax.imshow(plots.load_png(file), cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"{short}={p.values[keys[0]]}, epoch {epoch}\n{col_names[c]}", fontsize=7)
    fig.suptitle(f"Sweep {sweep.name}: test reconstructions after epoch 1 and the late epoch")
    fig.tight_layout()
    plots.save_figure(fig, path)


def write_summary(root: Path, sweep: Sweep) -> str:
    """Write the summary files of every finished point; returns the markdown table."""
    rows = collect(root, sweep)
    markdown = format_markdown(rows, sweep)
    root.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(root / "summary.csv", buf.getvalue())
    atomic_write_text(root / "summary.md", markdown)
    if rows:
        title = f"Sweep {sweep.name}: {sweep.experiment}, {rows[0]['epochs']} epochs"
        plot_elbo_vs_latent(rows, root / "elbo_vs_latent.png", title)
        plot_rate_distortion(rows, root / "rate_distortion.png", title)
        plot_reconstructions(root, sweep, rows, root / "reconstructions.png")
    return markdown + f"\nwritten: {root}/summary.csv, summary.md and PNG plots\n"
