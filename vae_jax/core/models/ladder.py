"""A top-down hierarchical ResNet VAE (Sønderby et al. 2016's LVAE, Child 2021's VDVAE): a
bottom-up residual pass over the image, shared by every latent group; then a top-down pass
from a learned constant at H/4 x W/4, in which each group of spatial latents has a prior
p(z | state) and a posterior q(z | state, the bottom-up activations at its scale), both
diagonal Gaussians from 3x3 convs; the latent is merged into the state (h + conv1x1(z),
residual block), the state goes up to H/2 x W/2 for the next groups, and ends as the logits of
p(x|z).

Inference and generation run top-down, so every group's KL has a closed form given the
groups above (drawn before it). Prior and posterior share the top-down state, so q's density
cannot be told from p's parameters: DReG is refused with this model. The stabilizers the papers
use are settings of the objective and the optimizer: a KL warm-up
(``objective.kl_warmup_steps``), gradient clipping (``train.grad_clip_norm``) and skipping
(``train.grad_skip_norm``).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax.core.activations import elu
from vae_jax.core.latents import (
    Gaussian,
    Layer,
    Noise,
    Pass,
    gaussian_layer,
    gaussian_log_prob,
    zero_noise,
)
from vae_jax.core.models.conv import CONV_IMPL, Stride2Conv
from vae_jax.core.models.registry import architecture
from vae_jax.core.models.resnet import ResBlock
from vae_jax.core.settings import POSITIVE_INT, WIDTHS, Setting

SMALL = nn.initializers.variance_scaling(0.1, "fan_in", "truncated_normal")


class Group(nn.Module):
    """One group of latents of the top-down pass: its prior and posterior, and the merge of its
    latent into the state."""

    channels: int  # of the state
    latent_channels: int

    def setup(self):
        zeros = nn.initializers.zeros_init()
        self.to_prior = nn.Conv(2 * self.latent_channels, (3, 3), kernel_init=zeros)
        self.to_posterior = nn.Conv(2 * self.latent_channels, (3, 3), kernel_init=SMALL)
        self.from_z = nn.Conv(self.channels, (1, 1), kernel_init=SMALL)
        self.block = ResBlock()

    def prior(self, h: jax.Array) -> Gaussian:
        return Gaussian(*jnp.split(self.to_prior(elu(h)), 2, axis=-1))

    def posterior(self, h: jax.Array, up: jax.Array) -> Gaussian:
        return Gaussian(*jnp.split(self.to_posterior(elu(jnp.concatenate([h, up], -1))), 2, -1))

    def merge(self, h: jax.Array, z: jax.Array) -> jax.Array:
        return self.block(h + self.from_z(z))


class LadderVAE(nn.Module):
    image_shape: Sequence[int]
    widths: Sequence[int] = (32, 64)  # channels at H/2 and H/4
    groups: Sequence[int] = (2, 2)  # latent groups at H/4, then at H/2 (top first)
    latent_channels: int = 8
    blocks: int = 1  # residual blocks per scale, each way
    conv_impl: str = "native"
    q_params = None  # DReG refused: q shares the top-down state with p

    def setup(self):
        c2, c4 = self.widths
        impl = self.conv_impl
        self.down2 = Stride2Conv(c2, impl=impl)
        self.res2 = [ResBlock() for _ in range(self.blocks)]
        self.down4 = Stride2Conv(c4, impl=impl)
        self.res4 = [ResBlock() for _ in range(self.blocks)]
        h, w, _ = self.image_shape
        self.start = self.param("start", nn.initializers.zeros_init(), (h // 4, w // 4, c4))
        self.top = [Group(c4, self.latent_channels) for _ in range(self.groups[0])]
        self.up2 = Stride2Conv(c2, True, impl)
        self.bottom = [Group(c2, self.latent_channels) for _ in range(self.groups[1])]
        self.out_res = [ResBlock() for _ in range(self.blocks)]
        self.out = Stride2Conv(self.image_shape[-1], True, impl)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.forward(self.features(x), x, zero_noise, 1.0).logits

    def features(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The bottom-up activations at H/4 and H/2."""
        a2 = self.down2(x)
        for block in self.res2:
            a2 = block(a2)
        a4 = self.down4(elu(a2))
        for block in self.res4:
            a4 = block(a4)
        return a4, a2

    def _groups(self) -> list[tuple[int, Group]]:
        """Every group, top first, with the index of its scale's bottom-up activation."""
        return [(0, g) for g in self.top] + [(1, g) for g in self.bottom]

    def _up(self, h: jax.Array) -> jax.Array:
        return self.up2(elu(h))

    def _logits(self, h: jax.Array) -> jax.Array:
        for block in self.out_res:
            h = block(h)
        return self.out(elu(h))

    def forward(self, features, x, noise: Noise | None, noise_scale, given=None) -> Pass:
        h = jnp.broadcast_to(self.start, (x.shape[0], *self.start.shape))
        layers = []
        for i, (scale, group) in enumerate(self._groups()):
            if i == len(self.top):
                h = self._up(h)
            p, q = group.prior(h), group.posterior(h, features[scale])
            z, log_q = gaussian_layer(q, noise, i, noise_scale, given[i] if given else None)
            layers.append(Layer(z, log_q, gaussian_log_prob(z, *p), q, p))
            h = group.merge(h, z)
        return Pass(tuple(layers), self._logits(h))

    def _top_down(self, n: int, choose) -> tuple[tuple[jax.Array, ...], jax.Array]:
        """The generative pass with the latent of group i ``choose(i, prior)``."""
        h = jnp.broadcast_to(self.start, (n, *self.start.shape))
        zs = []
        for i, (_, group) in enumerate(self._groups()):
            if i == len(self.top):
                h = self._up(h)
            zs.append(choose(i, group.prior(h)))
            h = group.merge(h, zs[-1])
        return tuple(zs), self._logits(h)

    def sample_prior(self, key: jax.Array, n: int) -> tuple[tuple[jax.Array, ...], jax.Array]:
        def draw(i, p):
            eps = jax.random.normal(jax.random.fold_in(key, i), p.mean.shape)
            return p.mean + jnp.exp(0.5 * p.logvar) * eps

        return self._top_down(n, draw)

    def decode_top(self, z: jax.Array) -> jax.Array:
        return self._top_down(z.shape[0], lambda i, p: z if i == 0 else p.mean)[1]

    def posterior(self, x: jax.Array) -> tuple[Gaussian, ...]:
        features = self.features(x)
        h = jnp.broadcast_to(self.start, (x.shape[0], *self.start.shape))
        qs = []
        for i, (scale, group) in enumerate(self._groups()):
            if i == len(self.top):
                h = self._up(h)
            qs.append(group.posterior(h, features[scale]))
            h = group.merge(h, qs[-1].mean)
        return tuple(qs)


