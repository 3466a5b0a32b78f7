"""A sweep's summary: ``summary.csv``, ``summary.md`` and PNG plots in the sweep's folder.

One row per finished point (trained to its last epoch), read from the point's workdir
(its history and its evaluation); every number is in nats per image (test set). The columns
and the plots follow the sweep's own grid keys (:class:`Layout`): the first key is the x-axis,
each value of the second a line, each combination of the others a panel; only ``seed`` is
averaged (into error bars), never another key.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from vae_jax.atomic_io import atomic_write_text
from vae_jax.outputs import plots
from vae_jax.outputs.plots import plt
from vae_jax.outputs.workdir import Workdir
from vae_jax.sweeps.grid import Sweep, short_names

METRICS = (
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
RECONSTRUCTED_IMAGES = 8  # test images per cell of the reconstructions figures


class Layout(NamedTuple):
    """How a sweep's grid keys lay out its plots (``seed`` is none of them: it is averaged)."""

    x: str | None  # the x-axis
    line: str | None  # one line (or marker) per value
    panels: list[str]  # one panel per combination of their values
    names: dict[str, str]  # each grid key's column name (its last component, if unique)

    @classmethod
    def of(cls, sweep: Sweep) -> Layout:
        keys = list(sweep.points[0].values)
        varied = [k for k in keys if k != "seed"]
        return cls(
            varied[0] if varied else None,
            varied[1] if len(varied) > 1 else None,
            varied[2:],
            short_names(keys),
        )


def _row(run: Workdir, point, names: dict[str, str]) -> dict | None:
    history = run.history()
    if len(history) < point.config.train.num_epochs:
        return None
    last = history[-1]
    ev = run.evaluation() or {}
    if ev.get("step") != last["step"]:  # of an earlier checkpoint: not this run's result
        ev = {}
    wall = sum(r["train_seconds"] + r["eval_seconds"] + r["compile_seconds"] for r in history)
    return {
        "point": point.name,
        **{names[k]: v for k, v in point.values.items()},
        "epochs": len(history),
        "test_neg_elbo_nats": ev.get("test_neg_elbo_nats", last["test_neg_elbo_nats"]),
        "iwae_nll_nats": ev.get("iwae_nll_nats", math.nan),
        "recon_nats": ev.get("distortion_nats", last["test_recon_nats"]),
        "kl_nats": ev.get("rate_nats", last["test_kl_nats"]),
        "active_units": ev.get("active_units", ""),
        "train_seconds": sum(r["train_seconds"] for r in history),
        "wall_seconds": wall + ev.get("seconds", 0.0),
        "images_per_sec": sum(r["images_per_sec"] for r in history) / len(history),
        "models_together": last.get("models_together", 1),
    }


def collect(root: Path, sweep: Sweep) -> list[dict]:
    """The rows of the points that have finished, in grid order."""
    names = Layout.of(sweep).names
    rows = [_row(Workdir(root / p.name), p, names) for p in sweep.points]
    return [r for r in rows if r is not None]


def columns(sweep: Sweep) -> list[str]:
    return ["point", *Layout.of(sweep).names.values(), *METRICS]


def _fmt(value) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.2f}"
    return str(value)


