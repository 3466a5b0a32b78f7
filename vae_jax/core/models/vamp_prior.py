"""The VampPrior (Tomczak & Welling 2018): the prior is the mixture, with equal weights, of the
posteriors q(z | u_k) of K learned pseudo-inputs u_k, images that the encoder itself encodes."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax.core.models.mog_prior import COMPONENTS, mixture_log_prob
from vae_jax.core.models.registry import prior


class VampPrior(nn.Module):
    image_shape: tuple[int, ...]
    components: int
    gaussian = None  # no closed-form KL

    def setup(self):
        shape = (self.components, *self.image_shape)
        # pixels in (0, 1) through a sigmoid; at initialization, gray noise around 0.05-0.3
        self.pseudo_inputs = self.param("pseudo_inputs", nn.initializers.normal(0.5), shape)

    def _components(self, encoder: nn.Module) -> tuple[jax.Array, jax.Array]:
        return encoder(jax.nn.sigmoid(self.pseudo_inputs - 2.0))

    def log_prob(self, z: jax.Array, encoder: nn.Module) -> jax.Array:
        mean, logvar = self._components(encoder)
        log_weights = jnp.full((self.components,), -math.log(self.components))
        return mixture_log_prob(z, log_weights, mean, logvar)

    def sample(self, key: jax.Array, n: int, dim: int, encoder: nn.Module) -> jax.Array:
        mean, logvar = self._components(encoder)
        pick, noise = jax.random.split(key)
        c = jax.random.randint(pick, (n,), 0, self.components)
        return mean[c] + jnp.exp(0.5 * logvar[c]) * jax.random.normal(noise, (n, dim))

    def sample_components(self, key: jax.Array, per_component: int, encoder: nn.Module):
        """``[K, per_component, d]``: samples of each component."""
        mean, logvar = self._components(encoder)
        eps = jax.random.normal(key, (self.components, per_component, mean.shape[-1]))
        return mean[:, None] + jnp.exp(0.5 * logvar)[:, None] * eps

    def pseudo_images(self) -> jax.Array:
        return jax.nn.sigmoid(self.pseudo_inputs - 2.0)


@prior("vamp", {"prior_components": COMPONENTS})
def vamp_prior(latent_dim: int, image_shape: tuple[int, ...], prior_components: int) -> nn.Module:
    """The encoder's posteriors of K learned pseudo-inputs, mixed (``model.prior_components``)."""
    return VampPrior(tuple(image_shape), prior_components)
