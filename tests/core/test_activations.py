"""The custom-VJP ELU against jax.nn.elu: the same values and gradients (as numbers: where the
derivative rounds to 0, the sign of that zero may differ), and its derivative against exp."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax.core.activations import elu

X = jnp.asarray(
    np.concatenate(
        [
            [-100.0, -20.0, -1.0, -1e-3, -1e-8, -0.0, 0.0, 1e-8, 1e-3, 1.0, 20.0],
            np.random.default_rng(0).normal(0.0, 3.0, 4000),
        ]
    ).astype(np.float32)
)
G = jnp.asarray(np.random.default_rng(1).normal(size=X.shape).astype(np.float32))


def _bits(a: jax.Array) -> np.ndarray:
    return np.asarray(a).view(np.uint32)


def test_values_and_gradients_equal_jax_elu():
    ours = jax.jit(lambda x: jax.vjp(elu, x)[1](G)[0])(X)
    theirs = jax.jit(lambda x: jax.vjp(jax.nn.elu, x)[1](G)[0])(X)
    np.testing.assert_array_equal(_bits(jax.jit(elu)(X)), _bits(jax.jit(jax.nn.elu)(X)))
    np.testing.assert_array_equal(ours, theirs)


def test_derivative_is_one_above_zero_and_exp_below():
    """exp(x) formed as expm1(x) + 1 in float32 (as autodiff forms it for jax.nn.elu): within
    two float32 ulps of 1 (2.4e-7) of the float64 exp."""
    d = jax.vmap(jax.grad(elu))(X)
    x = np.asarray(X, np.float64)
    np.testing.assert_allclose(np.asarray(d), np.where(x > 0, 1.0, np.exp(x)), rtol=0, atol=2.4e-7)


def test_second_derivative_and_vmap_match_jax_elu():
    def second(f):
        return jax.vmap(jax.grad(jax.grad(f)))(X)

    np.testing.assert_allclose(second(elu), second(jax.nn.elu), rtol=1e-6, atol=1e-30)
    batched = jax.vmap(lambda row: jax.grad(lambda r: jnp.sum(elu(r) * row))(row))
    rows = X[:4000].reshape(40, 100)
    reference = jax.vmap(lambda row: jax.grad(lambda r: jnp.sum(jax.nn.elu(r) * row))(row))
    np.testing.assert_array_equal(batched(rows), reference(rows))


def test_forward_mode_is_refused():
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(elu, (X,), (G,))
