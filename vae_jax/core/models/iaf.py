"""An inverse autoregressive flow after the Gaussian posterior (Kingma et al. 2016): steps
z <- sigma * z + (1 - sigma) * m, with (m, s) = MADE(z, context) autoregressive in z and
sigma = sigmoid(s); log q(z) falls by sum(log sigma) at each step. The context is the
encoder's mean and log-variance. Successive steps reverse the order of the dimensions.

log q of a given z would need the flow's inverse (one pass per dimension): DReG, which
evaluates q at given latents, is refused with this posterior.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.core.models.registry import posterior
from vae_jax.core.settings import POSITIVE_INT, Setting


def made_masks(dim: int, hidden: int) -> tuple[np.ndarray, np.ndarray]:
    """The masks (``[in, out]``, as Flax lays kernels out) of a one-hidden-layer MADE whose
    output i depends on inputs 0..i-1 only."""
    degrees_in = np.arange(1, dim + 1)
    degrees_hidden = np.arange(hidden) % max(dim - 1, 1) + 1
    to_hidden = (degrees_hidden[None, :] >= degrees_in[:, None]).astype(np.float32)
    to_out = (degrees_in[None, :] > degrees_hidden[:, None]).astype(np.float32)
    return to_hidden, to_out


class MaskedDense(nn.Module):
    features: int
    mask: np.ndarray  # [in, out]
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return x @ (kernel * self.mask) + bias


class IAFStep(nn.Module):
    hidden: int
    reverse: bool

    @nn.compact
    def __call__(self, z: jax.Array, context: jax.Array) -> tuple[jax.Array, jax.Array]:
        d = z.shape[-1]
        if self.reverse:
            z = z[..., ::-1]
        to_hidden, to_out = made_masks(d, self.hidden)
        h = nn.elu(MaskedDense(self.hidden, to_hidden)(z) + nn.Dense(self.hidden)(context))
        small = nn.initializers.normal(1e-3)
        m = MaskedDense(d, to_out, small, name="shift")(h)
        s = MaskedDense(d, to_out, small, name="gate")(h) + 1.5  # sigma ~ 0.82: near identity
        sigma = jax.nn.sigmoid(s)
        z = sigma * z + (1.0 - sigma) * m
        log_det = jnp.sum(jax.nn.log_sigmoid(s), axis=-1)
        return (z[..., ::-1] if self.reverse else z), log_det


class IAF(nn.Module):
    steps: int
    hidden: int

    @nn.compact
    def __call__(self, z: jax.Array, context: jax.Array) -> tuple[jax.Array, jax.Array]:
        log_det = jnp.zeros(z.shape[:1])
        for i in range(self.steps):
            z, step_log_det = IAFStep(self.hidden, reverse=i % 2 == 1, name=f"step_{i}")(z, context)
            log_det = log_det + step_log_det
        return z, log_det


@posterior(
    "iaf",
    {
        "iaf_steps": Setting(2, POSITIVE_INT, "iaf: autoregressive steps after the Gaussian"),
        "iaf_hidden": Setting(256, POSITIVE_INT, "iaf: hidden units of each step's MADE"),
    },
)
def iaf_posterior(latent_dim: int, iaf_steps: int, iaf_hidden: int) -> nn.Module:
    """An inverse autoregressive flow of ``model.iaf_steps`` steps after the Gaussian."""
    return IAF(iaf_steps, iaf_hidden)
