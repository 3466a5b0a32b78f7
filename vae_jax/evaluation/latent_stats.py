"""The latent space of a trained model on the test set, layer by layer: the rate (the layer's
KL, nats per image, with the test -ELBO's own noise, so that the rates add up to the -ELBO's KL
term), its split over dimensions where the KL has a closed form, and the active units (Burda
et al. 2016: dimensions whose posterior mean varies over the images by more than 0.01; the
posterior along the noise-free path, the layers above at their means)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.core import objectives
from vae_jax.core.latents import noise_from_key
from vae_jax.core.pixels import to_float
from vae_jax.evaluation.evaluators import _chunks, chunk_size
from vae_jax.parts import Parts

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. 2016: Var_x(E_q[z_d | x]) above this


class LayerStats(NamedTuple):
    shape: tuple[int, ...]  # one image's latent
    rate: float  # nats per image: the mean over the images of the layer's KL
    rate_per_dim: np.ndarray | None  # [D]: the same, dimension by dimension (closed form only)
    mean_variance: np.ndarray  # [D]: Var over the images of the posterior mean

    @property
    def active_units(self) -> int:
        return int(np.sum(self.mean_variance > ACTIVE_UNIT_THRESHOLD))


class LatentStats(NamedTuple):
    layers: tuple[LayerStats, ...]  # top first
    top_means: np.ndarray  # [N, D]: the top layer's posterior means (float64)
    top_stddevs: np.ndarray  # [N, D]: their stddevs, of the q sampled (noise_scale included)

    @property
    def rate(self) -> float:
        return float(sum(layer.rate for layer in self.layers))

    @property
    def active_units(self) -> int:
        return sum(layer.active_units for layer in self.layers)


def latent_stats(parts: Parts, params: dict, images: np.ndarray, key: jax.Array) -> LatentStats:
    """The statistics of ``images`` (``key``: the EVAL stream, as the test -ELBO's)."""
    n, settings, mesh = len(images), parts.evaluation, parts.mesh
    chunks = _chunks(images, chunk_size(n, settings.batch_size, mesh.devices.size), mesh)
    chunk = jax.jit(_chunk_stats(parts))
    sums = None
    top_means, top_logvars = [], []
    for i, (x, mask) in enumerate(chunks):
        out = jax.device_get(chunk(params, x, mask, jax.random.fold_in(key, i)))
        valid = np.asarray(jax.device_get(mask)) > 0
        means = [np.asarray(m, np.float64)[valid] for m in out["means"]]
        part = {
            "rates": np.asarray(out["rates"], np.float64),
            "dims": [np.asarray(d, np.float64) for d in out["dims"]],
            "mean_sums": [m.sum(axis=0) for m in means],
            "square_sums": [np.square(m).sum(axis=0) for m in means],
        }
        sums = part if sums is None else jax.tree.map(np.add, sums, part)
        top_means.append(means[0])
        top_logvars.append(np.asarray(out["top_logvar"], np.float64)[valid])
    layers = []
    for i, info in enumerate(settings.layers):
        mean = sums["mean_sums"][i] / n
        variance = np.maximum(sums["square_sums"][i] / n - np.square(mean), 0.0)
        per_dim = sums["dims"][i] / n if info.closed_form else None
        layers.append(LayerStats(info.shape, float(sums["rates"][i] / n), per_dim, variance))
    top_var = np.exp(np.concatenate(top_logvars)) * settings.noise_scale**2
    return LatentStats(tuple(layers), np.concatenate(top_means), np.sqrt(top_var))


def _chunk_stats(parts: Parts):
    """``(params, images_u8, mask, key) ->`` a chunk's sums of each layer's KL and of its KL
    per dimension, and each layer's posterior means (top layer: with its log-variances)."""
    model, settings = parts.model, parts.evaluation
    s = settings.noise_scale

    def stats(params, images_u8, mask, key):
        x = to_float(images_u8)

        def one(k):
            p = objectives.run_model(model, params, x, noise_from_key(k), s)
            kls = jnp.stack([objectives.layer_kl(layer, "auto", s) for layer in p.layers])
            dims = [
                objectives.kl_per_dim(layer, s).reshape(len(x), -1)
                if objectives.closed_form(layer, "auto")
                else jnp.zeros((len(x), 0))
                for layer in p.layers
            ]
            return kls, dims

        kls, dims = jax.vmap(one)(jax.random.split(key, settings.num_samples))
        posterior = model.apply({"params": params}, x, method="posterior")
        return {
            "rates": jnp.sum(jnp.mean(kls, axis=0) * mask, axis=-1),
            "dims": [jnp.sum(jnp.mean(d, axis=0) * mask[:, None], axis=0) for d in dims],
            "means": [q.mean.reshape(len(x), -1) for q in posterior],
            "top_logvar": posterior[0].logvar.reshape(len(x), -1),
        }

    return stats
