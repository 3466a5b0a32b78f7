"""The training objectives and the bounds, in nats per image, in terms of what a model gives for
a batch: each stochastic layer's sample with log q and log p, and p(x|z)'s logits
(:mod:`vae_jax.core.latents`). Nothing here assumes one Gaussian latent under N(0, I).

Every per-image term is summed over pixels (reconstruction) or latent dimensions (KL); the
training loss is the mean over the batch of their sum. Data ``x`` are floats in [0, 1]:
grayscale intensities, or 0/1 when binarized (see :mod:`vae_jax.core.pixels`).

The KL of a layer is its closed form where the model says one holds (``Layer.p``) and
``objective.kl`` allows it, else the one-sample estimate log q(z) - log p(z) at the z drawn.
``noise_scale`` (``s``) scales the reparameterization noise of every Gaussian layer: z = mean +
s * stddev * eps. The training loss keeps the seed's closed-form term KL(N(mean, stddev^2) ||
p), which ignores ``s``; every reported bound instead uses the distribution actually sampled,
so it is a valid evidence lower bound for any ``s``. For ``s = 1`` the two coincide.

With the Bernoulli likelihood on grayscale data the reconstruction term is the seed's sigmoid
cross-entropy; it is not the log-density of a normalized distribution over [0, 1], so the
"ELBO" then bounds no likelihood. Binarize the data for numbers comparable with papers.

The IWAE bound (Burda, Grosse & Salakhutdinov, 2016): for an image x and k samples
z_i ~ q(z|x), ``log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x)`` summed over the layers,
and the bound is ``log mean_i exp(log w_i)``. In evaluation sample s of image g uses
``fold_in(fold_in(key, g), s)``, so a bound does not depend on how images and samples are split
into chunks, nor on the device count.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax.core.latents import (
    LOG_2PI,
    Layer,
    Noise,
    Pass,
    noise_from_key,
    sampled_logvar,
    sum_per_image,
    twice_kl_per_dim,
)
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
KL_ESTIMATES = ("auto", "analytic", "sample")
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
    "objective.kl": Setting(
        "auto",
        one_of(*KL_ESTIMATES),
        "elbo: each layer's KL in closed form where the model has one (auto; analytic insists), "
        "else (sample: always) the sample's log q - log p",
    ),
    "objective.k": Setting(1, POSITIVE_INT, "iwae: samples per image"),
    "objective.dreg": Setting(
        False, BOOL, "iwae: doubly reparameterized encoder gradients (Tucker et al. 2018)"
    ),
}
Loss = Callable[..., tuple[jax.Array, jax.Array]]  # (params, x, key, step, noise_scale)
LogLikelihood = Callable[[jax.Array, jax.Array], jax.Array]  # (logits, x) -> [B] nats


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


# ---------------------------------------------------------------------------------------------
# A model's pass, and each layer's KL


def run_model(
    model: nn.Module,
    params: dict,
    x: jax.Array,
    noise: Noise | None,
    noise_scale: float | jax.Array,
    given: tuple | None = None,
    samples: int = 1,
) -> Pass:
    """The model's pass over images ``x [N, ...]``; with ``samples`` k, each image's features
    are computed once and k latents drawn for it: the pass covers N * k, image by image."""
    variables = {"params": params}
    features = model.apply(variables, x, method="features")
    if samples > 1:
        features = jax.tree.map(lambda a: jnp.repeat(a, samples, axis=0), features)
        x = jnp.repeat(x, samples, axis=0)
    return model.apply(variables, features, x, noise, noise_scale, given, method="forward")


def closed_form(layer: Layer, kl: str) -> bool:
    """Whether ``layer``'s KL is taken in closed form under ``objective.kl``."""
    return kl != "sample" and layer.q is not None and layer.p is not None


def kl_per_dim(layer: Layer, noise_scale: float | jax.Array | None) -> jax.Array:
    """The closed-form KL of each dimension ``[N, *shape]``: of q as sampled, or with
    ``noise_scale`` None of q's unscaled Gaussian (the seed's training term)."""
    q = layer.q
    if noise_scale is not None:
        q = q._replace(logvar=sampled_logvar(q.logvar, noise_scale))
    return 0.5 * twice_kl_per_dim(q, layer.p)


