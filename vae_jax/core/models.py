"""Encoder and decoder networks: pure Flax linen modules, no randomness inside.

An encoder maps images ``[B, H, W, C]`` (floats in [0, 1]) to the mean and the log-variance of a
diagonal Gaussian q(z|x): ``stddev = exp(logvar / 2)`` is positive by construction and the KL
term is stable in ``logvar``. A decoder maps latents ``[B, latent_dim]`` to pixel logits
``[B, H, W, C]``. Sampling lives in :mod:`vae_jax.core.objectives`, so both are deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax.core import conv_ops

# The seed (kvfrans/variational-autoencoder, ops.py) initializes conv and transposed-conv
# kernels with a truncated normal and dense matrices with a normal, both of stddev 0.02, and
# biases with zeros.
SEED_CONV_INIT = nn.initializers.truncated_normal(0.02)
SEED_DENSE_INIT = nn.initializers.normal(0.02)
ACTIVATIONS = {"relu": nn.relu, "tanh": jnp.tanh}
CONV_IMAGE_SHAPE = (28, 28, 1)


class Stride2Conv(nn.Module):
    """A 5x5 stride-2 SAME conv (``transpose=False``, with bias) or transposed conv (no bias),
    with the parameters of ``nn.Conv`` / ``nn.ConvTranspose`` and the math of
    :mod:`vae_jax.core.conv_ops` implementation ``impl`` (``native`` or ``space_to_depth``)."""

    features: int
    transpose: bool = False
    impl: str = "native"
    kernel_size: int = 5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", SEED_CONV_INIT, (k, k, x.shape[-1], self.features))
        conv, conv_transpose = conv_ops.conv_fns(self.impl)
        if self.transpose:
            return conv_transpose(x, kernel)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return conv(x, kernel) + bias


class ConvEncoder(nn.Module):
    """The seed's encoder: two 5x5 stride-2 SAME convs (1->16->32), leaky ReLU 0.2, two heads.

    ``conv_impl``: how the convs are computed (:func:`vae_jax.core.conv_ops.resolve` names).
    """

    latent_dim: int
    conv_impl: str = "native"

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        for i, features in enumerate((16, 32)):
            x = Stride2Conv(features, impl=self.conv_impl, name=f"Conv_{i}")(x)
            x = nn.leaky_relu(x, 0.2)
        x = x.reshape(x.shape[0], -1)
        mean = nn.Dense(self.latent_dim, kernel_init=SEED_DENSE_INIT, name="mean")(x)
        logvar = nn.Dense(self.latent_dim, kernel_init=SEED_DENSE_INIT, name="logvar")(x)
        return mean, logvar


class ConvDecoder(nn.Module):
    """The seed's decoder: dense z->7x7x32, ReLU, two 5x5 stride-2 transposed convs to 28x28x1.

    As in the seed, the transposed convs have no bias (its ``conv_transpose`` creates one but
    never adds it).
    """

    conv_impl: str = "native"

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        h = nn.Dense(7 * 7 * 32, kernel_init=SEED_DENSE_INIT)(z)
        h = nn.relu(h.reshape(z.shape[0], 7, 7, 32))
        h = Stride2Conv(16, True, self.conv_impl, name="ConvTranspose_0")(h)
        return Stride2Conv(1, True, self.conv_impl, name="ConvTranspose_1")(nn.relu(h))


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


class VAE(nn.Module):
    """An encoder and a decoder; ``__call__`` (used for init) encodes and decodes the mean."""

    encoder: nn.Module
    decoder: nn.Module

    def __call__(self, x: jax.Array) -> jax.Array:
        mean, _ = self.encode(x)
        return self.decode(mean)

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.encoder(x)

    def decode(self, z: jax.Array) -> jax.Array:
        return self.decoder(z)


def make_model(image_shape: Sequence[int], arch: str, latent_dim: int, **settings) -> VAE:
    """The VAE of architecture ``arch`` for images of ``image_shape`` (H, W, C).

    ``settings``: the keys of ``config.model``; each architecture reads its own (conv:
    ``conv_impl``; mlp: ``mlp_hidden_dims``, ``mlp_activation``) and leaves the objective's.
    """
    image_shape = tuple(image_shape)
    if arch == "conv":
        if image_shape != CONV_IMAGE_SHAPE:
            raise ValueError(
                f"model.arch='conv' is the seed's 28x28x1 network; images are {image_shape}. "
                "Use model.arch='mlp' for other shapes."
            )
        impl = conv_ops.resolve(settings["conv_impl"])
        return VAE(ConvEncoder(latent_dim, impl), ConvDecoder(impl))
    hidden, act = tuple(settings["mlp_hidden_dims"]), settings["mlp_activation"]
    return VAE(MLPEncoder(latent_dim, hidden, act), MLPDecoder(image_shape, hidden, act))


def init_params(model: VAE, key: jax.Array, image_shape: Sequence[int]) -> dict:
    """Parameters of ``model`` from ``key`` (a batch of one zero image traces every layer)."""
    return model.init(key, jnp.zeros((1, *image_shape), jnp.float32))["params"]
