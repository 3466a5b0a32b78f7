"""A residual conv VAE (as in Kingma et al. 2016, one diagonal Gaussian latent)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from vae_jax.core.activations import elu
from vae_jax.core.models.conv import CONV_IMPL, Stride2Conv
from vae_jax.core.models.registry import architecture
from vae_jax.core.models.vae import VAE
from vae_jax.core.settings import POSITIVE_INT, WIDTHS, Setting


class ResBlock(nn.Module):
    """Pre-activation residual block: x + conv3x3(elu(conv3x3(elu(x)))), the second conv
    starting at zero so that each block starts as the identity."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        h = nn.Conv(c, (3, 3), padding="SAME")(elu(x))
        h = nn.Conv(c, (3, 3), padding="SAME", kernel_init=nn.initializers.zeros_init())(elu(h))
        return x + h


class ResNetEncoder(nn.Module):
    """Stride-2 5x5 conv to H/2 x W/2 x widths[0], residual blocks, stride-2 conv to
    H/4 x W/4 x widths[1], residual blocks, dense heads (mean, log-variance)."""

    latent_dim: int
    widths: Sequence[int]
    blocks: int
    conv_impl: str = "native"

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        for i, width in enumerate(self.widths):
            x = Stride2Conv(width, impl=self.conv_impl, name=f"Down_{i}")(x)
            for _ in range(self.blocks):
                x = ResBlock()(x)
        x = elu(x).reshape(x.shape[0], -1)
        return nn.Dense(self.latent_dim, name="mean")(x), nn.Dense(self.latent_dim, name="logvar")(
            x
        )


class ResNetDecoder(nn.Module):
    """Dense to H/4 x W/4 x widths[1], residual blocks, stride-2 transposed conv to
    H/2 x W/2 x widths[0], residual blocks, stride-2 transposed conv to H x W x C logits."""

    image_shape: Sequence[int]
    widths: Sequence[int]
    blocks: int
    conv_impl: str = "native"

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        h, w, c = self.image_shape
        x = nn.Dense(h // 4 * (w // 4) * self.widths[-1])(z)
        x = x.reshape(z.shape[0], h // 4, w // 4, self.widths[-1])
        for i, width in enumerate([*reversed(self.widths[:-1]), c]):
            for _ in range(self.blocks):
                x = ResBlock()(x)
            x = Stride2Conv(width, True, self.conv_impl, name=f"Up_{i}")(elu(x))
        return x


@architecture(
    "resnet",
    {
        "resnet_widths": Setting((32, 64), WIDTHS, "resnet: channels at H/2 and H/4 (two values)"),
        "resnet_blocks": Setting(2, POSITIVE_INT, "resnet: residual blocks per scale"),
        "conv_impl": CONV_IMPL,
    },
)
def resnet_vae(
    image_shape: tuple[int, ...],
    latent_dim: int,
    resnet_widths: tuple,
    resnet_blocks: int,
    conv_impl: str,
) -> VAE:
    """A residual conv VAE (as in Kingma et al. 2016, diagonal Gaussian posterior) for images
    whose sides divide by 4; its strided convs are the seed's (``model.conv_impl``)."""
    h, w, _ = image_shape
    if h % 4 or w % 4 or len(resnet_widths) != 2:
        raise ValueError(
            f"model.arch='resnet' needs images whose sides divide by 4 and two "
            f"model.resnet_widths; images are {image_shape}, widths {tuple(resnet_widths)}"
        )
    return VAE(
        ResNetEncoder(latent_dim, tuple(resnet_widths), resnet_blocks, conv_impl),
        ResNetDecoder(image_shape, tuple(resnet_widths), resnet_blocks, conv_impl),
    )
