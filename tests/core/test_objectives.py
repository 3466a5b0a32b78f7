"""The loss terms against closed forms and independent computations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

from vae_jax.config import base_config
from vae_jax.core import objectives
from vae_jax.core.latents import STANDARD_NORMAL, Gaussian, noise_from_key, twice_kl_per_dim
from vae_jax.core.models import init_params, make_model


def gaussian_kl(mean, logvar):
    """KL(N(mean, exp(logvar)) || N(0, I)) per row."""
    return 0.5 * jnp.sum(twice_kl_per_dim(Gaussian(mean, logvar), STANDARD_NORMAL), axis=-1)


def seed_loss(model, params, x, key, log_lik, noise_scale):
    """The seed's loss written out as vae_jax 0.2 computed it: encode, one z = mean +
    noise_scale * stddev * eps, decode; recon + KL(N(mean, stddev^2) || N(0, I)) batch means."""
    mean, logvar = model.apply({"params": params}, x, method="encode")
    eps = jax.random.normal(key, mean.shape, mean.dtype)
    z = mean + noise_scale * jnp.exp(0.5 * logvar) * eps
    logits = model.apply({"params": params}, z, method="decode")
    recon = jnp.mean(-log_lik(logits, x))
    kl = jnp.mean(0.5 * jnp.sum(jnp.square(mean) + jnp.exp(logvar) - logvar - 1.0, axis=-1))
    loss = recon + kl
    return loss, jnp.stack([loss, recon, kl])


def test_kl_closed_form_matches_monte_carlo():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(3, 5)).astype(np.float32)
    logvar = rng.normal(scale=0.7, size=(3, 5)).astype(np.float32)
    closed = np.asarray(gaussian_kl(jnp.asarray(mean), jnp.asarray(logvar)))

    n = 400_000
    std = np.exp(0.5 * logvar.astype(np.float64))
    z = mean + std * rng.standard_normal((n, 3, 5))
    log_q = stats.norm.logpdf(z, mean, std).sum(-1)
    log_p = stats.norm.logpdf(z).sum(-1)
    samples = log_q - log_p
    mc, stderr = samples.mean(0), samples.std(0) / math.sqrt(n)
    np.testing.assert_array_less(np.abs(closed - mc), 5 * stderr + 1e-4)


def test_kl_is_zero_only_at_the_prior():
    assert float(gaussian_kl(jnp.zeros((1, 4)), jnp.zeros((1, 4)))[0]) == 0.0
    assert float(gaussian_kl(jnp.full((1, 4), 0.1), jnp.zeros((1, 4)))[0]) > 0.0


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
    loss, metrics = _loss(model)(params, x, key, jnp.int32(0), 1.0)
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


# ---------------------------------------------------------------------------------------------
# The training objectives: beta, warm-up, free bits, IWAE, DReG


def _loss(model, **settings):
    defaults = {name.rsplit(".", 1)[-1]: s.default for name, s in objectives.SETTINGS.items()}
    return objectives.make_loss(model, **{**defaults, **settings})


def _mlp(latent_dim=4):
    config = base_config()
    config.model.update({"arch": "mlp", "mlp_hidden_dims": (32,), "latent_dim": latent_dim})
    model = make_model((28, 28, 1), **config.model)
    return model, init_params(model, jax.random.key(0), (28, 28, 1))


def _binary_images(n=16, seed=1):
    return jax.random.bernoulli(jax.random.key(seed), 0.3, (n, 28, 28, 1)).astype(jnp.float32)


def test_default_objective_is_the_seed_loss_bit_for_bit():
    config, model, params = _model_and_params()
    x, key = jax.random.uniform(jax.random.key(1), (6, 28, 28, 1)), jax.random.key(2)
    want = seed_loss(model, params, x, key, *_objective(config))
    got = _loss(model)(params, x, key, jnp.int32(7), 1.0)
    for a, b in zip(want, got, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    def first(fn):
        return jax.jit(jax.grad(lambda p: fn(p)[0]))(params)

    seed_grads = first(lambda p: seed_loss(model, p, x, key, *_objective(config)))
    grads = first(lambda p: _loss(model)(p, x, key, jnp.int32(7), 1.0))
    for a, b in zip(jax.tree.leaves(seed_grads), jax.tree.leaves(grads), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the general beta / warm-up / free-bits form at beta=1 computes the same numbers
    general = objectives._weighted_elbo_loss(
        model, params, x, key, jnp.int32(7), 1.0, log_lik=objectives.bernoulli_log_prob,
        beta=1.0, warmup=0, free_bits=0.0, kl="auto",
    )  # fmt: skip
    np.testing.assert_allclose(np.asarray(general[1]), np.asarray(want[1]), rtol=1e-6)


def test_beta_warmup_and_free_bits_against_the_terms():
    model, params = _mlp()
    x, key = _binary_images(), jax.random.key(3)
    _, (_, recon, kl) = _loss(model)(params, x, key, jnp.int32(0), 1.0)
    for step, weight in ((0, 0.0), (50, 1.0), (100, 2.0), (500, 2.0)):
        loss, metrics = _loss(model, beta=2.0, kl_warmup_steps=100)(params, x, key, step, 1.0)
        assert float(loss) == pytest.approx(float(recon) + weight * float(kl), rel=1e-6)
        np.testing.assert_allclose(np.asarray(metrics[1:]), [float(recon), float(kl)], rtol=1e-6)
    # free bits: each latent dimension's KL (its batch mean) counts as at least 0.5 nats
    mean, logvar = (
        np.asarray(a, np.float64) for a in model.apply({"params": params}, x, method="encode")
    )
    kl_d = (0.5 * (mean**2 + np.exp(logvar) - logvar - 1.0)).mean(axis=0)
    assert np.any(kl_d < 0.5)  # a fresh model: some dimensions carry almost nothing
    loss, _ = _loss(model, free_bits=0.5)(params, x, key, jnp.int32(0), 1.0)
    assert float(loss) == pytest.approx(float(recon) + np.maximum(kl_d, 0.5).sum(), rel=1e-5)


def test_iwae_with_one_sample_is_the_elbo():
    """k=1: the single-sample ELBO with the KL estimated by the same sample (independent
    numpy), and in expectation the ELBO with the analytic KL."""
    model, params = _mlp()
    x = _binary_images(8)
    key = jax.random.key(5)
    loss, _ = _loss(model, name="iwae", k=1)(params, x, key, jnp.int32(0), 1.0)
    mean, logvar = (
        np.asarray(a, np.float64) for a in model.apply({"params": params}, x, method="encode")
    )
    eps = np.asarray(jax.random.normal(key, (8, 4)), np.float64)  # noise_from_key's layer 0
    z = mean + np.exp(0.5 * logvar) * eps
    logits = np.asarray(
        model.apply({"params": params}, jnp.asarray(z, jnp.float32), method="decode"), np.float64
    )
    xs = np.asarray(x, np.float64).reshape(8, -1)
    log_px = np.sum(xs * logits.reshape(8, -1) - np.logaddexp(0, logits.reshape(8, -1)), axis=1)
    log_w = (
        log_px
        + stats.norm.logpdf(z).sum(1)
        - stats.norm.logpdf(z, mean, np.exp(0.5 * logvar)).sum(1)
    )
    assert float(loss) == pytest.approx(-log_w.mean(), rel=1e-5)

    keys = jax.random.split(jax.random.key(6), 300)
    iwae = jax.jit(jax.vmap(lambda k: _loss(model, name="iwae", k=1)(params, x, k, 0, 1.0)[0]))(
        keys
    )
    elbo = jax.jit(jax.vmap(lambda k: _loss(model)(params, x, k, 0, 1.0)[0]))(keys)
    diff = np.asarray(iwae, np.float64) - np.asarray(elbo, np.float64)
    assert abs(diff.mean()) < 4 * diff.std(ddof=1) / math.sqrt(len(diff))


def test_iwae_loss_is_minus_the_bound_and_tightens_with_k():
    model, params = _mlp()
    x, key = _binary_images(8), jax.random.key(7)
    noise = noise_from_key(key)  # the training loss's own noise
    log_w = objectives.log_weights(model, params, x, noise, objectives.bernoulli_log_prob, 1.0, 16)
    loss, _ = _loss(model, name="iwae", k=16)(params, x, key, jnp.int32(0), 1.0)
    want = -np.mean(logsumexp(np.asarray(log_w, np.float64), axis=1) - math.log(16))
    assert float(loss) == pytest.approx(want, rel=1e-5)
    keys = jax.random.split(jax.random.key(8), 100)

    def mean_loss(k):
        fn = jax.jit(
            jax.vmap(lambda key: _loss(model, name="iwae", k=k)(params, x, key, 0, 1.0)[0])
        )
        return float(np.mean(np.asarray(fn(keys))))

    assert mean_loss(1) > mean_loss(4) > mean_loss(16)  # a tighter bound with more samples


def _gradients(model, params, x, keys, **settings):
    """Each key's gradient, flattened per group (encoder, decoder): [n_keys, n_params]."""
    grad = jax.jit(
        jax.vmap(jax.grad(lambda p, k: _loss(model, **settings)(p, x, k, 0, 1.0)[0]), (None, 0))
    )
    g = grad(params, keys)
    return tuple(
        np.concatenate(
            [np.asarray(a, np.float64).reshape(len(keys), -1) for a in jax.tree.leaves(g[part])],
            axis=1,
        )
        for part in ("encoder", "decoder")
    )


