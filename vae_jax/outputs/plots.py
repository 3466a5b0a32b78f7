"""PNG figures: image grids and the seed's side-by-side reconstructions figure.

A grid PNG (``recon_epoch_XX.png``, ``samples_epoch_XX.png``, ``originals.png``) is the 8x8
grid itself, one image pixel per PNG pixel, as the seed saves its results; PNG is lossless, so
the labelled figures are composed from those files and any of them can be redrawn later.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image

from vae_jax.atomic_io import atomic_write

matplotlib.use("Agg")
import matplotlib.pyplot as plt

PAD = 2  # pixels between cells (and around the grid); white


def make_grid(images: np.ndarray, columns: int = 8) -> np.ndarray:
    """Floats in [0, 1] of shape [N, H, W] or [N, H, W, 1] -> one uint8 image [rows*.., cols*..]."""
    images = np.asarray(images, np.float32)
    if images.ndim == 4:
        images = images[..., 0]
    n, h, w = images.shape
    columns = min(columns, n)
    rows = math.ceil(n / columns)
    grid = np.full((rows * (h + PAD) + PAD, columns * (w + PAD) + PAD), 255, np.uint8)
    cells = np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
    for i, cell in enumerate(cells):
        r, c = divmod(i, columns)
        grid[
            PAD + r * (h + PAD) : (r + 1) * (h + PAD), PAD + c * (w + PAD) : (c + 1) * (w + PAD)
        ] = cell
    return grid


def save_png(path: Path, pixels: np.ndarray) -> None:
    """Write a uint8 grayscale image as PNG, atomically."""
    atomic_write(path, lambda f: Image.fromarray(pixels, mode="L").save(f, format="PNG"))


def load_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def save_grid(path: Path, images: np.ndarray) -> None:
    save_png(path, make_grid(images))


def save_panels(path: Path, panels: Sequence[tuple[str, np.ndarray]], title: str = "") -> None:
    """Grids side by side, each under its label, as one PNG."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 4.0), squeeze=False)
    for ax, (label, pixels) in zip(axes[0], panels, strict=True):
        ax.imshow(pixels, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(label, fontsize=11)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


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
        ("Originals", load_png(figures_dir / "originals.png")),
    ]
    path = figures_dir / "reconstructions.png"
    save_panels(path, panels, title)
    return path
