"""The figures of an evaluation (process 0 draws them): samples from the prior, reconstructions,
traversals of the most active latent dimensions, interpolations, the KL of each dimension, and
for 2-D latents the learned manifold and the test set's posterior means."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.core import rng
from vae_jax.data.images import Dataset
from vae_jax.evaluation import decoding
from vae_jax.evaluation.latent_stats import ACTIVE_UNIT_THRESHOLD, LatentStats
from vae_jax.outputs import plots
from vae_jax.outputs.workdir import is_writer
from vae_jax.parts import Parts

NUM_TRAVERSAL_DIMS = 10
NUM_INTERPOLATIONS = 8
COMPONENT_SAMPLES = 8  # per component of a mixture prior
MAX_COMPONENTS = 20


def draw_evaluation(
    out: Path,
    parts: Parts,
    params: dict,
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
    model, top = parts.model, parts.evaluation.layers[0]
    decode_fn = decoding.decoder_means(model)

    def decode(z: np.ndarray) -> np.ndarray:  # top-layer latents, flat [n, D]
        return np.asarray(decode_fn(params, jnp.asarray(z, jnp.float32).reshape(-1, *top.shape)))

    key = rng.stream(root, rng.Stream.FIGURES)
    samples = np.asarray(decoding.prior_samples(model, plots.FIGURE_IMAGES)(params, key))
    plots.save_panels(out / "eval_samples.png",
                      [("Samples from the prior", plots.make_grid(samples))], label)  # fmt: skip
    plots.save_panels(
        out / "eval_reconstructions.png",
        [("Originals", plots.make_grid(originals)), ("Reconstructions", plots.make_grid(recon))],
        label,
    )
    names = ["eval_samples.png", "eval_reconstructions.png"]
    names += _draw_latent_space(out, decode, latent, originals, label)
    names += _draw_prior(out, parts, params, key, label)
    one_gaussian = len(parts.evaluation.layers) == 1 and parts.config.model.prior == "standard"
    if one_gaussian and top.shape == (2,):
        plots.save_manifold(out / "manifold.png", decode, f"{label}: learned manifold")
        plots.save_latent_scatter(
            out / "latent_scatter.png",
            latent.top_means,
            dataset.test_labels,
            f"{label}: test set posterior means",
        )
        names += ["manifold.png", "latent_scatter.png"]
    return names


def _draw_latent_space(
    out: Path, decode, latent: LatentStats, originals: np.ndarray, label: str
) -> list[str]:
    """Traversals of the top layer's most active dimensions, interpolations between posterior
    means, and the KL of each dimension (where it has a closed form) or of each layer."""
    top = latent.layers[0]
    order = np.argsort(-top.mean_variance)[:NUM_TRAVERSAL_DIMS]
    spread = np.sqrt(top.mean_variance + np.mean(np.square(latent.top_stddevs), axis=0))
    which = "the top layer's" if len(latent.layers) > 1 else "the"
    plots.save_traversals(
        out / "traversals.png",
        decode,
        latent.top_means[0],
        order,
        spread,
        top.rate_per_dim,
        f"{label}: traversals of {which} {len(order)} most active dimensions",
    )
    names = ["traversals.png"]
    pairs = min(NUM_INTERPOLATIONS, len(originals) // 2)
    if pairs:
        plots.save_interpolations(
            out / "interpolations.png",
            decode,
            latent.top_means[0 : 2 * pairs : 2],
            latent.top_means[1 : 2 * pairs : 2],
            originals[0 : 2 * pairs : 2],
            originals[1 : 2 * pairs : 2],
            f"{label}: interpolations between test images",
        )
        names.append("interpolations.png")
    if len(latent.layers) == 1 and top.rate_per_dim is not None:
        plots.save_kl_per_dim(out / "kl_per_dim.png", top.rate_per_dim, top.mean_variance,
                              ACTIVE_UNIT_THRESHOLD, label)  # fmt: skip
        return [*names, "kl_per_dim.png"]
    plots.save_layer_rates(
        out / "kl_per_layer.png",
        [layer.rate for layer in latent.layers],
        [layer.active_units for layer in latent.layers],
        [int(np.prod(layer.shape)) for layer in latent.layers],
        label,
    )
    return [*names, "kl_per_layer.png"]


def _draw_prior(out: Path, parts: Parts, params: dict, key: jax.Array, label: str) -> list[str]:
    """A learned prior's own pictures: samples of each mixture component, a VampPrior's
    pseudo-inputs."""
    names = []
    by_component = decoding.component_samples(parts.model, COMPONENT_SAMPLES)
    if by_component is not None:
        grids = np.asarray(by_component(params, key))[:MAX_COMPONENTS]
        plots.save_panels(
            out / "prior_components.png",
            [("Samples of each prior component (a row each)",
              plots.make_grid(grids.reshape(-1, *grids.shape[2:]), COMPONENT_SAMPLES))],
            label,
        )  # fmt: skip
        names.append("prior_components.png")
    if parts.config.model.prior == "vamp":
        pseudo = parts.model.apply({"params": params}, method=lambda m: m.prior.pseudo_images())
        grid = plots.make_grid(np.asarray(pseudo)[: plots.FIGURE_IMAGES])
        plots.save_panels(out / "pseudo_inputs.png", [("The pseudo-inputs", grid)], label)
        names.append("pseudo_inputs.png")
    return names
