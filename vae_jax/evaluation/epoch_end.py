"""After each epoch, for one run: the test -ELBO (the same noise every epoch, so epochs can be
compared) and the figures: the first test images reconstructed at their posterior means,
samples of the model's prior (the same key every epoch), and ``reconstructions.png`` (epoch 1,
``figures.late_epoch`` and the originals). Process 0 draws."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import jax
import ml_collections
import numpy as np

from vae_jax.core import rng
from vae_jax.core.pixels import to_float
from vae_jax.evaluation.decoding import prior_samples, reconstructions
from vae_jax.evaluation.evaluators import make_test_evaluator
from vae_jax.outputs import plots
from vae_jax.outputs.workdir import is_writer
from vae_jax.parts import Parts

EpochEnd = Callable[[dict, int], tuple[dict, float, dict]]  # (params, epoch) -> (test, s, grids)


def make_epoch_end(
    parts: Parts, name: str, figures: Path, test_images: np.ndarray, root: jax.Array
) -> EpochEnd:
    """``(params, epoch) -> (test means, seconds, image grids)`` for the run of root key
    ``root`` (its EVAL and FIGURES streams), drawing into the folder ``figures``."""
    evaluate = make_test_evaluator(parts, test_images, rng.stream(root, rng.Stream.EVAL))
    images = test_images[: plots.FIGURE_IMAGES]
    reconstruct = reconstructions(parts.model)
    sample, key = prior_samples(parts.model, len(images)), rng.stream(root, rng.Stream.FIGURES)
    late_epoch, title = parts.config.figures.late_epoch, figure_title(name, parts.config)
    if is_writer():
        plots.save_grid(plots.originals_path(figures), to_float(images))

    def epoch_end(params: dict, epoch: int) -> tuple[dict, float, dict]:
        start = time.perf_counter()
        test = evaluate(params)
        grids = {
            "reconstructions": plots.make_grid(np.asarray(reconstruct(params, images))),
            "samples": plots.make_grid(np.asarray(sample(params, key))),
        }
        if is_writer():
            plots.save_png(plots.recon_path(figures, epoch), grids["reconstructions"])
            plots.save_png(plots.samples_path(figures, epoch), grids["samples"])
            late = min(late_epoch, epoch)
            plots.save_reconstructions_figure(figures, 1, late, title=title)
        return test, time.perf_counter() - start, grids

    return epoch_end


def figure_title(name: str, config: ml_collections.ConfigDict) -> str:
    m = config.model
    parts = [name] if name else []
    latent = {"ladder": "latent channels", "two_layer": "z2"}.get(m.arch, "z")
    parts.append(
        f"{m.arch} VAE, {latent}={m.latent_dim}, noise_scale={m.noise_scale:g}, {m.likelihood}"
    )
    if config.data.binarize != "none":
        parts.append(f"{config.data.binarize} binarization")
    return " | ".join(parts)