def layer_kl(layer: Layer, kl: str, noise_scale: float | jax.Array | None) -> jax.Array:
    """``[N]``: the layer's KL, in closed form where it holds (see :func:`kl_per_dim` for
    ``noise_scale``), else the sample's log q - log p."""
    if closed_form(layer, kl):
        return sum_per_image(kl_per_dim(layer, noise_scale))
    return layer.log_q - layer.log_p


class Terms(NamedTuple):
    """Per-image terms, each of shape [N], in nats."""

    recon: jax.Array  # -log p(x|z) for one z ~ q, summed over pixels
    kl_objective: jax.Array  # the KL the training loss uses (the seed's ignores noise_scale)
    kl: jax.Array  # the KL of the q sampled: the ELBO is -(recon + kl)
    kl_layers: tuple[jax.Array, ...]  # kl, layer by layer (top first)


def elbo_terms(
    model: nn.Module,
    params: dict,
    x: jax.Array,
    key: jax.Array,
    log_lik: LogLikelihood,
    noise_scale: float | jax.Array,
    kl: str = "auto",
) -> Terms:
    """Draw one latent per image with ``key`` and return the terms."""
    p = run_model(model, params, x, noise_from_key(key), noise_scale)
    layers = tuple(layer_kl(layer, kl, noise_scale) for layer in p.layers)
    return Terms(
        recon=-log_lik(p.logits, x),
        kl_objective=_total([layer_kl(layer, kl, None) for layer in p.layers]),
        kl=_total(layers),
        kl_layers=layers,
    )


def _total(terms: list | tuple) -> jax.Array:
    """The sum of per-layer terms (a single layer's as it is)."""
    return functools.reduce(jnp.add, terms)


# ---------------------------------------------------------------------------------------------
# Training losses


def make_loss(
    model: nn.Module,
    *,
    likelihood: str,
    obs_stddev: float,
    name: str,
    beta: float,
    kl_warmup_steps: int,
    free_bits: float,
    kl: str,
    k: int,
    dreg: bool,
) -> Loss:
    """``(params, x, key, step, noise_scale) -> (loss, [loss, recon, kl])``, nats per image:
    the training loss the objective's settings (:data:`SETTINGS`, by their last component)
    describe; ``noise_scale`` is given at each call instead (runs trained together differ in
    it). With the defaults it is the seed's loss bit for bit."""
    log_lik = log_likelihood(likelihood, obs_stddev)
    if name == "iwae":
        return functools.partial(_iwae_loss, model, log_lik=log_lik, k=k, dreg=dreg)
    if beta == 1.0 and kl_warmup_steps == 0 and free_bits == 0.0:
        return functools.partial(_elbo_loss, model, log_lik=log_lik, kl=kl)
    return functools.partial(
        _weighted_elbo_loss, model, log_lik=log_lik, beta=beta, warmup=kl_warmup_steps,
        free_bits=free_bits, kl=kl,
    )  # fmt: skip


def _elbo_loss(model, params, x, key, step, noise_scale, *, log_lik, kl):
    """Minus the ELBO (the seed's loss): the batch mean of recon + the KL of every layer."""
    del step
    terms = elbo_terms(model, params, x, key, log_lik, noise_scale, kl)
    recon = jnp.mean(terms.recon)
    kl_mean = jnp.mean(terms.kl_objective)
    loss = recon + kl_mean
    return loss, jnp.stack([loss, recon, kl_mean])


def kl_weight(step: jax.Array, beta: float, warmup: int) -> jax.Array:
    """``beta``, reached linearly from 0 over the first ``warmup`` steps."""
    if warmup == 0:
        return jnp.asarray(beta, jnp.float32)
    return beta * jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / warmup)


