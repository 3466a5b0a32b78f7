"""Network shapes and the seed architecture's parameter layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax.config import base_config
from vae_jax.core.models import VAE, init_params, make_model


@pytest.mark.parametrize("arch", ["conv", "mlp"])
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
