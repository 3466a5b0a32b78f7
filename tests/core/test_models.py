"""Network shapes and the seed architecture's parameter layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax.config import base_config
from vae_jax.core.models import VAE, init_params, make_model


@pytest.mark.parametrize("arch", ["conv", "mlp", "resnet"])
@pytest.mark.parametrize("latent_dim", [2, 5, 20, 64])
def test_shapes(arch, latent_dim):
    config = base_config().model
    config.arch, config.latent_dim = arch, latent_dim
    model = make_model((28, 28, 1), **config)
    params = init_params(model, jax.random.key(0), (28, 28, 1))
    x = jnp.zeros((3, 28, 28, 1))
    mean, logvar = model.apply({"params": params}, x, method=VAE.encode)
    assert mean.shape == logvar.shape == (3, latent_dim)
    logits = model.apply({"params": params}, mean, method=VAE.decode)
    assert logits.shape == (3, 28, 28, 1)


def test_seed_conv_parameter_shapes():
    """The seed's layers: two 5x5 convs, two 20-d heads, dense to 7x7x32, two bias-free deconvs."""
    model = make_model((28, 28, 1), **base_config().model)
    params = init_params(model, jax.random.key(0), (28, 28, 1))
    shapes = {
        "/".join(k.key for k in path): v.shape
        for path, v in jax.tree_util.tree_leaves_with_path(params)
    }
    assert shapes == {
        "encoder/Conv_0/kernel": (5, 5, 1, 16),
        "encoder/Conv_0/bias": (16,),
        "encoder/Conv_1/kernel": (5, 5, 16, 32),
        "encoder/Conv_1/bias": (32,),
        "encoder/mean/kernel": (7 * 7 * 32, 20),
        "encoder/mean/bias": (20,),
        "encoder/logvar/kernel": (7 * 7 * 32, 20),
        "encoder/logvar/bias": (20,),
        "decoder/Dense_0/kernel": (20, 7 * 7 * 32),
        "decoder/Dense_0/bias": (7 * 7 * 32,),
        "decoder/ConvTranspose_0/kernel": (5, 5, 32, 16),
        "decoder/ConvTranspose_1/kernel": (5, 5, 16, 1),
    }
    # Seed initializers: stddev 0.02 weights (truncated for convs), zero biases.
    dense = np.asarray(params["decoder"]["Dense_0"]["kernel"])
    assert abs(dense.std() - 0.02) < 0.002
    conv = np.asarray(params["encoder"]["Conv_1"]["kernel"])
    assert np.abs(conv).max() <= 2 * 0.02 / 0.87962566 + 1e-6  # truncated at 2 (scaled) stddevs
    assert not np.any(np.asarray(params["encoder"]["mean"]["bias"]))


def test_mlp_matches_flax_example_layout():
    config = base_config().model
    config.arch = "mlp"
    params = init_params(make_model((28, 28, 1), **config), jax.random.key(0), (28, 28, 1))
    shapes = {
        "/".join(k.key for k in path): v.shape
        for path, v in jax.tree_util.tree_leaves_with_path(params)
    }
    assert shapes["encoder/Dense_0/kernel"] == (784, 500)
    assert shapes["encoder/mean/kernel"] == shapes["encoder/logvar/kernel"] == (500, 20)
    assert shapes["decoder/Dense_0/kernel"] == (20, 500)
    assert shapes["decoder/Dense_1/kernel"] == (500, 784)


def test_conv_takes_any_image_whose_sides_divide_by_4():
    model = make_model((32, 24, 3), **base_config().model)
    params = init_params(model, jax.random.key(0), (32, 24, 3))
    mean, _ = model.apply({"params": params}, jnp.zeros((2, 32, 24, 3)), method=VAE.encode)
    assert model.apply({"params": params}, mean, method=VAE.decode).shape == (2, 32, 24, 3)
    assert params["decoder"]["Dense_0"]["kernel"].shape == (20, 8 * 6 * 32)
    with pytest.raises(ValueError, match=r"divide by 4; images are \(30, 32, 1\)"):
        make_model((30, 32, 1), **base_config().model)


