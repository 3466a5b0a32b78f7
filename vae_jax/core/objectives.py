"""The VAE objective, in nats per image.

Every per-image term is summed over pixels (reconstruction) or latent dimensions (KL); the
training loss is the mean over the batch of their sum. Data ``x`` are floats in [0, 1]:
grayscale intensities, or 0/1 when binarized (see :mod:`vae_jax.data`).

``noise_scale`` (``s``) scales the reparameterization noise: z = mean + s * stddev * eps, eps ~
N(0, I). The training loss keeps the seed's latent term KL(N(mean, stddev^2) || N(0, I)), which
ignores ``s``; every reported bound instead uses the distribution actually sampled,
q = N(mean, (s * stddev)^2), so it is a valid evidence lower bound for any ``s``. For ``s = 1``
the two coincide and the training loss is the negative ELBO.

With ``likelihood='bernoulli'`` on grayscale data the reconstruction term is the seed's sigmoid
cross-entropy; it is not the log-density of a normalized distribution over [0, 1], so the
"ELBO" then bounds no likelihood. Binarize the data for numbers comparable with papers.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from vae_jax.core.models import VAE


class Terms(NamedTuple):
    """Per-image terms, each of shape [B], in nats."""

    recon: jax.Array  # -log p(x|z) for one z ~ q, summed over pixels
    kl_objective: jax.Array  # the seed's latent loss, KL(N(mean, stddev^2) || N(0, I))
    kl: jax.Array  # KL(q || N(0, I)) of q = N(mean, (noise_scale * stddev)^2), the one sampled


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)), summed over the last axis."""
    return 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(logvar) - logvar - 1.0, axis=-1)


def _sum_pixels(v: jax.Array) -> jax.Array:
    return jnp.sum(v.reshape(v.shape[0], -1), axis=-1)


def bernoulli_log_prob(logits: jax.Array, x: jax.Array) -> jax.Array:
    """log Bernoulli(x | sigmoid(logits)) summed over pixels; stable for any logits."""
    return _sum_pixels(x * logits - jnp.logaddexp(0.0, logits))


def gaussian_log_prob(mean: jax.Array, x: jax.Array, stddev: float) -> jax.Array:
    """log N(x | mean, stddev^2) summed over pixels."""
    z = (x - mean) / stddev
    return _sum_pixels(-0.5 * jnp.square(z) - math.log(stddev) - 0.5 * math.log(2 * math.pi))


def decoder_mean(logits: jax.Array) -> jax.Array:
    """The mean of p(x|z) for either likelihood: pixel intensities in (0, 1)."""
    return jax.nn.sigmoid(logits)


def log_likelihood(logits: jax.Array, x: jax.Array, cfg: ml_collections.ConfigDict) -> jax.Array:
    """log p(x|z) per image, for ``cfg.likelihood`` in {bernoulli, gaussian}."""
    if cfg.likelihood == "bernoulli":
        return bernoulli_log_prob(logits, x)
    return gaussian_log_prob(decoder_mean(logits), x, cfg.obs_stddev)


def sampled_logvar(logvar: jax.Array, noise_scale: float | jax.Array) -> jax.Array:
    """log-variance of q actually sampled: log((noise_scale * stddev)^2)."""
    return logvar + 2.0 * jnp.log(noise_scale)


def elbo_terms(
    model: VAE,
    params: dict,
    x: jax.Array,
    key: jax.Array,
    cfg: ml_collections.ConfigDict,
    noise_scale: jax.Array | None = None,
) -> Terms:
    """Encode ``x``, draw one z per image with ``key``, decode, and return the terms.

    ``noise_scale``: a traced value instead of ``cfg.noise_scale`` (models trained together
    under ``jax.vmap`` with different noise scales)."""
    s = cfg.noise_scale if noise_scale is None else noise_scale
    mean, logvar = model.apply({"params": params}, x, method=VAE.encode)
    eps = jax.random.normal(key, mean.shape, mean.dtype)
    z = mean + s * jnp.exp(0.5 * logvar) * eps
    logits = model.apply({"params": params}, z, method=VAE.decode)
    return Terms(
        recon=-log_likelihood(logits, x, cfg),
        kl_objective=gaussian_kl(mean, logvar),
        kl=gaussian_kl(mean, sampled_logvar(logvar, s)),
    )


def training_loss(
    model: VAE,
    params: dict,
    x: jax.Array,
    key: jax.Array,
    cfg: ml_collections.ConfigDict,
    noise_scale: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Mean over the batch of recon + the seed's KL, and ``[loss, recon, kl]`` for logging."""
    terms = elbo_terms(model, params, x, key, cfg, noise_scale)
    recon = jnp.mean(terms.recon)
    kl = jnp.mean(terms.kl_objective)
    loss = recon + kl
    return loss, jnp.stack([loss, recon, kl])
