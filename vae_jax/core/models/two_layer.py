"""Burda et al. (2016)'s model with two stochastic layers: q(z1|x) q(z2|z1), p(z2) = N(0, I),
p(z1|z2) and p(x|z1), each a diagonal Gaussian (Bernoulli for x) given by two tanh dense
layers: 784-(200-200)-100-(100-100)-50 for q, the mirror for p.

Inference runs bottom-up: z2 is drawn given z1, so only z2's KL has a closed form (given z1);
z1's prior depends on z2, which depends on z1: its KL is the sample's log q - log p.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax.core.latents import (
    STANDARD_NORMAL,
    Gaussian,
    Layer,
    Noise,
    Pass,
    gaussian_layer,
    gaussian_log_prob,
    standard_log_prob,
    zero_noise,
)
from vae_jax.core.models.registry import architecture
from vae_jax.core.settings import POSITIVE_INT, WIDTHS, Setting


class GaussianMLP(nn.Module):
    """Dense tanh layers, then the mean and log-variance of a diagonal Gaussian."""

    hidden: Sequence[int]
    out: int

    @nn.compact
    def __call__(self, h: jax.Array) -> Gaussian:
        h = h.reshape(h.shape[0], -1)
        for width in self.hidden:
            h = jnp.tanh(nn.Dense(width)(h))
        return Gaussian(nn.Dense(self.out, name="mean")(h), nn.Dense(self.out, name="logvar")(h))


class LogitsMLP(nn.Module):
    hidden: Sequence[int]
    image_shape: Sequence[int]

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        h = z
        for width in self.hidden:
            h = jnp.tanh(nn.Dense(width)(h))
        size = math.prod(self.image_shape)
        return nn.Dense(size)(h).reshape(z.shape[0], *self.image_shape)


class TwoLayerVAE(nn.Module):
    image_shape: Sequence[int]
    z1: int = 100
    z2: int = 50
    hidden1: Sequence[int] = (200, 200)  # between x and z1
    hidden2: Sequence[int] = (100, 100)  # between z1 and z2
    q_params: tuple[str, ...] = ("q_z1", "q_z2")  # what q's density depends on (DReG)

    def setup(self):
        self.q_z1 = GaussianMLP(self.hidden1, self.z1)
        self.q_z2 = GaussianMLP(self.hidden2, self.z2)
        self.p_z1 = GaussianMLP(tuple(reversed(self.hidden2)), self.z1)
        self.p_x = LogitsMLP(tuple(reversed(self.hidden1)), tuple(self.image_shape))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.forward(self.features(x), x, zero_noise, 1.0).logits

    def features(self, x: jax.Array) -> Gaussian:
        return self.q_z1(x)

    def forward(self, features, x, noise: Noise | None, noise_scale, given=None) -> Pass:
        q1 = Gaussian(*features)
        z1, log_q1 = gaussian_layer(q1, noise, 1, noise_scale, given[1] if given else None)
        q2 = self.q_z2(z1)
        z2, log_q2 = gaussian_layer(q2, noise, 0, noise_scale, given[0] if given else None)
        p1 = self.p_z1(z2)
        top = Layer(z2, log_q2, standard_log_prob(z2), q2, STANDARD_NORMAL)
        bottom = Layer(z1, log_q1, gaussian_log_prob(z1, *p1), q1, None)  # z2 hangs on z1
        return Pass((top, bottom), self.p_x(z1))

    def sample_prior(self, key: jax.Array, n: int) -> tuple[tuple[jax.Array, ...], jax.Array]:
        top, bottom = jax.random.split(key)
        z2 = jax.random.normal(top, (n, self.z2))
        p1 = self.p_z1(z2)
        z1 = p1.mean + jnp.exp(0.5 * p1.logvar) * jax.random.normal(bottom, (n, self.z1))
        return (z2, z1), self.p_x(z1)

    def decode_top(self, z2: jax.Array) -> jax.Array:
        return self.p_x(self.p_z1(z2).mean)

    def posterior(self, x: jax.Array) -> tuple[Gaussian, Gaussian]:
        q1 = self.q_z1(x)
        return self.q_z2(q1.mean), q1


@architecture(
    "two_layer",
    {
        "two_layer_z1": Setting(100, POSITIVE_INT, "two_layer: dimensions of z1 (z2: latent_dim)"),
        "two_layer_hidden": Setting(
            (200, 200, 100, 100), WIDTHS, "two_layer: widths between x and z1, then z1 and z2"
        ),
    },
)
def two_layer_vae(
    image_shape: tuple[int, ...], latent_dim: int, two_layer_z1: int, two_layer_hidden: tuple
) -> nn.Module:
    """Burda et al.'s two stochastic layers (z1 of model.two_layer_z1, z2 of latent_dim)."""
    widths = tuple(two_layer_hidden)
    if len(widths) % 2:
        raise ValueError(
            f"model.two_layer_hidden needs an even number of widths (half between x and z1, "
            f"half between z1 and z2); got {widths}"
        )
    half = len(widths) // 2
    return TwoLayerVAE(image_shape, two_layer_z1, latent_dim, widths[:half], widths[half:])
