"""PNG figures, written atomically: image grids, the seed's reconstructions figure, and
pictures of the latent space (traversals, interpolations, the KL of each dimension, and for 2-D
latents the manifold and the test encodings, Kingma & Welling fig. 4).

A grid PNG (``recon_epoch_XX.png``, ``samples_epoch_XX.png``, ``originals.png``) is the 8x8
grid itself, one image pixel per PNG pixel, as the seed saves its results; PNG is lossless, so
the labelled figures are composed from those files and any of them can be redrawn later. The
latent pictures take a ``decode`` function ``z [n, d] -> images [n, H, W, C]`` (decoder means in
[0, 1]).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image

from vae_jax.atomic_io import atomic_write

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
from scipy.stats import norm

PAD = 2  # pixels between cells (and around the grid); white
FIGURE_IMAGES = 64  # the test images every reconstruction figure shows
Decode = Callable[[np.ndarray], np.ndarray]
TRAVERSAL_STEPS = 9  # from -3 to +3 stddevs
INTERPOLATION_STEPS = 8


def save_figure(fig, path: Path, dpi: int = 120, tight: bool = False) -> None:
    """Write a matplotlib figure as PNG, atomically, and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def make_grid(images: np.ndarray, columns: int = 8) -> np.ndarray:
    """Floats in [0, 1] of shape [N, H, W] or [N, H, W, C] -> one uint8 image, the cells in rows
    of ``columns``: ``[rows*(H+2)+2, cols*(W+2)+2]`` for grayscale, ``[..., 3]`` for RGB."""
    images = np.asarray(images, np.float32)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    n, h, w = images.shape[:3]
    columns = min(columns, n)
    rows = math.ceil(n / columns)
    grid = np.full((rows * (h + PAD) + PAD, columns * (w + PAD) + PAD, *images.shape[3:]), 255)
    cells = np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
    for i, cell in enumerate(cells):
        r, c = divmod(i, columns)
        grid[
            PAD + r * (h + PAD) : (r + 1) * (h + PAD), PAD + c * (w + PAD) : (c + 1) * (w + PAD)
        ] = cell
    return grid.astype(np.uint8)


def show(ax, pixels: np.ndarray) -> None:
    """``pixels`` (uint8, grayscale or RGB) on a matplotlib axis, one image pixel per cell."""
    gray = pixels.ndim == 2
    ax.imshow(pixels, cmap="gray" if gray else None, vmin=0, vmax=255, interpolation="nearest")


def save_png(path: Path, pixels: np.ndarray) -> None:
    """Write a uint8 grayscale ``[H, W]`` or RGB ``[H, W, 3]`` image as PNG, atomically."""
    mode = "L" if pixels.ndim == 2 else "RGB"
    atomic_write(path, lambda f: Image.fromarray(pixels, mode=mode).save(f, format="PNG"))


def load_png(path: Path) -> np.ndarray:
    """A PNG written by :func:`save_png`, as it was written (grayscale or RGB)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("L" if im.mode in ("L", "1", "P") else "RGB"))


def save_grid(path: Path, images: np.ndarray) -> None:
    save_png(path, make_grid(images))


def save_panels(path: Path, panels: Sequence[tuple[str, np.ndarray]], title: str = "") -> None:
    """Grids side by side, each under its label, as one PNG."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 4.0), squeeze=False)
    for ax, (label, pixels) in zip(axes[0], panels, strict=True):
        show(ax, pixels)
        ax.set_title(label, fontsize=11)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    save_figure(fig, path)


def originals_path(figures_dir: Path) -> Path:
    return figures_dir / "originals.png"


def recon_path(figures_dir: Path, epoch: int) -> Path:
    return figures_dir / f"recon_epoch_{epoch:02d}.png"


def samples_path(figures_dir: Path, epoch: int) -> Path:
    return figures_dir / f"samples_epoch_{epoch:02d}.png"


def save_reconstructions_figure(
    figures_dir: Path, early_epoch: int, late_epoch: int, title: str = ""
) -> Path:
    """``reconstructions.png``: epoch ``early`` and ``late`` reconstructions and the originals."""
    panels = [
        (f"Reconstructions, epoch {early_epoch}", load_png(recon_path(figures_dir, early_epoch))),
        (f"Reconstructions, epoch {late_epoch}", load_png(recon_path(figures_dir, late_epoch))),
        ("Originals", load_png(originals_path(figures_dir))),
    ]
    path = figures_dir / "reconstructions.png"
    save_panels(path, panels, title)
    return path


def _show_grid(ax, images: np.ndarray, columns: int) -> None:
    show(ax, make_grid(images, columns))
    ax.set_xticks([])
    ax.set_yticks([])


def _row_centers(rows: int, image_size: int, pad: int = 2) -> list[float]:
    return [pad + r * (image_size + pad) + image_size / 2 for r in range(rows)]


def save_traversals(
    path: Path,
    decode: Decode,
    base: np.ndarray,
    dims: np.ndarray,
    spread: np.ndarray,
    rate_per_dim: np.ndarray | None,
    title: str,
) -> None:
    """One row per latent dimension in ``dims``: ``base`` with that coordinate moved from
    -3 to +3 of ``spread`` (the dimension's stddev over the test set) around its value; each
    row labelled with its dimension's KL where it is known."""
    offsets = np.linspace(-3.0, 3.0, TRAVERSAL_STEPS)
    z = np.repeat(base[None], len(dims) * TRAVERSAL_STEPS, axis=0)
    for r, d in enumerate(dims):
        z[r * TRAVERSAL_STEPS : (r + 1) * TRAVERSAL_STEPS, d] += offsets * spread[d]
    images = decode(z)
    fig, ax = plt.subplots(figsize=(0.6 * TRAVERSAL_STEPS + 1.6, 0.6 * len(dims) + 0.8))
    _show_grid(ax, images, TRAVERSAL_STEPS)
    size = images.shape[1]
    ax.set_yticks(_row_centers(len(dims), size))
    labels = [f"z{d}" if rate_per_dim is None else f"z{d} (KL {rate_per_dim[d]:.1f})" for d in dims]
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xticks(_row_centers(TRAVERSAL_STEPS, images.shape[2]))
    ax.set_xticklabels([f"{o:+.1f}" for o in offsets], fontsize=8)
    ax.set_xlabel("offset from the image's posterior mean, in stddevs over the test set")
    ax.set_title(title, fontsize=10)
    save_figure(fig, path, dpi=110, tight=True)


