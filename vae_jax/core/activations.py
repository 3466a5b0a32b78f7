"""ELU with its gradient taken from its output, for the residual models on CPU.

``jax.nn.elu`` differentiated by autodiff keeps its input and ``expm1`` of it for the backward
pass, and XLA:CPU computes and stores them in passes of their own. Written as a custom VJP, the
backward pass keeps only the output ``y`` (which the next layer keeps anyway for its own
gradient): the derivative is 1 where ``y > 0`` and ``y + 1`` (= exp(x), the same expression
autodiff forms from ``expm1``) elsewhere. The values and gradients are the same as
``jax.nn.elu``'s; on 2 CPU cores the ResNet VAE's training step runs faster (docs/cpu_speed.md).

Reverse mode only (``jax.grad``, ``jax.vjp``, ``jax.jacrev``); forward mode (``jax.jvp``,
``jax.jacfwd``) through a model that uses it raises, as for every ``jax.custom_vjp``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_vjp
def elu(x: jax.Array) -> jax.Array:
    """ELU with alpha 1 (x where x > 0, exp(x) - 1 elsewhere): ``jax.nn.elu``'s values."""
    return jax.nn.elu(x)


def _elu_forward(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    y = elu(x)
    return y, y


def _elu_backward(y: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    return (jnp.where(y > 0, g, g * (y + 1.0)),)


elu.defvjp(_elu_forward, _elu_backward)
