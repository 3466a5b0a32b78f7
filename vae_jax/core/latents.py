"""What a model gives for a batch, in terms of densities: the interface every objective, every
evaluation and the Python API use, so that a learned prior, a flow posterior or a hierarchy of
latents is one new file and none of them has to change.

A model (a Flax module, see :mod:`vae_jax.core.models`) has these methods:

- ``features(x)``: the deterministic, per-image part of inference (the encoder's outputs, or
  a bottom-up pass), computed once per image even when several latents are drawn for it;
- ``forward(features, x, noise, noise_scale, given=None) -> Pass``: draws every stochastic
  layer (``z = f(eps)``, eps from ``noise``) or takes the latents ``given``, and returns each
  layer's sample with log q and log p, and the decoder's logits of p(x|z);
- ``sample_prior(key, n) -> (latents, logits)``: ancestral samples of the model's own prior;
- ``decode_top(z) -> logits``: p(x | top layer z), the lower layers at their prior means;
- ``posterior(x) -> tuple[Gaussian, ...]``: each layer's q along the noise-free path (the
  means taken as the samples), top first;
- ``__call__(x)``: one pass that creates every parameter (used to initialize).

Layers are listed top first: ``layers[0]`` is the one whose prior depends on no other latent;
the decoder reads the last. log-densities are in nats per image, summed over the layer's
dimensions. ``noise_scale`` s scales the noise of every Gaussian layer: z = mean + s * stddev *
eps, and log q is that of the q actually sampled.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

LOG_2PI = math.log(2.0 * math.pi)
Noise = Callable[[int, tuple[int, ...]], jax.Array]  # (layer, [N, *shape]) -> N(0, 1) noise


class Gaussian(NamedTuple):
    """A diagonal Gaussian, mean and log-variance of shape ``[N, *shape]``."""

    mean: Any
    logvar: Any


STANDARD_NORMAL = Gaussian(0.0, 0.0)  # the prior N(0, I): the seed's closed-form KL


class Layer(NamedTuple):
    """One stochastic layer of a pass, for N images."""

    z: jax.Array  # [N, *shape]: the latent drawn (or given)
    log_q: jax.Array  # [N]: log q(z | x, the layers above), of the q actually sampled
    log_p: jax.Array  # [N]: log p(z | the layers above)
    q: Gaussian | None  # q, before noise_scale, where q is this diagonal Gaussian, else None
    p: Gaussian | None  # the prior where KL(q || p) has a closed form given the layers above
    # that were drawn before this one (STANDARD_NORMAL for N(0, I)), else None


class Pass(NamedTuple):
    layers: tuple[Layer, ...]  # top first
    logits: jax.Array  # [N, H, W, C]: the parameters of p(x | z)


def sum_per_image(v: jax.Array) -> jax.Array:
    """``[N, ...] -> [N]``: the sum over every axis but the first."""
    return jnp.sum(v, axis=tuple(range(1, v.ndim)))


def standard_log_prob(z: jax.Array) -> jax.Array:
    """log N(z | 0, I) per image."""
    return sum_per_image(-0.5 * jnp.square(z) - 0.5 * LOG_2PI)


def gaussian_log_prob(z: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """log N(z | mean, exp(logvar)) per image."""
    std = jnp.exp(0.5 * logvar)
    return sum_per_image(-0.5 * jnp.square((z - mean) / std) - 0.5 * logvar - 0.5 * LOG_2PI)


def log_prob_of_noise(eps: jax.Array, logstd: jax.Array) -> jax.Array:
    """log N(z | mean, std^2) per image for z = mean + std * eps, from ``eps`` itself (no
    division: the same value as :func:`gaussian_log_prob`, without its rounding)."""
    return sum_per_image(-0.5 * jnp.square(eps) - logstd - 0.5 * LOG_2PI)


def sampled_logvar(logvar: jax.Array, noise_scale: float | jax.Array) -> jax.Array:
    """The log-variance of q actually sampled: log((noise_scale * stddev)^2)."""
    return logvar + 2.0 * jnp.log(noise_scale)


def twice_kl_per_dim(q: Gaussian, p: Gaussian) -> jax.Array:
    """2 KL(q || p) of each dimension; ``p`` STANDARD_NORMAL is the seed's formula."""
    if p is STANDARD_NORMAL:
        return jnp.square(q.mean) + jnp.exp(q.logvar) - q.logvar - 1.0
    return (
        (jnp.exp(q.logvar) + jnp.square(q.mean - p.mean)) / jnp.exp(p.logvar)
        + p.logvar
        - q.logvar
        - 1.0
    )


def gaussian_layer(
    q: Gaussian,
    noise: Noise | None,
    index: int,
    noise_scale: float | jax.Array,
    given: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """``(z, log q(z))`` of the diagonal Gaussian ``q`` with its stddev scaled by
    ``noise_scale``: ``z = mean + noise_scale * stddev * eps`` with eps = ``noise(index, shape)``
    (log q from eps), or ``given`` (log q at it)."""
    logvar = sampled_logvar(q.logvar, noise_scale)
    if given is not None:
        return given, gaussian_log_prob(given, q.mean, logvar)
    eps = noise(index, q.mean.shape)
    z = q.mean + noise_scale * jnp.exp(0.5 * q.logvar) * eps
    return z, log_prob_of_noise(eps, 0.5 * logvar)


def noise_from_key(key: jax.Array) -> Noise:
    """Noise for a batch drawn with ``key``: layer 0's from ``key`` itself (the seed's), layer
    l's from ``fold_in(key, l)``."""

    def noise(index: int, shape: tuple[int, ...]) -> jax.Array:
        k = key if index == 0 else jax.random.fold_in(key, index)
        return jax.random.normal(k, shape, jnp.float32)

    return noise


def noise_per_example(keys: jax.Array) -> Noise:
    """Noise for a batch with one key per example (``keys [N]``): example i's from its own
    key, so a bound does not depend on how the examples are split into chunks."""

    def noise(index: int, shape: tuple[int, ...]) -> jax.Array:
        def one(k):
            k = k if index == 0 else jax.random.fold_in(k, index)
            return jax.random.normal(k, shape[1:], jnp.float32)

        return jax.vmap(one)(keys)

    return noise


def zero_noise(index: int, shape: tuple[int, ...]) -> jax.Array:
    """No noise: every layer at its mean (initialization, reconstructions)."""
    del index
    return jnp.zeros(shape, jnp.float32)
