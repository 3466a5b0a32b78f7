"""The VAE objective and the importance weights of the IWAE bound, in nats per image.

Every per-image term is summed over pixels (reconstruction) or latent dimensions (KL); the
training loss is the mean over the batch of their sum. Data ``x`` are floats in [0, 1]:
grayscale intensities, or 0/1 when binarized (see :mod:`vae_jax.core.pixels`).

``noise_scale`` (``s``) scales the reparameterization noise: z = mean + s * stddev * eps, eps ~
N(0, I). The training loss keeps the seed's latent term KL(N(mean, stddev^2) || N(0, I)), which
ignores ``s``; every reported bound instead uses the distribution actually sampled,
q = N(mean, (s * stddev)^2), so it is a valid evidence lower bound for any ``s``. For ``s = 1``
the two coincide and the training loss is the negative ELBO.

With the Bernoulli likelihood on grayscale data the reconstruction term is the seed's sigmoid
cross-entropy; it is not the log-density of a normalized distribution over [0, 1], so the
"ELBO" then bounds no likelihood. Binarize the data for numbers comparable with papers.

The IWAE bound (Burda, Grosse & Salakhutdinov, 2016): for an image x and k samples
z_i ~ q(z|x), ``log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x)`` and the bound is
``log mean_i exp(log w_i)``. Sample s of image g uses ``fold_in(fold_in(key, g), s)``, so a
bound does not depend on how images and samples are split into chunks, nor on the device count.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from vae_jax.core.models import VAE
from vae_jax.core.settings import (
    BOOL,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    Setting,
    one_of,
)

LIKELIHOODS = ("bernoulli", "gaussian")
OBJECTIVES = ("elbo", "iwae")
SETTINGS = {  # the objective's config keys; make_loss takes them by their last component
    "model.likelihood": Setting(
        "bernoulli",
        one_of(*LIKELIHOODS),
        "p(x|z): bernoulli (sigmoid cross-entropy, the seed) or gaussian around sigmoid(logits)",
    ),
    "model.obs_stddev": Setting(0.1, POSITIVE, "gaussian: the observation stddev"),
    "objective.name": Setting(
        "elbo",
        one_of(*OBJECTIVES),
        "the training loss: elbo (with beta, warm-up, free bits) or iwae (k samples, Burda et al.)",
    ),
    "objective.beta": Setting(1.0, NON_NEGATIVE, "elbo: the weight of the KL term"),
    "objective.kl_warmup_steps": Setting(
        0, NON_NEGATIVE_INT, "elbo: the KL weight grows linearly from 0 over N steps"
    ),
    "objective.free_bits": Setting(
        0.0, NON_NEGATIVE, "elbo: nats of KL per latent dimension left unpenalized"
    ),
    "objective.k": Setting(1, POSITIVE_INT, "iwae: samples per image"),
    "objective.dreg": Setting(
        False, BOOL, "iwae: doubly reparameterized encoder gradients (Tucker et al. 2018)"
    ),
}
Loss = Callable[..., tuple[jax.Array, jax.Array]]  # (params, x, key, step, noise_scale)
LOG_2PI = math.log(2.0 * math.pi)
LogLikelihood = Callable[[jax.Array, jax.Array], jax.Array]  # (logits, x) -> [B] nats


class Terms(NamedTuple):
    """Per-image terms, each of shape [B], in nats."""

    recon: jax.Array  # -log p(x|z) for one z ~ q, summed over pixels
    kl_objective: jax.Array  # the seed's latent loss, KL(N(mean, stddev^2) || N(0, I))
    kl: jax.Array  # KL(q || N(0, I)) of q = N(mean, (noise_scale * stddev)^2), the one sampled


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)), summed over the last axis."""
    return 0.5 * jnp.sum(_twice_kl_per_dim(mean, logvar), axis=-1)


