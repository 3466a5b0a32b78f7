"""The fast CPU convolutions compute what ``nn.Conv`` / ``nn.ConvTranspose`` compute: outputs
and gradients equal to 1e-5 relative, and the conv VAE's loss and gradients equal under every
implementation, with the same parameter tree (checkpoints move between them)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax.config import base_config
from vae_jax.core import conv_ops, objectives
from vae_jax.core.models import init_params, make_model
from vae_jax.parallel import compile_fast

# (flax layer, index into FAST's pair, input shape, kernel size, out features): the seed's
# four layers and some other shapes.
CASES = [
    (nn.Conv, 0, (3, 28, 28, 1), 5, 16),
    (nn.Conv, 0, (3, 14, 14, 16), 5, 32),
    (nn.Conv, 0, (2, 8, 10, 3), 3, 4),
    (nn.ConvTranspose, 1, (3, 7, 7, 32), 5, 16),
    (nn.ConvTranspose, 1, (3, 14, 14, 16), 5, 1),
    (nn.ConvTranspose, 1, (2, 4, 5, 3), 3, 2),
    (nn.ConvTranspose, 1, (2, 3, 6, 2), 5, 1),
]
ODD_SIDES = [(nn.Conv, 0, (2, 9, 7, 2), 5, 3), (nn.Conv, 0, (1, 5, 8, 1), 3, 2)]
FAST = {
    "space_to_depth": (conv_ops.conv_space_to_depth, conv_ops.conv_transpose_space_to_depth),
    "fast": (conv_ops.conv_fast, conv_ops.conv_transpose_fast),
    "im2col": (conv_ops.conv_im2col, conv_ops.conv_transpose_col2im),
}


def _relmax(a, b) -> float:
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def _check(fn, reference, x, kernel):
    """Output and both gradients (of a non-trivial cotangent) of fn vs. reference."""
    y_ref, vjp_ref = jax.vjp(reference, x, kernel)
    y, vjp = jax.vjp(fn, x, kernel)
    g = jnp.cos(3.0 * y_ref)
    assert y.shape == y_ref.shape
    assert _relmax(y, y_ref) < 1e-5
    for got, want in zip(vjp(g), vjp_ref(g), strict=True):
        assert _relmax(got, want) < 1e-5


@pytest.mark.parametrize(
    ("impl", "flax_layer", "which", "shape", "k", "features"),
    [(impl, *case) for impl in FAST for case in CASES]
    + [("im2col", *case) for case in ODD_SIDES],  # only im2col takes odd sides
)
def test_equals_flax_layer(impl, flax_layer, which, shape, k, features):
    """Stride-2 SAME conv (which=0) and transposed conv (which=1) vs. the flax layer."""
    x = jax.random.normal(jax.random.key(0), shape)
    layer = flax_layer(features, (k, k), (2, 2), "SAME", use_bias=False)
    kernel = layer.init(jax.random.key(1), x)["params"]["kernel"]

    def reference(x, kernel):
        return layer.apply({"params": {"kernel": kernel}}, x)

    _check(FAST[impl][which], reference, x, kernel)


def test_native_is_lax():
    x = jax.random.normal(jax.random.key(0), (2, 14, 14, 4))
    kernel = jax.random.normal(jax.random.key(1), (5, 5, 4, 8))
    want = jax.lax.conv_general_dilated(
        x, kernel, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    np.testing.assert_array_equal(conv_ops.conv_native(x, kernel), want)


def test_conv_vae_same_loss_and_gradients_under_every_impl():
    x = jax.random.uniform(jax.random.key(0), (8, 28, 28, 1))
    key = jax.random.key(1)
    results = {}
    for impl in ("native", "space_to_depth", "im2col", "auto"):
        config = base_config().model
        config.conv_impl = impl
        model = make_model((28, 28, 1), **config)
        params = init_params(model, jax.random.key(2), (28, 28, 1))

        def loss(params, model=model, config=config):
            log_lik = objectives.log_likelihood("bernoulli", 0.1)
            terms = objectives.elbo_terms(model, params, x, key, log_lik, 1.0)
            return jnp.mean(terms.recon + terms.kl_objective)

        results[impl] = (params, *jax.value_and_grad(loss)(params))
    p_native, l_native, g_native = results.pop("native")
    for p_fast, l_fast, g_fast in results.values():
        assert jax.tree.structure(p_native) == jax.tree.structure(p_fast)
        jax.tree.map(np.testing.assert_array_equal, p_native, p_fast)
        np.testing.assert_allclose(l_fast, l_native, rtol=1e-6)
        for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_native), strict=True):
            assert _relmax(a, b) < 1e-5


def test_resolve():
    """auto: per layer on the CPU (a grayscale image side takes im2col), native elsewhere."""
    assert conv_ops.resolve("auto", 1, "cpu") == "im2col"
    assert conv_ops.resolve("auto", 3, "cpu") == conv_ops.resolve("auto", 16, "cpu")
    assert conv_ops.resolve("auto", 16, "cpu") == "space_to_depth"
    assert conv_ops.resolve("auto", 1, "gpu") == conv_ops.resolve("auto", 16, "tpu") == "native"
    assert conv_ops.resolve("native", 1, "cpu") == "native"
    with pytest.raises(ValueError, match="auto, native, space_to_depth, im2col"):
        conv_ops.resolve("fft", 1)


def test_compile_fast_gives_the_same_numbers():
    f = jax.jit(lambda x, k: jnp.sum(conv_ops.conv_transpose_fast(x, k) ** 2))
    x = jax.random.normal(jax.random.key(0), (4, 7, 7, 32))
    k = jax.random.normal(jax.random.key(1), (5, 5, 32, 16))
    lowered = f.lower(x, k)
    np.testing.assert_allclose(compile_fast(lowered)(x, k), lowered.compile()(x, k), rtol=1e-6)


@pytest.mark.parametrize("which", [0, 1])
def test_fast_ops_under_vmap_equal_one_call_per_model(which):
    """Models trained together vmap the fast ops over their kernels (a loop, not a grouped
    conv): outputs and both gradients equal those of one call per model."""
    op = FAST["fast"][which]
    shape, k, features = ((3, 14, 14, 16), 5, 32) if which == 0 else ((3, 7, 7, 32), 5, 16)
    xs = jax.random.normal(jax.random.key(0), (2, *shape))
    kernels = 0.05 * jax.random.normal(jax.random.key(1), (2, k, k, shape[-1], features))

    def loss(x, kernel):
        return jnp.sum(jnp.cos(op(x, kernel)))

    y = jax.vmap(op)(xs, kernels)
    dx, dk = jax.vmap(jax.grad(loss, argnums=(0, 1)))(xs, kernels)
    for i in range(2):
        assert _relmax(y[i], op(xs[i], kernels[i])) < 1e-6
        dxi, dki = jax.grad(loss, argnums=(0, 1))(xs[i], kernels[i])
        assert _relmax(dx[i], dxi) < 1e-6 and _relmax(dk[i], dki) < 1e-6
    jaxpr = str(jax.make_jaxpr(jax.vmap(jax.grad(loss, argnums=(0, 1))))(xs, kernels))
    assert "feature_group_count=1" in jaxpr and "feature_group_count=2" not in jaxpr
