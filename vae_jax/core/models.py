"""Encoder and decoder networks: pure Flax linen modules, no randomness inside, and the
registry of architectures that ``model.arch`` names.

An encoder maps images ``[B, H, W, C]`` (floats in [0, 1]) to the mean and the log-variance of a
diagonal Gaussian q(z|x): ``stddev = exp(logvar / 2)`` is positive by construction and the KL
term is stable in ``logvar``. A decoder maps latents ``[B, latent_dim]`` to pixel logits
``[B, H, W, C]``. Sampling lives in :mod:`vae_jax.core.objectives`, so both are deterministic.

An architecture is a function ``(image_shape, latent_dim, **its settings) -> VAE`` registered
with :func:`architecture`, which also declares its own config keys (``model.<key>``); a file in
``experiments/models/`` can register one without touching this package (README, "Your own
model").
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax.core import conv_ops
from vae_jax.core.settings import POSITIVE_INT, WIDTHS, Setting, one_of

# The seed (kvfrans/variational-autoencoder, ops.py) initializes conv and transposed-conv
# kernels with a truncated normal and dense matrices with a normal, both of stddev 0.02, and
# biases with zeros.
SEED_CONV_INIT = nn.initializers.truncated_normal(0.02)
SEED_DENSE_INIT = nn.initializers.normal(0.02)
ACTIVATIONS = {"relu": nn.relu, "tanh": jnp.tanh}


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


class Architecture(NamedTuple):
    build: Callable[..., VAE]  # (image_shape, latent_dim, **settings) -> VAE
    settings: dict[str, Setting]  # its own keys, model.<key> in the config
    doc: str


ARCHITECTURES: dict[str, Architecture] = {}


def architecture(name: str, settings: dict[str, Setting] | None = None) -> Callable:
    """Register the decorated ``build(image_shape, latent_dim, **settings) -> VAE`` as
    ``model.arch=name``; ``settings`` declares its own keys (``model.<key>``), each with its
    default, constraint and meaning. Raise ``ValueError`` in ``build`` for image shapes it
    cannot take."""

    def register(build: Callable[..., VAE]) -> Callable[..., VAE]:
        def origin(fn: Callable) -> str:
            return f"{fn.__module__}.{fn.__qualname__}"

        if name in ARCHITECTURES and origin(ARCHITECTURES[name].build) != origin(build):
            raise ValueError(
                f"model.arch={name!r} is already registered by "
                f"{origin(ARCHITECTURES[name].build)}; give {origin(build)} another name"
            )
        for key, setting in (settings or {}).items():
            for other_name, other in ARCHITECTURES.items():
                if other_name != name and other.settings.get(key, setting) != setting:
                    raise ValueError(
                        f"model.{key} is declared by model.arch={other_name!r} with another "
                        f"default or meaning; give {name!r}'s key another name"
                    )
        ARCHITECTURES[name] = Architecture(build, dict(settings or {}), inspect.getdoc(build) or "")
        return build

    return register


def make_model(image_shape: Sequence[int], arch: str, latent_dim: int, **settings) -> VAE:
    """The VAE of architecture ``arch`` for images of ``image_shape`` (H, W, C).

    ``settings``: the keys of ``config.model``; the architecture takes its own and leaves the
    others (the objective's, other architectures').
    """
    spec = ARCHITECTURES[arch]
    return spec.build(tuple(image_shape), latent_dim, **{k: settings[k] for k in spec.settings})


CONV_IMPL = Setting(
    "auto",
    one_of(*conv_ops.IMPLS),
    "conv, resnet: how the strided convs are computed, same math: auto = space_to_depth on "
    "CPU, native elsewhere",
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
    impl = conv_ops.resolve(conv_impl)
    return VAE(ConvEncoder(latent_dim, impl), ConvDecoder(image_shape, impl))


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


class ResBlock(nn.Module):
    """Pre-activation residual block: x + conv3x3(elu(conv3x3(elu(x)))), the second conv
    starting at zero so that each block starts as the identity."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        h = nn.Conv(c, (3, 3), padding="SAME")(nn.elu(x))
        h = nn.Conv(c, (3, 3), padding="SAME", kernel_init=nn.initializers.zeros_init())(nn.elu(h))
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
        x = nn.elu(x).reshape(x.shape[0], -1)
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
            x = Stride2Conv(width, True, self.conv_impl, name=f"Up_{i}")(nn.elu(x))
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
    impl = conv_ops.resolve(conv_impl)
    return VAE(
        ResNetEncoder(latent_dim, tuple(resnet_widths), resnet_blocks, impl),
        ResNetDecoder(image_shape, tuple(resnet_widths), resnet_blocks, impl),
    )


def init_params(model: VAE, key: jax.Array, image_shape: Sequence[int]) -> dict:
    """Parameters of ``model`` from ``key`` (a batch of one zero image traces every layer)."""
    return model.init(key, jnp.zeros((1, *image_shape), jnp.float32))["params"]
