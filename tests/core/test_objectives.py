"""The loss terms against closed forms and independent computations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from vae_jax.config import base_config
from vae_jax.core import objectives
from vae_jax.core.models import init_params, make_model


def test_kl_closed_form_matches_monte_carlo():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(3, 5)).astype(np.float32)
    logvar = rng.normal(scale=0.7, size=(3, 5)).astype(np.float32)
    closed = np.asarray(objectives.gaussian_kl(jnp.asarray(mean), jnp.asarray(logvar)))

    n = 400_000
    std = np.exp(0.5 * logvar.astype(np.float64))
    z = mean + std * rng.standard_normal((n, 3, 5))
    log_q = stats.norm.logpdf(z, mean, std).sum(-1)
    log_p = stats.norm.logpdf(z).sum(-1)
    samples = log_q - log_p
    mc, stderr = samples.mean(0), samples.std(0) / math.sqrt(n)
    np.testing.assert_array_less(np.abs(closed - mc), 5 * stderr + 1e-4)


def test_kl_is_zero_only_at_the_prior():
    assert float(objectives.gaussian_kl(jnp.zeros((1, 4)), jnp.zeros((1, 4)))[0]) == 0.0
    assert float(objectives.gaussian_kl(jnp.full((1, 4), 0.1), jnp.zeros((1, 4)))[0]) > 0.0


def test_bernoulli_log_prob_matches_numpy():
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=4.0, size=(4, 28, 28, 1))
    x = rng.uniform(size=(4, 28, 28, 1))  # grayscale targets, as the seed uses
    p = 1.0 / (1.0 + np.exp(-logits))
    expected = (x * np.log(p) + (1 - x) * np.log1p(-p)).reshape(4, -1).sum(-1)
    got = objectives.bernoulli_log_prob(
        jnp.asarray(logits, jnp.float32), jnp.asarray(x, jnp.float32)
    )
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)


def test_bernoulli_log_prob_is_finite_for_extreme_logits():
    logits = jnp.array([[-200.0, 200.0, 0.0]])
    x = jnp.array([[1.0, 0.0, 0.5]])
    got = float(objectives.bernoulli_log_prob(logits, x)[0])
    assert got == pytest.approx(-200.0 - 200.0 - math.log(2.0), rel=1e-6)


def test_gaussian_log_prob_matches_scipy():
    rng = np.random.default_rng(2)
    mean = rng.uniform(size=(3, 28, 28, 1))
    x = rng.uniform(size=(3, 28, 28, 1))
    expected = stats.norm.logpdf(x, mean, 0.1).reshape(3, -1).sum(-1)
    got = objectives.gaussian_log_prob(
        jnp.asarray(mean, jnp.float32), jnp.asarray(x, jnp.float32), 0.1
    )
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)


def _objective(config):
    m = config.model
    return objectives.log_likelihood(m.likelihood, m.obs_stddev), m.noise_scale


def _model_and_params(**model_overrides):
    config = base_config()
    config.model.update(model_overrides)
    model = make_model((28, 28, 1), **config.model)
    return config, model, init_params(model, jax.random.key(0), (28, 28, 1))


def test_training_loss_is_batch_mean_of_per_image_terms():
    config, model, params = _model_and_params()
    x = jax.random.uniform(jax.random.key(1), (6, 28, 28, 1))
    key = jax.random.key(2)
    terms = objectives.elbo_terms(model, params, x, key, *_objective(config))
    loss, metrics = objectives.training_loss(model, params, x, key, *_objective(config))
    assert terms.recon.shape == terms.kl.shape == (6,)
    np.testing.assert_allclose(
        float(loss), float(jnp.mean(terms.recon + terms.kl_objective)), rtol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(metrics),
        [float(loss), float(jnp.mean(terms.recon)), float(jnp.mean(terms.kl_objective))],
        rtol=1e-6,
    )
    # noise_scale = 1: the seed's latent loss is the KL of the distribution sampled.
    np.testing.assert_allclose(np.asarray(terms.kl), np.asarray(terms.kl_objective), rtol=1e-6)


def test_reported_kl_uses_the_distribution_actually_sampled():
    """With noise_scale s, z ~ N(mean, (s*stddev)^2); the reported KL is that q's, by MC."""
    s = 2.0
    config, model, params = _model_and_params(noise_scale=s)
    x = jax.random.uniform(jax.random.key(3), (2, 28, 28, 1))
    mean, logvar = model.apply({"params": params}, x, method="encode")
    terms = objectives.elbo_terms(model, params, x, jax.random.key(4), *_objective(config))

    n = 200_000
    std = s * np.exp(0.5 * np.asarray(logvar, np.float64))
    z = np.asarray(mean, np.float64) + std * np.random.default_rng(5).standard_normal(
        (n, *std.shape)
    )
    samples = stats.norm.logpdf(z, np.asarray(mean, np.float64), std).sum(-1) - stats.norm.logpdf(
        z
    ).sum(-1)
    mc, stderr = samples.mean(0), samples.std(0) / math.sqrt(n)
    np.testing.assert_array_less(np.abs(np.asarray(terms.kl) - mc), 5 * stderr + 1e-3)
    # ... and differs from the seed's latent loss, which ignores s.
    assert np.all(np.abs(np.asarray(terms.kl) - np.asarray(terms.kl_objective)) > 1.0)


def test_reconstruction_term_uses_the_scaled_noise():
    """With noise_scale s, recon is -log p(x|z) at z = mean + s * stddev * eps."""
    config, model, params = _model_and_params(noise_scale=0.5)
    x = jax.random.uniform(jax.random.key(6), (3, 28, 28, 1))
    key = jax.random.key(7)
    terms = objectives.elbo_terms(model, params, x, key, *_objective(config))
    mean, logvar = model.apply({"params": params}, x, method="encode")
    eps = jax.random.normal(key, mean.shape)
    logits = model.apply(
        {"params": params}, mean + 0.5 * jnp.exp(0.5 * logvar) * eps, method="decode"
    )
    expected = -objectives.bernoulli_log_prob(logits, x)
    np.testing.assert_allclose(np.asarray(terms.recon), np.asarray(expected), rtol=1e-6)


def test_gaussian_likelihood_terms():
    config, model, params = _model_and_params(likelihood="gaussian", obs_stddev=0.2)
    x = jax.random.uniform(jax.random.key(8), (2, 28, 28, 1))
    key = jax.random.key(9)
    terms = objectives.elbo_terms(model, params, x, key, *_objective(config))
    mean, logvar = model.apply({"params": params}, x, method="encode")
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
    mu = jax.nn.sigmoid(model.apply({"params": params}, z, method="decode"))
    expected = -stats.norm.logpdf(np.asarray(x, np.float64), np.asarray(mu, np.float64), 0.2)
    np.testing.assert_allclose(np.asarray(terms.recon), expected.reshape(2, -1).sum(-1), rtol=1e-5)
