"""The one-latent VAE: an encoder gives q(z|x) = N(mean, stddev^2), optionally followed by a flow
(an IAF posterior), a prior over z (N(0, I) by default, or a learned one), a decoder gives the
logits of p(x|z). Any encoder and decoder of :mod:`vae_jax.core.models` (or of your own) fit.

The encoder maps images ``[N, H, W, C]`` (floats in [0, 1]) to the mean and the log-variance of
q: ``stddev = exp(logvar / 2)`` is positive by construction and the KL term is stable in
``logvar``. The decoder maps latents ``[N, latent_dim]`` to pixel logits ``[N, H, W, C]``.
Noise comes from outside (:mod:`vae_jax.core.latents`), so every module is deterministic.
"""

from __future__ import annotations

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
    standard_log_prob,
    zero_noise,
)


class StandardNormal(nn.Module):
    """The prior N(0, I): no parameters, the seed's closed-form KL."""

    gaussian = STANDARD_NORMAL  # KL(q || p) in closed form

    def log_prob(self, z: jax.Array, encoder: nn.Module) -> jax.Array:
        del encoder
        return standard_log_prob(z)

    def sample(self, key: jax.Array, n: int, dim: int, encoder: nn.Module) -> jax.Array:
        del encoder
        return jax.random.normal(key, (n, dim))


class VAE(nn.Module):
    """An encoder, a decoder, a prior over z and an optional flow after the Gaussian q."""

    encoder: nn.Module
    decoder: nn.Module
    prior: nn.Module = StandardNormal()
    flow: nn.Module | None = None
    latent_dim: int = 0  # set by make_model
    q_params: tuple[str, ...] = ("encoder", "flow")  # what q's density depends on (DReG)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Every parameter, traced once: a pass at the posterior means (the prior's too)."""
        return self.forward(self.features(x), x, zero_noise, 1.0).logits

    def features(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.encoder(x)

    def forward(
        self,
        features: tuple[jax.Array, jax.Array],
        x: jax.Array,
        noise: Noise | None,
        noise_scale: float | jax.Array,
        given: tuple[jax.Array, ...] | None = None,
    ) -> Pass:
        mean, logvar = features
        q = Gaussian(mean, logvar)
        if self.flow is None:
            z, log_q = gaussian_layer(q, noise, 0, noise_scale, given[0] if given else None)
        else:
            if given is not None:
                raise ValueError("a flow posterior has no density at a given z (DReG)")
            z0, log_q0 = gaussian_layer(q, noise, 0, noise_scale)
            z, log_det = self.flow(z0, jnp.concatenate([mean, logvar], axis=-1))
            log_q = log_q0 - log_det
        closed = self.flow is None  # a flow leaves q no Gaussian: no closed-form KL
        p = getattr(self.prior, "gaussian", None) if closed else None
        log_p = self.prior.log_prob(z, self.encoder)
        return Pass((Layer(z, log_q, log_p, q if closed else None, p),), self.decoder(z))

    def sample_prior(self, key: jax.Array, n: int) -> tuple[tuple[jax.Array], jax.Array]:
        z = self.prior.sample(key, n, self.latent_dim, self.encoder)
        return (z,), self.decoder(z)

    def decode_top(self, z: jax.Array) -> jax.Array:
        return self.decoder(z)

    def posterior(self, x: jax.Array) -> tuple[Gaussian]:
        """q(z|x); after a flow, the mean is the flow of the Gaussian's mean (the noise-free z
        the decoder sees) and the log-variance the Gaussian's before the flow."""
        mean, logvar = self.encoder(x)
        if self.flow is not None:
            mean, _ = self.flow(mean, jnp.concatenate([mean, logvar], axis=-1))
        return (Gaussian(mean, logvar),)

    # The seed's names, kept for models and notebooks of one latent.
    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.encoder(x)

    def decode(self, z: jax.Array) -> jax.Array:
        return self.decoder(z)
