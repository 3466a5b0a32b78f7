"""FLOPs of a model from XLA's own cost analysis, so that a new architecture needs no hand count.

A multiply-add is 2 FLOPs. A training step costs about 3x the forward pass (forward, input
gradients, weight gradients); :func:`train_flops` uses that convention. Count a conv model with
``conv_impl='native'``: the CPU-fast form computes the same math with extra zero taps.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax.core.models import init_params

TRAIN_STEP_FACTOR = 3


def forward_flops(model: nn.Module, image_shape: Sequence[int]) -> float:
    """XLA's count of one pass of the model over one image at its posterior means
    (``__call__``: encoding, every latent layer's sample, decoding). Only what the logits need
    is counted: XLA prunes the densities, so a learned prior's log p (a VampPrior's encoder
    pass over its pseudo-inputs) is not in it."""
    params = jax.eval_shape(lambda: init_params(model, jax.random.key(0), image_shape))
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    compiled = jax.jit(lambda p, x: model.apply({"params": p}, x)).lower(params, x).compile()
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return float(analysis["flops"])


def train_flops(model: nn.Module, image_shape: Sequence[int]) -> float:
    """FLOPs of one training step per image."""
    return TRAIN_STEP_FACTOR * forward_flops(model, image_shape)