def _twice_kl_per_dim(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """2 KL of each latent dimension: mean^2 + var - log var - 1."""
    return jnp.square(mean) + jnp.exp(logvar) - logvar - 1.0


def _sum_pixels(v: jax.Array) -> jax.Array:
    return jnp.sum(v.reshape(v.shape[0], -1), axis=-1)


def bernoulli_log_prob(logits: jax.Array, x: jax.Array) -> jax.Array:
    """log Bernoulli(x | sigmoid(logits)) summed over pixels; stable for any logits."""
    return _sum_pixels(x * logits - jnp.logaddexp(0.0, logits))


def gaussian_log_prob(mean: jax.Array, x: jax.Array, stddev: float) -> jax.Array:
    """log N(x | mean, stddev^2) summed over pixels."""
    z = (x - mean) / stddev
    return _sum_pixels(-0.5 * jnp.square(z) - math.log(stddev) - 0.5 * LOG_2PI)


def decoder_mean(logits: jax.Array) -> jax.Array:
    """The mean of p(x|z) for either likelihood: pixel intensities in (0, 1)."""
    return jax.nn.sigmoid(logits)


def _gaussian_log_likelihood(logits: jax.Array, x: jax.Array, stddev: float) -> jax.Array:
    return gaussian_log_prob(decoder_mean(logits), x, stddev)


def log_likelihood(name: str, obs_stddev: float) -> LogLikelihood:
    """``(logits, x) -> log p(x|z)`` per image: ``bernoulli`` (sigmoid cross-entropy), or
    ``gaussian`` with stddev ``obs_stddev`` around ``sigmoid(logits)``."""
    if name == "bernoulli":
        return bernoulli_log_prob
    if name == "gaussian":
        return functools.partial(_gaussian_log_likelihood, stddev=obs_stddev)
    raise ValueError(f"likelihood {name!r}: use one of {', '.join(LIKELIHOODS)}")


def sampled_logvar(logvar: jax.Array, noise_scale: float | jax.Array) -> jax.Array:
    """log-variance of q actually sampled: log((noise_scale * stddev)^2)."""
    return logvar + 2.0 * jnp.log(noise_scale)


def elbo_terms(
    model: VAE,
    params: dict,
    x: jax.Array,
    key: jax.Array,
    log_lik: LogLikelihood,
    noise_scale: float | jax.Array,
) -> Terms:
    """Encode ``x``, draw one z per image with ``key``, decode, and return the terms."""
    mean, logvar, logits = _encode_sample_decode(model, params, x, key, noise_scale)
    return Terms(
        recon=-log_lik(logits, x),
        kl_objective=gaussian_kl(mean, logvar),
        kl=gaussian_kl(mean, sampled_logvar(logvar, noise_scale)),
    )


def _encode_sample_decode(model, params, x, key, noise_scale):
    """q's mean and log-variance of ``x``, and the decoder's logits at one z = mean +
    noise_scale * stddev * eps per image (the reparameterization trick), eps drawn with ``key``."""
    mean, logvar = model.apply({"params": params}, x, method=VAE.encode)
    eps = jax.random.normal(key, mean.shape, mean.dtype)
    z = mean + noise_scale * jnp.exp(0.5 * logvar) * eps
    return mean, logvar, model.apply({"params": params}, z, method=VAE.decode)


def training_loss(
    model: VAE,
    params: dict,
    x: jax.Array,
    key: jax.Array,
    log_lik: LogLikelihood,
    noise_scale: float | jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """The seed's loss: mean over the batch of recon + KL(N(mean, stddev^2) || N(0, I)), and
    ``[loss, recon, kl]`` for logging."""
    terms = elbo_terms(model, params, x, key, log_lik, noise_scale)
    recon = jnp.mean(terms.recon)
    kl = jnp.mean(terms.kl_objective)
    loss = recon + kl
    return loss, jnp.stack([loss, recon, kl])


def make_loss(
    model: VAE,
    *,
    likelihood: str,
    obs_stddev: float,
    name: str,
    beta: float,
    kl_warmup_steps: int,
    free_bits: float,
    k: int,
    dreg: bool,
) -> Loss:
    """``(params, x, key, step, noise_scale) -> (loss, [loss, recon, kl])``, nats per image:
    the training loss the objective's settings (:data:`SETTINGS`, by their last component)
    describe; ``noise_scale`` is given at each call instead (runs trained together differ in
    it). With the defaults it is the seed's loss, :func:`training_loss`, bit for bit."""
    log_lik = log_likelihood(likelihood, obs_stddev)
    if name == "iwae":
        return functools.partial(_iwae_loss, model, log_lik=log_lik, k=k, dreg=dreg)
    if beta == 1.0 and kl_warmup_steps == 0 and free_bits == 0.0:
        return lambda params, x, key, step, noise_scale: training_loss(
            model, params, x, key, log_lik, noise_scale
        )
    return functools.partial(
        _weighted_elbo_loss, model, log_lik=log_lik, beta=beta, warmup=kl_warmup_steps,
        free_bits=free_bits,
    )  # fmt: skip


def kl_weight(step: jax.Array, beta: float, warmup: int) -> jax.Array:
    """``beta``, reached linearly from 0 over the first ``warmup`` steps."""
    if warmup == 0:
        return jnp.asarray(beta, jnp.float32)
    return beta * jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / warmup)


def _weighted_elbo_loss(model, params, x, key, step, noise_scale, *, log_lik, beta, warmup,
                        free_bits):  # fmt: skip
    """recon + kl_weight(step) * KL, the KL of each latent dimension (its batch mean) counted
    as at least ``free_bits`` nats (Kingma et al. 2016); the logged KL is the true one."""
    mean, logvar, logits = _encode_sample_decode(model, params, x, key, noise_scale)
    recon = jnp.mean(-log_lik(logits, x))
    kl_per_dim = jnp.mean(0.5 * _twice_kl_per_dim(mean, logvar), axis=0)
    kl = jnp.sum(kl_per_dim)
    penalized = jnp.sum(jnp.maximum(kl_per_dim, free_bits)) if free_bits else kl
    loss = recon + kl_weight(step, beta, warmup) * penalized
    return loss, jnp.stack([loss, recon, kl])


def _iwae_loss(model, params, x, key, step, noise_scale, *, log_lik, k, dreg):
    """Minus the k-sample IWAE bound (Burda et al. 2016), batch mean; with ``dreg`` the
    encoder's gradient is the doubly reparameterized one (Tucker et al. 2018): the weights'
    squares times the path derivative of each log weight, the score term dropped. The decoder's
    gradient is the IWAE gradient either way. Logged: recon and KL of q (analytic)."""
    del step
    mean, logvar = model.apply({"params": params}, x, method=VAE.encode)
    eps = jax.random.normal(key, (x.shape[0], k, mean.shape[-1]), mean.dtype)
    std = noise_scale * jnp.exp(0.5 * logvar)
    z = mean[:, None] + std[:, None] * eps
    log_w, recon = _log_weights_at(model, params, x, z, mean, std, log_lik, dreg)
    bound = jax.nn.logsumexp(log_w, axis=-1) - math.log(k)
    loss = -jnp.mean(bound)
    if dreg:
        w = jax.lax.stop_gradient(jax.nn.softmax(log_w, axis=-1))
        encoder = -jnp.mean(jnp.sum(jnp.square(w) * log_w, axis=-1))
        decoder = _decoder_only_bound(model, params, x, z, mean, std, log_lik, k)
        loss = jax.lax.stop_gradient(loss) + (encoder - jax.lax.stop_gradient(encoder))
        loss = loss + (decoder - jax.lax.stop_gradient(decoder))
    kl = jnp.mean(gaussian_kl(mean, sampled_logvar(logvar, noise_scale)))
    return loss, jnp.stack([loss, recon, kl])


def _log_weights_at(model, params, x, z, mean, std, log_lik, stop_q: bool):
    """``[B, K]`` log weights at latents ``z [B, K, d]`` of q = N(mean, std^2), and the mean
    reconstruction term; ``stop_q``: the decoder's parameters and q's parameters in its density
    are constants (the path derivative through ``z`` alone, for DReG)."""
    dec = jax.tree.map(jax.lax.stop_gradient, params) if stop_q else params
    if stop_q:
        mean, std = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(std)
    log_px = _log_px(model, dec, x, z, log_lik)
    log_q = jnp.sum(-0.5 * jnp.square((z - mean[:, None]) / std[:, None])
                    - jnp.log(std)[:, None] - 0.5 * LOG_2PI, axis=-1)  # fmt: skip
    return log_px + _log_prior(z) - log_q, -jnp.mean(log_px)


def _log_px(model: VAE, params: dict, x: jax.Array, z: jax.Array, log_lik: LogLikelihood):
    """``[B, K]`` log p(x_b | z_bk) of images ``x [B, ...]`` at latents ``z [B, K, d]``."""
    b, k, d = z.shape
    logits = model.apply({"params": params}, z.reshape(b * k, d), method=VAE.decode)
    x_rep = jnp.broadcast_to(x[:, None], (b, k, *x.shape[1:])).reshape(b * k, *x.shape[1:])
    return log_lik(logits, x_rep).reshape(b, k)


def _log_prior(z: jax.Array) -> jax.Array:
    """log N(z | 0, I), summed over the last axis."""
    return jnp.sum(-0.5 * jnp.square(z) - 0.5 * LOG_2PI, axis=-1)


def _decoder_only_bound(model, params, x, z, mean, std, log_lik, k) -> jax.Array:
    """Minus the IWAE bound with the encoder's outputs held constant: its gradient is the
    decoder's IWAE gradient."""
    z, mean, std = (jax.lax.stop_gradient(a) for a in (z, mean, std))
    log_w, _ = _log_weights_at(model, params, x, z, mean, std, log_lik, stop_q=False)
    return -jnp.mean(jax.nn.logsumexp(log_w, axis=-1) - math.log(k))


def importance_noise(
    key: jax.Array, image_ids: jax.Array, sample_ids: jax.Array, dim: int
) -> jax.Array:
    """Standard normal noise ``[len(image_ids), len(sample_ids), dim]``, one key per pair."""

    def one(g, s):
        return jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, g), s), (dim,))

    return jax.vmap(lambda g: jax.vmap(lambda s: one(g, s))(sample_ids))(image_ids)


def log_weights(
    model: VAE,
    params: dict,
    x: jax.Array,
    eps: jax.Array,
    log_lik: LogLikelihood,
    noise_scale: float,
) -> jax.Array:
    """``[B, K]`` log importance weights of images ``x [B, ...]`` for noise ``eps [B, K, z]``
    (log q from ``eps`` itself: the same value as training's, without the division)."""
    mean, logvar = model.apply({"params": params}, x, method=VAE.encode)
    logstd = 0.5 * sampled_logvar(logvar, noise_scale)
    z = mean[:, None] + jnp.exp(logstd)[:, None] * eps
    log_q = jnp.sum(-0.5 * jnp.square(eps) - logstd[:, None] - 0.5 * LOG_2PI, axis=-1)
    return _log_px(model, params, x, z, log_lik) + _log_prior(z) - log_q
