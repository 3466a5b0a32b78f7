"""Pixels as the model sees them: uint8 images to floats in [0, 1], and binarization.

Images are stored as uint8 (grayscale 0..255, or 0/255 once binarized); the model sees
``x = images / 255``. Dynamic binarization draws a fresh Bernoulli(x) sample at every training
step; static binarization draws one fixed sample of a whole split (:func:`binarize_u8`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def to_float(images: jax.Array) -> jax.Array:
    """uint8 images -> float32 in [0, 1]."""
    return images.astype(jnp.float32) / 255.0


def dynamic_binarize(key: jax.Array, x: jax.Array) -> jax.Array:
    """A fresh Bernoulli(x) sample of float images in [0, 1], as float32 0/1."""
    return jax.random.bernoulli(key, x).astype(jnp.float32)


@jax.jit
def binarize_u8(key: jax.Array, images: jax.Array) -> jax.Array:
    """One Bernoulli sample of uint8 images, as uint8 0/255."""
    bits = jax.random.bernoulli(key, images.astype(jnp.float32) / 255.0)
    return bits.astype(jnp.uint8) * 255