def _resnet(image_shape, conv_impl="auto", blocks=1, widths=(8, 16)):
    config = base_config().model
    config.arch, config.resnet_blocks, config.resnet_widths = "resnet", blocks, widths
    config.conv_impl = conv_impl
    return make_model(image_shape, **config)


def test_resnet_takes_any_image_whose_sides_divide_by_4():
    model = _resnet((32, 24, 3), blocks=2)
    params = init_params(model, jax.random.key(0), (32, 24, 3))
    mean, _ = model.apply({"params": params}, jnp.zeros((2, 32, 24, 3)), method=VAE.encode)
    assert model.apply({"params": params}, mean, method=VAE.decode).shape == (2, 32, 24, 3)
    assert params["decoder"]["Dense_0"]["kernel"].shape == (20, 8 * 6 * 16)
    assert len([k for k in params["encoder"] if k.startswith("ResBlock")]) == 4  # 2 per scale
    with pytest.raises(ValueError, match=r"divide by 4 and two model.resnet_widths"):
        _resnet((30, 32, 1))
    with pytest.raises(ValueError, match=r"widths \(8, 16, 32\)"):
        _resnet((28, 28, 1), widths=(8, 16, 32))


def test_resnet_blocks_start_as_the_identity():
    """The second conv of each block starts at zero, so a fresh block is the identity: its first
    conv, however it is set, does not change what the network computes."""
    model = _resnet((28, 28, 1), blocks=2)
    params = init_params(model, jax.random.key(1), (28, 28, 1))
    x = jax.random.uniform(jax.random.key(2), (3, 28, 28, 1))

    def outputs(p):
        mean, logvar = model.apply({"params": p}, x, method=VAE.encode)
        return mean, logvar, model.apply({"params": p}, mean, method=VAE.decode)

    moved = jax.tree_util.tree_map_with_path(
        lambda path, v: (
            v + 1.0
            if "Conv_0" in jax.tree_util.keystr(path) and "ResBlock" in jax.tree_util.keystr(path)
            else v
        ),
        params,
    )
    assert any(k.startswith("ResBlock") for k in params["decoder"])
    for a, b in zip(outputs(params), outputs(moved), strict=True):
        np.testing.assert_array_equal(a, b)


def test_resnet_conv_impls_compute_the_same_network():
    x = jax.random.uniform(jax.random.key(3), (4, 28, 28, 1))
    out = {}
    for impl in ("native", "space_to_depth"):
        model = _resnet((28, 28, 1), conv_impl=impl)
        params = init_params(model, jax.random.key(0), (28, 28, 1))
        mean, _ = model.apply({"params": params}, x, method=VAE.encode)
        out[impl] = (mean, model.apply({"params": params}, mean, method=VAE.decode))
    for a, b in zip(out["native"], out["space_to_depth"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_the_registry_refuses_a_name_or_key_taken_by_another_model():
    from vae_jax.core.models import ARCHITECTURES, architecture
    from vae_jax.core.settings import POSITIVE_INT, Setting

    with pytest.raises(ValueError, match=r"model.arch='conv' is already registered by .*conv_vae"):
        architecture("conv")(lambda image_shape, latent_dim: None)
    with pytest.raises(ValueError, match=r"model.resnet_blocks is declared by model.arch='resnet'"):
        architecture("other", {"resnet_blocks": Setting(3, POSITIVE_INT, "mine")})(lambda s, d: 0)
    assert "other" not in ARCHITECTURES
    build = ARCHITECTURES["conv"].build
    architecture("conv", ARCHITECTURES["conv"].settings)(build)  # a module imported twice
    assert ARCHITECTURES["conv"].build is build
