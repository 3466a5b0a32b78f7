"""Importance-weighted bounds on log p(x) (Burda, Grosse & Salakhutdinov, 2016), in nats.

For an image x and k samples z_i ~ q(z|x), the log importance weights are
``log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x)``. Their mean is a single-sample-per-draw
ELBO estimate; ``log mean_i exp(log w_i)`` is the k-sample IWAE bound, which is <= log p(x),
increases with k, and equals the ELBO estimate for k = 1. With ``noise_scale`` s, q is the
distribution actually sampled, N(mean, (s * stddev)^2), so every bound here is valid.

Noise is explicit: sample s of image g uses ``fold_in(fold_in(key, g), s)``. A bound therefore
does not depend on how images and samples are split into chunks, nor on the device count (up
to float rounding in the sums).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections

from vae_jax.core import objectives
from vae_jax.core.models import VAE

LOG_2PI = math.log(2.0 * math.pi)


def sample_eps(key: jax.Array, image_ids: jax.Array, sample_ids: jax.Array, dim: int) -> jax.Array:
    """Standard normal noise ``[len(image_ids), len(sample_ids), dim]``, one key per pair."""

    def one(g, s):
        return jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, g), s), (dim,))

    return jax.vmap(lambda g: jax.vmap(lambda s: one(g, s))(sample_ids))(image_ids)


def log_weights(
    model: VAE, params: dict, x: jax.Array, eps: jax.Array, cfg: ml_collections.ConfigDict
) -> jax.Array:
    """``[B, K]`` log importance weights of images ``x [B, ...]`` for noise ``eps [B, K, z]``."""
    variables = {"params": params}
    mean, logvar = model.apply(variables, x, method=VAE.encode)
    logstd = 0.5 * objectives.sampled_logvar(logvar, cfg.noise_scale)
    z = mean[:, None] + jnp.exp(logstd)[:, None] * eps
    log_q = jnp.sum(-0.5 * jnp.square(eps) - logstd[:, None] - 0.5 * LOG_2PI, axis=-1)
    log_p = jnp.sum(-0.5 * jnp.square(z) - 0.5 * LOG_2PI, axis=-1)
    b, k = eps.shape[:2]
    logits = model.apply(variables, z.reshape(b * k, -1), method=VAE.decode)
    x_rep = jnp.broadcast_to(x[:, None], (b, k, *x.shape[1:])).reshape(b * k, *x.shape[1:])
    log_px = objectives.log_likelihood(logits, x_rep, cfg).reshape(b, k)
    return log_px + log_p - log_q


def iwae_bound(log_w: jax.Array) -> jax.Array:
    """Per-image k-sample bound ``log mean exp(log_w)`` over the last axis."""
    return jax.nn.logsumexp(log_w, axis=-1) - math.log(log_w.shape[-1])


def elbo_estimate(log_w: jax.Array) -> jax.Array:
    """Per-image Monte Carlo ELBO: the mean of the log weights over the last axis."""
    return jnp.mean(log_w, axis=-1)