@architecture(
    "ladder",
    {
        "ladder_widths": Setting((32, 64), WIDTHS, "ladder: channels at H/2 and H/4 (two values)"),
        "ladder_groups": Setting(
            (2, 2), WIDTHS, "ladder: latent groups at H/4, then at H/2 (two values)"
        ),
        "ladder_blocks": Setting(1, POSITIVE_INT, "ladder: residual blocks per scale, each way"),
        "conv_impl": CONV_IMPL,
    },
)
def ladder_vae(
    image_shape: tuple[int, ...],
    latent_dim: int,
    ladder_widths: tuple,
    ladder_groups: tuple,
    ladder_blocks: int,
    conv_impl: str,
) -> nn.Module:
    """A top-down hierarchy of spatial latent groups (latent_dim channels each) over a
    residual bottom-up pass; images whose sides divide by 4."""
    h, w, _ = image_shape
    if h % 4 or w % 4 or len(ladder_widths) != 2 or len(ladder_groups) != 2:
        raise ValueError(
            f"model.arch='ladder' needs images whose sides divide by 4, two "
            f"model.ladder_widths and two model.ladder_groups; images are {image_shape}, "
            f"widths {tuple(ladder_widths)}, groups {tuple(ladder_groups)}"
        )
    return LadderVAE(image_shape, tuple(ladder_widths), tuple(ladder_groups), latent_dim,
                     ladder_blocks, conv_impl)  # fmt: skip