def format_markdown(rows: list[dict], sweep: Sweep) -> str:
    cols = columns(sweep)
    head = [
        f"# Sweep {sweep.name} (base experiment {sweep.experiment}, "
        f"model.arch={sweep.points[0].config.model.arch})",
        "",
        f"{len(rows)} of {len(sweep.points)} points finished. Nats per test image; "
        "recon = distortion, KL = rate (of q actually sampled); wall time includes "
        "evaluation; images/s per run (runs trained together share the time).",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    body = ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(head + body) + "\n"


def _groups(rows: list[dict], keys: list[str | None], names: dict[str, str]) -> dict:
    """Rows by their values of ``keys`` (in first-seen order)."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault(tuple(r[names[k]] if k else None for k in keys), []).append(r)
    return out


def _label(keys: list[str], values: tuple, names: dict[str, str]) -> str:
    return ", ".join(f"{names[k]}={v:g}" if isinstance(v, float) else f"{names[k]}={v}"
                     for k, v in zip(keys, values, strict=True))  # fmt: skip


def _panels(n: int, title: str):
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.4 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    return fig, list(axes.flat[:n])


def _x_positions(values: list) -> tuple[list, bool]:
    """Positions on the x-axis (the values themselves if they are numbers) and log scale."""
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if not numeric:
        return list(range(len(values))), False
    positive = all(v > 0 for v in values)
    return values, positive and max(values) / min(values) >= 8


Series = dict[tuple, dict[object, list[tuple[object, float, float, int]]]]


def elbo_series(rows: list[dict], layout: Layout) -> Series:
    """``{panel values: {line value: [(x, mean, std, seeds), ...]}}`` of the test -ELBO: the
    mean and standard deviation over the seeds of each (panel, line, x), never over another
    key."""
    names, out = layout.names, {}
    for panel, panel_rows in _groups(rows, layout.panels, names).items():
        out[panel] = {}
        for (line,), line_rows in _groups(panel_rows, [layout.line], names).items():
            points = []
            for (x,), runs in _groups(line_rows, [layout.x], names).items():
                v = [r["test_neg_elbo_nats"] for r in runs]
                points.append(
                    (x, float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v))
                )
            out[panel][line] = points
    return out


def plot_elbo(rows: list[dict], layout: Layout, path: Path, title: str) -> None:
    """Test -ELBO against the x key, a line per value of the line key, a panel per combination
    of the other keys; error bars = std over seeds (:func:`elbo_series`)."""
    names, series = layout.names, elbo_series(rows, layout)
    fig, axes = _panels(len(series), title + "\n(error bars: std over seeds)")
    for ax, (panel, lines) in zip(axes, series.items(), strict=True):
        xs = list(dict.fromkeys(x for points in lines.values() for x, *_ in points))
        positions, log = _x_positions(xs)
        for line, points in lines.items():
            ax.errorbar(
                [positions[xs.index(x)] for x, *_ in points],
                [mean for _, mean, _, _ in points],
                yerr=[std for _, _, std, _ in points],
                marker="o",
                capsize=3,
                label=_label([layout.line], (line,), names) if layout.line else "runs",
            )
        if log:
            ax.set_xscale("log")
        ax.set_xticks(positions, ["" if x is None else str(x) for x in xs])
        ax.minorticks_off()
        ax.set_xlabel(names[layout.x] if layout.x else "")
        ax.set_ylabel("test -ELBO (nats per image)")
        ax.set_title(_label(layout.panels, panel, names) if layout.panels else "", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    plots.save_figure(fig, path)


def plot_rate_distortion(rows: list[dict], layout: Layout, path: Path, title: str) -> None:
    """One point per run: rate (KL) against distortion (reconstruction); colour = the x key,
    marker = the line key, a panel per combination of the other keys."""
    names = layout.names
    panels = _groups(rows, layout.panels, names)
    fig, axes = _panels(len(panels), title + "\n(gray lines: equal -ELBO, 20 nats apart)")
    xs = list(dict.fromkeys(r[names[layout.x]] for r in rows)) if layout.x else [None]
    lines = list(dict.fromkeys(r[names[layout.line]] for r in rows)) if layout.line else [None]
    cmap, markers = plt.get_cmap("viridis", max(len(xs), 2)), "osD^v<>p*h"
    for ax, (panel, panel_rows) in zip(axes, panels.items(), strict=True):
        for r in panel_rows:
            x = r[names[layout.x]] if layout.x else None
            line = r[names[layout.line]] if layout.line else None
            marker = markers[lines.index(line) % len(markers)]
            ax.scatter(r["kl_nats"], r["recon_nats"], color=cmap(xs.index(x)), marker=marker, s=40)
        for i, x in enumerate(xs if layout.x else []):
            ax.scatter([], [], color=cmap(i), marker="o", label=_label([layout.x], (x,), names))
        for j, line in enumerate(lines if layout.line else []):
            label = _label([layout.line], (line,), names)
            ax.scatter([], [], color="gray", marker=markers[j % len(markers)], label=label)
        lo = min(r["kl_nats"] + r["recon_nats"] for r in panel_rows)
        span = np.linspace(0, max(r["kl_nats"] for r in panel_rows) * 1.05, 2)
        for total in np.linspace(lo, lo + 40, 3):
            ax.plot(span, total - span, color="lightgray", lw=0.8, zorder=0)
        ax.set_xlabel("rate: KL(q || p) (nats per image)")
        ax.set_ylabel("distortion: -log p(x|z) (nats per image)")
        ax.set_title(_label(layout.panels, panel, names) if layout.panels else "", fontsize=9)
        ax.grid(alpha=0.3)
        if layout.x or layout.line:
            ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    plots.save_figure(fig, path)


def _first_images(path: Path) -> np.ndarray:
    """The first :data:`RECONSTRUCTED_IMAGES` cells of an 8-column grid PNG
    (:func:`plots.make_grid`), as a grid of 4 columns."""
    png = plots.load_png(path)
    size = (png.shape[1] - plots.PAD) // 8 - plots.PAD  # square cells
    cells = []
    for i in range(RECONSTRUCTED_IMAGES):
        top, left = plots.PAD + i // 8 * (size + plots.PAD), plots.PAD + i % 8 * (size + plots.PAD)
        cells.append(png[top : top + size, left : left + size] / 255.0)
    return plots.make_grid(np.stack(cells), 4)


def plot_reconstructions(root: Path, sweep: Sweep, layout: Layout, epoch: int, path: Path) -> None:
    """The first test images reconstructed after ``epoch``: a row per value of the x key, a
    column per combination of the others (the first seed), the originals once on top."""
    names = layout.names
    first_seed = sweep.points[0].values.get("seed")
    points = [p for p in sweep.points if p.values.get("seed") == first_seed]
    row_key, col_keys = layout.x, [k for k in (layout.line, *layout.panels) if k]
    row_vals = list(dict.fromkeys(p.values[row_key] for p in points)) if row_key else [None]
    col_vals = list(dict.fromkeys(tuple(p.values[k] for k in col_keys) for p in points))
    fig, axes = plt.subplots(
        len(row_vals) + 1,
        len(col_vals),
        figsize=(2.4 * len(col_vals) + 0.6, 1.35 * (len(row_vals) + 1) + 0.6),
        squeeze=False,
    )
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for p in points:
        png = plots.recon_path(Workdir(root / p.name).figures, epoch)
        r = row_vals.index(p.values[row_key]) + 1 if row_key else 1
        c = col_vals.index(tuple(p.values[k] for k in col_keys))
        if png.exists():
            plots.show(axes[r, c], _first_images(png))
        if r == 1:
            axes[0, c].set_title(_label(col_keys, col_vals[c], names), fontsize=8)
        if c == 0 and row_key:
            label = _label([row_key], (p.values[row_key],), names).replace("=", "\n= ")
            axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    originals = plots.originals_path(Workdir(root / points[0].name).figures)
    if originals.exists():
        plots.show(axes[0, 0], _first_images(originals))
    axes[0, 0].set_ylabel("originals", rotation=0, ha="right", va="center", fontsize=8)
    for ax in axes[0, 1:]:
        ax.set_frame_on(False)
    fig.suptitle(f"Sweep {sweep.name}: test reconstructions after epoch {epoch}", fontsize=10)
    fig.tight_layout()
    plots.save_figure(fig, path, tight=True)  # the labels and title of a single column


def write_summary(root: Path, sweep: Sweep) -> str:
    """Write the summary files of every finished point; returns the markdown table."""
    rows = collect(root, sweep)
    markdown = format_markdown(rows, sweep)
    root.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns(sweep), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(root / "summary.csv", buf.getvalue())
    atomic_write_text(root / "summary.md", markdown)
    written = ["summary.csv", "summary.md"]
    if rows:
        layout = Layout.of(sweep)
        title = f"Sweep {sweep.name}: {sweep.experiment}, {rows[0]['epochs']} epochs"
        elbo = f"elbo_vs_{layout.names[layout.x]}.png" if layout.x else "elbo.png"
        plot_elbo(rows, layout, root / elbo, title)
        plot_rate_distortion(rows, layout, root / "rate_distortion.png", title)
        written += [elbo, "rate_distortion.png"]
        config = sweep.points[0].config
        for epoch in sorted({1, min(config.figures.late_epoch, config.train.num_epochs)}):
            name = f"reconstructions_epoch_{epoch:02d}.png"
            plot_reconstructions(root, sweep, layout, epoch, root / name)
            written.append(name)
    return markdown + f"\nwritten in {root}: {', '.join(written)}\n"
