"""Analytic FLOP counts of the models (a multiply-add is 2 FLOPs; activations, the loss and
the optimizer are left out: they are <1% here). A training step costs ~3x the forward pass
(forward, input gradients, weight gradients); the conv arch's first layer needs no input
gradient, which the count leaves in, as is usual."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

TRAIN_STEP_FACTOR = 3


def _dense(n_in: int, n_out: int) -> int:
    return 2 * n_in * n_out


def _conv(out_hw: int, k: int, c_in: int, c_out: int) -> int:
    """A k x k conv producing an out_hw x out_hw map (a transposed conv: its input map)."""
    return 2 * out_hw * out_hw * k * k * c_in * c_out


def forward_flops(image_shape: Sequence[int], arch: str, latent_dim: int, **settings) -> int:
    """FLOPs of encoding and decoding one image (arguments as :func:`make_model` takes them)."""
    z, pixels = latent_dim, math.prod(image_shape)
    if arch == "conv":  # the seed's layers, see core/models.py
        encoder = _conv(14, 5, 1, 16) + _conv(7, 5, 16, 32) + 2 * _dense(7 * 7 * 32, z)
        decoder = _dense(z, 7 * 7 * 32) + _conv(7, 5, 32, 16) + _conv(14, 5, 16, 1)
        return encoder + decoder
    widths = [pixels, *settings["mlp_hidden_dims"]]
    encoder = sum(_dense(a, b) for a, b in itertools.pairwise(widths)) + 2 * _dense(widths[-1], z)
    back = [z, *reversed(settings["mlp_hidden_dims"]), pixels]
    return encoder + sum(_dense(a, b) for a, b in itertools.pairwise(back))


def train_flops(image_shape: Sequence[int], arch: str, latent_dim: int, **settings) -> int:
    """FLOPs of one training step per image."""
    return TRAIN_STEP_FACTOR * forward_flops(image_shape, arch, latent_dim, **settings)
