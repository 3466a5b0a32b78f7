"""The figures of an evaluation (process 0 draws them): samples from the prior, reconstructions,
traversals of the most active latent dimensions, interpolations, the KL of each dimension, and
for 2-D latents the learned manifold and the test set's posterior means."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from vae_jax.core import rng
from vae_jax.data.images import Dataset
from vae_jax.evaluation.evaluators import ACTIVE_UNIT_THRESHOLD, LatentStats
from vae_jax.outputs import plots
from vae_jax.outputs.workdir import is_writer
from vae_jax.parts import Parts

NUM_TRAVERSAL_DIMS = 10
NUM_INTERPOLATIONS = 8


def draw_evaluation(
    out: Path,
    parts: Parts,
    decode,
    latent: LatentStats,
    originals: np.ndarray,
    recon: np.ndarray,
    root: jax.Array,
    dataset: Dataset,
    label: str,
) -> list[str]:
    """The evaluation's figures (process 0 draws); returns their file names."""
    if not is_writer():
        return []
    z = jax.random.normal(
        rng.stream(root, rng.Stream.FIGURES), (plots.FIGURE_IMAGES, parts.evaluation.latent_dim)
    )
    plots.save_panels(
        out / "eval_samples.png",
        [("Samples from the prior", plots.make_grid(decode(np.asarray(z))))],
        label,
    )
    plots.save_panels(
        out / "eval_reconstructions.png",
        [("Originals", plots.make_grid(originals)), ("Reconstructions", plots.make_grid(recon))],
        label,
    )
    names = ["eval_samples.png", "eval_reconstructions.png"]
    names += _draw_latent_space(out, decode, latent, originals, label)
    if parts.evaluation.latent_dim == 2:
        plots.save_manifold(out / "manifold.png", decode, f"{label}: learned manifold")
        plots.save_latent_scatter(
            out / "latent_scatter.png",
            latent.means,
            dataset.test_labels,
            f"{label}: test set posterior means",
        )
        names += ["manifold.png", "latent_scatter.png"]
    return names


def _draw_latent_space(
    out: Path, decode, latent: LatentStats, originals: np.ndarray, label: str
) -> list[str]:
    """Traversals of the most active dimensions, interpolations, and the KL per dimension."""
    order = np.argsort(-latent.mean_variance)[:NUM_TRAVERSAL_DIMS]
    spread = np.sqrt(latent.mean_variance + np.mean(np.square(latent.stddevs), axis=0))
    plots.save_traversals(
        out / "traversals.png",
        decode,
        latent.means[0],
        order,
        spread,
        latent.rate_per_dim,
        f"{label}: traversals of the {len(order)} most active dimensions",
    )
    names = ["traversals.png"]
    pairs = min(NUM_INTERPOLATIONS, len(originals) // 2)
    if pairs:
        plots.save_interpolations(
            out / "interpolations.png",
            decode,
            latent.means[0 : 2 * pairs : 2],
            latent.means[1 : 2 * pairs : 2],
            originals[0 : 2 * pairs : 2],
            originals[1 : 2 * pairs : 2],
            f"{label}: interpolations between test images",
        )
        names.append("interpolations.png")
    plots.save_kl_per_dim(
        out / "kl_per_dim.png",
        latent.rate_per_dim,
        latent.mean_variance,
        ACTIVE_UNIT_THRESHOLD,
        label,
    )
    return [*names, "kl_per_dim.png"]