def test_dreg_gradients_match_iwae_in_expectation_with_less_encoder_variance():
    """Tucker et al. 2018: the decoder's gradient is the IWAE gradient itself (per draw); the
    encoder's has the IWAE gradient's mean and a lower variance, the lower the more samples.
    Measured on a fresh MLP VAE over 200 draws: the total variance of DReG's encoder gradient
    is 0.83 / 0.74 / 0.56 of IWAE's for k = 4 / 16 / 64."""
    model, params = _mlp()
    x = _binary_images(4)
    keys = jax.random.split(jax.random.key(9), 200)
    ratios = {}
    for k in (4, 64):
        enc_iwae, dec_iwae = _gradients(model, params, x, keys, name="iwae", k=k)
        enc_dreg, dec_dreg = _gradients(model, params, x, keys, name="iwae", k=k, dreg=True)
        np.testing.assert_allclose(dec_dreg, dec_iwae, rtol=1e-4, atol=1e-6)
        n = len(keys)
        stderr = np.sqrt(enc_iwae.var(0, ddof=1) / n + enc_dreg.var(0, ddof=1) / n)
        active = stderr > 1e-9
        z = np.abs(enc_iwae.mean(0) - enc_dreg.mean(0))[active] / stderr[active]
        assert np.mean(z < 3.0) > 0.98 and np.mean(z < 4.0) > 0.995  # the same mean
        ratios[k] = enc_dreg.var(0, ddof=1).sum() / enc_iwae.var(0, ddof=1).sum()
    assert ratios[4] < 0.95 and ratios[64] < 0.7 and ratios[64] < ratios[4], ratios