def save_interpolations(
    path: Path,
    decode: Decode,
    z_from: np.ndarray,
    z_to: np.ndarray,
    images_from: np.ndarray,
    images_to: np.ndarray,
    title: str,
) -> None:
    """Each row: an image, decodings along the straight line between the posterior means of
    it and another image, and that other image."""
    t = np.linspace(0.0, 1.0, INTERPOLATION_STEPS)
    z = (z_from[:, None] * (1 - t[None, :, None]) + z_to[:, None] * t[None, :, None]).reshape(
        -1, z_from.shape[1]
    )
    decoded = decode(z).reshape(len(z_from), INTERPOLATION_STEPS, *images_from.shape[1:])
    rows = np.concatenate([images_from[:, None], decoded, images_to[:, None]], axis=1)
    columns = INTERPOLATION_STEPS + 2
    fig, ax = plt.subplots(figsize=(0.6 * columns + 0.4, 0.6 * len(z_from) + 0.8))
    _show_grid(ax, rows.reshape(-1, *images_from.shape[1:]), columns)
    ax.set_xticks(_row_centers(columns, images_from.shape[2]))
    ax.set_xticklabels(["x"] + [f"{v:.2f}" for v in t] + ["x'"], fontsize=8)
    ax.set_xlabel("originals at both ends; decodings of (1-t) mean(x) + t mean(x')")
    ax.set_title(title, fontsize=10)
    save_figure(fig, path, dpi=110, tight=True)


def save_kl_per_dim(
    path: Path, rate_per_dim: np.ndarray, mean_variance: np.ndarray, threshold: float, title: str
) -> None:
    """Bar chart of each latent dimension's KL, active units (variance > threshold) in blue."""
    d = np.arange(len(rate_per_dim))
    active = mean_variance > threshold
    fig, ax = plt.subplots(figsize=(max(5.0, 0.25 * len(d) + 2), 3.2))
    for mask, color, label in (
        (active, "tab:blue", f"active (Var > {threshold:g})"),
        (~active, "tab:gray", "inactive"),
    ):
        if mask.any():
            ax.bar(d[mask], rate_per_dim[mask], color=color, label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("latent dimension")
    ax.set_ylabel("KL(q || p), nats per image")
    ax.set_title(f"{title}: {int(active.sum())}/{len(d)} active, {rate_per_dim.sum():.2f} nats")
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=110, tight=True)


def save_layer_rates(
    path: Path, rates: list[float], active: list[int], dims: list[int], title: str
) -> None:
    """Bar chart of each latent layer's KL (top first), labelled with its active units."""
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(rates) + 2), 3.2))
    x = np.arange(len(rates))
    ax.bar(x, rates, color="tab:blue")
    pairs = enumerate(zip(active, dims, strict=True))
    ax.set_xticks(x, [f"layer {i}\n{a}/{d} active" for i, (a, d) in pairs])
    ax.set_ylabel("KL(q || p), nats per image")
    ax.set_title(f"{title}: {sum(rates):.2f} nats in {len(rates)} layers (top first)", fontsize=10)
    save_figure(fig, path, dpi=110, tight=True)


def save_manifold(path: Path, decode: Decode, title: str, n: int = 20) -> None:
    """Decodings of a grid over the inverse CDF of the prior (Kingma & Welling, figure 4)."""
    ticks = norm.ppf(np.linspace(0.05, 0.95, n))
    zy, zx = np.meshgrid(ticks[::-1], ticks, indexing="ij")  # z2 up, z1 right
    images = decode(np.stack([zx.ravel(), zy.ravel()], axis=1))
    fig, ax = plt.subplots(figsize=(8, 8.4))
    _show_grid(ax, images, n)
    centers = _row_centers(n, images.shape[1])
    ticked = list(range(0, n, 3))
    ax.set_xticks([centers[i] for i in ticked])
    ax.set_xticklabels([f"{ticks[i]:.2f}" for i in ticked], fontsize=8)
    ax.set_yticks([centers[i] for i in ticked])
    ax.set_yticklabels([f"{ticks[::-1][i]:.2f}" for i in ticked], fontsize=8)
    ax.set_xlabel("z1 (prior quantiles 0.05 ... 0.95)")
    ax.set_ylabel("z2")
    ax.set_title(title, fontsize=10)
    save_figure(fig, path, dpi=110, tight=True)


def save_latent_scatter(path: Path, means: np.ndarray, labels: np.ndarray, title: str) -> None:
    """Posterior means of the test images, coloured by label."""
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    points = ax.scatter(means[:, 0], means[:, 1], c=labels, cmap="tab10", s=3, alpha=0.7)
    bar = fig.colorbar(points, ax=ax, ticks=np.arange(labels.min(), labels.max() + 1))
    bar.set_label("digit")
    ax.set_xlabel("z1 (posterior mean)")
    ax.set_ylabel("z2 (posterior mean)")
    ax.set_title(title, fontsize=10)
    save_figure(fig, path, dpi=110, tight=True)
