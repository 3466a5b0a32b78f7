"""A learned mixture-of-Gaussians prior: K diagonal Gaussians with learned means, variances and
weights. log p(z) is a log-sum-exp over the components, so the KL has no closed form: the
objectives take the sample's log q - log p."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax.core.latents import LOG_2PI
from vae_jax.core.models.registry import prior
from vae_jax.core.settings import POSITIVE_INT, Setting

COMPONENTS = Setting(10, POSITIVE_INT, "mog, vamp: components of the learned prior")


def mixture_log_prob(z: jax.Array, log_weights: jax.Array, mean: jax.Array, logvar: jax.Array):
    """log sum_k w_k N(z | mean_k, exp(logvar_k)) of ``z [N, d]`` under K components ``[K, d]``
    (``log_weights [K]`` normalized)."""
    diff = z[:, None, :] - mean[None]
    per_dim = -0.5 * (jnp.square(diff) / jnp.exp(logvar)[None] + logvar[None] + LOG_2PI)
    return jax.nn.logsumexp(log_weights[None] + jnp.sum(per_dim, axis=-1), axis=-1)


class MixturePrior(nn.Module):
    latent_dim: int
    components: int
    gaussian = None  # no closed-form KL

    def setup(self):
        k, d = self.components, self.latent_dim
        self.means = self.param("means", nn.initializers.normal(1.0), (k, d))
        self.logvars = self.param("logvars", nn.initializers.zeros_init(), (k, d))
        self.logits = self.param("logits", nn.initializers.zeros_init(), (k,))

    def log_prob(self, z: jax.Array, encoder: nn.Module) -> jax.Array:
        del encoder
        return mixture_log_prob(z, jax.nn.log_softmax(self.logits), self.means, self.logvars)

    def sample(self, key: jax.Array, n: int, dim: int, encoder: nn.Module) -> jax.Array:
        del encoder
        pick, noise = jax.random.split(key)
        c = jax.random.categorical(pick, self.logits, shape=(n,))
        eps = jax.random.normal(noise, (n, dim))
        return self.means[c] + jnp.exp(0.5 * self.logvars[c]) * eps

    def sample_components(self, key: jax.Array, per_component: int, encoder: nn.Module):
        """``[K, per_component, d]``: samples of each component."""
        del encoder
        eps = jax.random.normal(key, (self.components, per_component, self.latent_dim))
        return self.means[:, None] + jnp.exp(0.5 * self.logvars)[:, None] * eps


@prior("mog", {"prior_components": COMPONENTS})
def mog_prior(latent_dim: int, image_shape: tuple[int, ...], prior_components: int) -> nn.Module:
    """A mixture of K learned diagonal Gaussians (``model.prior_components``)."""
    return MixturePrior(latent_dim, prior_components)
