"""The seed's conv VAE (Frans 2016) and its stride-2 convs, computed as :mod:`vae_jax.core.conv_ops`
says (``model.conv_impl``)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from vae_jax.core import conv_ops
from vae_jax.core.models.registry import architecture
from vae_jax.core.models.vae import VAE
from vae_jax.core.settings import Setting, one_of

# The seed (kvfrans/variational-autoencoder, ops.py) initializes conv and transposed-conv
# kernels with a truncated normal and dense matrices with a normal, both of stddev 0.02, and
# biases with zeros.
SEED_CONV_INIT = nn.initializers.truncated_normal(0.02)
SEED_DENSE_INIT = nn.initializers.normal(0.02)


class Stride2Conv(nn.Module):
    """A 5x5 stride-2 SAME conv (``transpose=False``, with bias) or transposed conv (no bias),
    with the parameters of ``nn.Conv`` / ``nn.ConvTranspose`` and the math of
    :mod:`vae_jax.core.conv_ops` implementation ``impl`` (``auto``: chosen for this layer by
    :func:`vae_jax.core.conv_ops.resolve`)."""

    features: int
    transpose: bool = False
    impl: str = "native"
    kernel_size: int = 5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", SEED_CONV_INIT, (k, k, x.shape[-1], self.features))
        image_channels = self.features if self.transpose else x.shape[-1]
        conv, conv_transpose = conv_ops.conv_fns(conv_ops.resolve(self.impl, image_channels))
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
    """The seed's decoder: dense z->(H/4)x(W/4)x32, ReLU, two 5x5 stride-2 transposed convs to
    HxWxC (7x7x32 -> 14x14x16 -> 28x28x1 for MNIST).

    As in the seed, the transposed convs have no bias (its ``conv_transpose`` creates one but
    never adds it).
    """

    image_shape: Sequence[int] = (28, 28, 1)
    conv_impl: str = "native"

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        h, w, c = self.image_shape
        x = nn.Dense(h // 4 * (w // 4) * 32, kernel_init=SEED_DENSE_INIT)(z)
        x = nn.relu(x.reshape(z.shape[0], h // 4, w // 4, 32))
        x = Stride2Conv(16, True, self.conv_impl, name="ConvTranspose_0")(x)
        return Stride2Conv(c, True, self.conv_impl, name="ConvTranspose_1")(nn.relu(x))


CONV_IMPL = Setting(
    "auto",
    one_of(*conv_ops.IMPLS),
    "conv, resnet, ladder: how the strided convs are computed, same math: auto = native off "
    "the CPU; on the CPU im2col for a grayscale image side, space_to_depth for the others",
    resumable=True,
)


@architecture("conv", {"conv_impl": CONV_IMPL})
def conv_vae(image_shape: tuple[int, ...], latent_dim: int, conv_impl: str) -> VAE:
    """The seed's conv VAE (Frans 2016) for images whose height and width divide by 4."""
    h, w, _ = image_shape
    if h % 4 or w % 4:
        raise ValueError(
            f"model.arch='conv' needs images whose height and width divide by 4; images are "
            f"{image_shape}. Use model.arch='mlp', or pad or crop the images."
        )
    return VAE(ConvEncoder(latent_dim, conv_impl), ConvDecoder(image_shape, conv_impl))
