"""Dense encoders and decoders, as in the Flax and PyTorch examples and Burda et al."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax.core.models.registry import architecture
from vae_jax.core.models.vae import VAE
from vae_jax.core.settings import WIDTHS, Setting, one_of

ACTIVATIONS = {"relu": nn.relu, "tanh": jnp.tanh}


class MLPEncoder(nn.Module):
    """Flattened image -> dense layers -> mean and log-variance heads (Flax example's encoder)."""

    latent_dim: int
    hidden_dims: Sequence[int]
    activation: str = "relu"

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden_dims:
            x = ACTIVATIONS[self.activation](nn.Dense(width)(x))
        return nn.Dense(self.latent_dim, name="mean")(x), nn.Dense(self.latent_dim, name="logvar")(
            x
        )


class MLPDecoder(nn.Module):
    """Latent -> dense layers (reversed widths) -> logits of every pixel, reshaped to the image."""

    image_shape: Sequence[int]
    hidden_dims: Sequence[int]
    activation: str = "relu"

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        h = z
        for width in reversed(self.hidden_dims):
            h = ACTIVATIONS[self.activation](nn.Dense(width)(h))
        size = 1
        for d in self.image_shape:
            size *= d
        return nn.Dense(size)(h).reshape(z.shape[0], *self.image_shape)


@architecture(
    "mlp",
    {
        "mlp_hidden_dims": Setting((500,), WIDTHS, "mlp: hidden widths (the decoder's reversed)"),
        "mlp_activation": Setting("relu", one_of(*ACTIVATIONS), "mlp: the activation"),
    },
)
def mlp_vae(
    image_shape: tuple[int, ...], latent_dim: int, mlp_hidden_dims: tuple, mlp_activation: str
) -> VAE:
    """Dense layers, as in the Flax and PyTorch examples (784-500-20) and Burda et al."""
    hidden = tuple(mlp_hidden_dims)
    return VAE(
        MLPEncoder(latent_dim, hidden, mlp_activation),
        MLPDecoder(image_shape, hidden, mlp_activation),
    )