def _weighted_elbo_loss(model, params, x, key, step, noise_scale, *, log_lik, beta, warmup,
                        free_bits, kl):  # fmt: skip
    """recon + kl_weight(step) * KL, each layer's KL counted as at least ``free_bits`` nats per
    dimension (Kingma et al. 2016): per dimension, as its batch mean, where the KL has a closed
    form; as the layer's batch mean (``free_bits`` times its dimensions) where it is the
    sample's estimate. The logged KL is the true one."""
    p = run_model(model, params, x, noise_from_key(key), noise_scale)
    recon = jnp.mean(-log_lik(p.logits, x))
    true_kl, penalized = [], []
    for layer in p.layers:
        if closed_form(layer, kl):
            per_dim = jnp.mean(kl_per_dim(layer, None), axis=0)
            true_kl.append(jnp.sum(per_dim))
            penalized.append(jnp.sum(jnp.maximum(per_dim, free_bits)) if free_bits else true_kl[-1])
        else:
            estimate = jnp.mean(layer.log_q - layer.log_p)
            floor = free_bits * math.prod(layer.z.shape[1:])
            true_kl.append(estimate)
            penalized.append(jnp.maximum(estimate, floor) if free_bits else estimate)
    total = _total(true_kl)
    loss = recon + kl_weight(step, beta, warmup) * _total(penalized)
    return loss, jnp.stack([loss, recon, total])


def _log_weights(p: Pass, x: jax.Array, log_lik: LogLikelihood, samples: int) -> jax.Array:
    """``[N, samples]`` log importance weights of a pass over N * samples."""
    log_w = log_lik(p.logits, x) + sum(layer.log_p - layer.log_q for layer in p.layers)
    return log_w.reshape(-1, samples)


def _iwae_loss(model, params, x, key, step, noise_scale, *, log_lik, k, dreg):
    """Minus the k-sample IWAE bound (Burda et al. 2016), batch mean; with ``dreg`` the
    gradient of q's parameters is the doubly reparameterized one (Tucker et al. 2018): the
    weights' squares times the path derivative of each log weight, the score term dropped. The
    other parameters' gradient is the IWAE gradient either way. Logged: recon and the KL
    (closed form where it holds)."""
    del step
    noise, x_rep = noise_from_key(key), jnp.repeat(x, k, axis=0)
    p = run_model(model, params, x, noise, noise_scale, samples=k)
    log_w = _log_weights(p, x_rep, log_lik, k)
    loss = -jnp.mean(jax.nn.logsumexp(log_w, axis=-1) - math.log(k))
    if dreg:
        loss = _dreg_loss(model, params, x, p, log_w, loss, noise, noise_scale, log_lik, k)
    recon = -jnp.mean(log_lik(p.logits, x_rep))
    kl = jnp.mean(_total([layer_kl(layer, "auto", noise_scale) for layer in p.layers]))
    return loss, jnp.stack([loss, recon, kl])


def _dreg_loss(model, params, x, p: Pass, log_w, loss, noise, noise_scale, log_lik, k):
    """The loss whose gradient is DReG's for q's parameters (``model.q_params``: the path
    derivative of each log weight through its latents, every density's parameters held,
    weighted by the normalized weights' squares) and IWAE's for the others (the same draws,
    q's parameters held, so the latents are constants)."""
    stop = jax.lax.stop_gradient
    x_rep = jnp.repeat(x, k, axis=0)
    zs = tuple(layer.z for layer in p.layers)
    held = jax.tree.map(stop, params)
    through_z = run_model(model, held, x, None, noise_scale, given=zs, samples=k)
    w = stop(jax.nn.softmax(log_w, axis=-1))
    q_part = -jnp.mean(jnp.sum(jnp.square(w) * _log_weights(through_z, x_rep, log_lik, k), -1))
    q_held = {name: stop(v) if name in model.q_params else v for name, v in params.items()}
    at_z = run_model(model, q_held, x, noise, noise_scale, samples=k)
    p_part = -jnp.mean(jax.nn.logsumexp(_log_weights(at_z, x_rep, log_lik, k), -1) - math.log(k))
    return stop(loss) + (q_part - stop(q_part)) + (p_part - stop(p_part))


def log_weights(
    model: nn.Module,
    params: dict,
    x: jax.Array,
    noise: Noise,
    log_lik: LogLikelihood,
    noise_scale: float,
    samples: int,
) -> jax.Array:
    """``[N, samples]`` log importance weights of images ``x [N, ...]``, the latents of image
    n's sample s drawn from ``noise`` at row ``n * samples + s``."""
    p = run_model(model, params, x, noise, noise_scale, samples=samples)
    return _log_weights(p, jnp.repeat(x, samples, axis=0), log_lik, samples)
