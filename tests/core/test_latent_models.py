"""Models beyond one Gaussian latent under N(0, I), against independent computations: a learned
prior's KL estimate against a Monte Carlo average; Burda's two-layer log-density against a
computation by hand; the flow's log-determinant against jax.jacfwd; a mixture prior's samples
against its moments; the ladder's closed-form KL per group against Monte Carlo; IWAE above the
ELBO for every model; the bad combinations refused."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

from vae_jax.config.keys import base_config, with_values
from vae_jax.core import objectives
from vae_jax.core.latents import noise_from_key, zero_noise
from vae_jax.core.models import init_params, make_model
from vae_jax.core.models.iaf import IAF
from vae_jax.core.models.mog_prior import MixturePrior
from vae_jax.core.sharding import make_mesh
from vae_jax.errors import ConfigError
from vae_jax.parts import build_parts

SHAPE = (28, 28, 1)
MODELS = {
    "conv": {},
    "mog": {"model.arch": "mlp", "model.mlp_hidden_dims": (64,), "model.prior": "mog"},
    "vamp": {"model.arch": "mlp", "model.mlp_hidden_dims": (64,), "model.prior": "vamp"},
    "iaf": {"model.arch": "mlp", "model.mlp_hidden_dims": (64,), "model.posterior": "iaf",
            "model.iaf_hidden": 32},
    "two_layer": {"model.arch": "two_layer", "model.latent_dim": 6, "model.two_layer_z1": 8,
                  "model.two_layer_hidden": (32, 32, 16, 16)},
    "ladder": {"model.arch": "ladder", "model.latent_dim": 3, "model.ladder_widths": (8, 16),
               "model.ladder_groups": (1, 1)},
}  # fmt: skip


def _model(name: str, **extra):
    config = with_values(base_config(), {**MODELS[name], **extra}, "test")
    model = make_model(SHAPE, **config.model)
    return model, init_params(model, jax.random.key(0), SHAPE)


def _images(n: int = 4, seed: int = 1) -> jax.Array:
    return jax.random.bernoulli(jax.random.key(seed), 0.3, (n, *SHAPE)).astype(jnp.float32)


def _f64(a) -> np.ndarray:
    return np.asarray(a, np.float64)


def test_mixture_prior_kl_estimate_against_monte_carlo():
    """The ELBO's KL term of a learned mixture prior (log q - log p at the sample) averages to
    a Monte Carlo KL computed apart, in numpy, from the encoder's outputs and the prior's
    parameters."""
    model, params = _model("mog")
    params = jax.tree.map(np.asarray, params)
    params["prior"]["logits"] = np.linspace(-1, 1, 10).astype(np.float32)  # unequal weights
    x = _images(3)
    keys = jax.random.split(jax.random.key(2), 4000)
    kl_fn = jax.jit(jax.vmap(lambda k: objectives.elbo_terms(
        model, params, x, k, objectives.bernoulli_log_prob, 1.0).kl))  # fmt: skip
    estimate = _f64(kl_fn(keys))  # [draws, images]

    mean, logvar = (_f64(a) for a in model.apply({"params": params}, x, method="encode"))
    std = np.exp(0.5 * logvar)
    z = mean + std * np.random.default_rng(3).standard_normal((200_000, *mean.shape))
    log_q = stats.norm.logpdf(z, mean, std).sum(-1)
    p = params["prior"]
    weights = _f64(p["logits"]) - logsumexp(_f64(p["logits"]))
    comp = stats.norm.logpdf(
        z[..., None, :], _f64(p["means"]), np.exp(0.5 * _f64(p["logvars"]))
    ).sum(-1)
    log_p = logsumexp(comp + weights, axis=-1)
    mc = (log_q - log_p).mean(0)
    se = np.sqrt(estimate.var(0) / len(keys) + (log_q - log_p).var(0) / len(z))
    np.testing.assert_array_less(np.abs(estimate.mean(0) - mc), 4 * se)


def test_mixture_prior_samples_have_its_moments():
    prior = MixturePrior(latent_dim=3, components=4)
    variables = prior.init(jax.random.key(0), jnp.zeros((1, 3)), None, method="log_prob")
    p = jax.tree.map(_f64, variables["params"])
    z = _f64(prior.apply(variables, jax.random.key(1), 200_000, 3, None, method="sample"))
    w = np.exp(p["logits"] - logsumexp(p["logits"]))
    mean = w @ p["means"]
    var = w @ (np.exp(p["logvars"]) + p["means"] ** 2) - mean**2
    np.testing.assert_allclose(z.mean(0), mean, atol=4 * np.sqrt(var / len(z)).max())
    np.testing.assert_allclose(z.var(0), var, rtol=0.02)


def test_vampprior_log_prob_is_the_mixture_of_the_pseudo_inputs_posteriors():
    model, params = _model("vamp")
    z = np.random.default_rng(4).standard_normal((5, 20)).astype(np.float32)

    def log_prob(module, z):
        return module.prior.log_prob(z, module.encoder)

    got = _f64(model.apply({"params": params}, z, method=log_prob))
    pseudo = jax.nn.sigmoid(params["prior"]["pseudo_inputs"] - 2.0)
    mean, logvar = (_f64(a) for a in model.apply({"params": params}, pseudo, method="encode"))
    comp = stats.norm.logpdf(_f64(z)[:, None], mean, np.exp(0.5 * logvar)).sum(-1)
    np.testing.assert_allclose(got, logsumexp(comp, axis=1) - math.log(len(mean)), rtol=1e-5)


def test_iaf_log_determinant_against_jacfwd():
    flow = IAF(steps=3, hidden=16)
    z0 = jax.random.normal(jax.random.key(5), (1, 5))
    context = jax.random.normal(jax.random.key(6), (1, 10))
    variables = flow.init(jax.random.key(7), z0, context)
    # larger weights than at initialization, so that the flow is far from the identity
    variables = jax.tree.map(lambda a: a * 30.0 if a.ndim == 2 else a, variables)

    def transform(z):
        return flow.apply(variables, z[None], context)[0][0]

    jacobian = _f64(jax.jacfwd(transform)(z0[0]))
    sign, log_abs_det = np.linalg.slogdet(jacobian)
    _, log_det = flow.apply(variables, z0, context)
    assert sign > 0 and float(log_det[0]) == pytest.approx(log_abs_det, rel=1e-4, abs=1e-4)
    assert abs(log_abs_det) > 0.1  # a real transformation, not the identity


def _dense(params, h):
    return h @ _f64(params["kernel"]) + _f64(params["bias"])


def _gaussian_mlp(params, h):
    h = h.reshape(len(h), -1)
    for i in range(len(params) - 2):
        h = np.tanh(_dense(params[f"Dense_{i}"], h))
    return _dense(params["mean"], h), _dense(params["logvar"], h)


def test_two_layer_log_weight_against_a_hand_computation():
    """log p(x|z1) + log p(z1|z2) + log p(z2) - log q(z1|x) - log q(z2|z1), from the network's
    weights by hand in float64, for the z1, z2 the model draws."""
    model, params = _model("two_layer")
    x, key = _images(3), jax.random.key(8)
    p = objectives.run_model(model, params, x, noise_from_key(key), 1.0)
    log_w = _f64(objectives.log_weights(model, params, x, noise_from_key(key),
                                        objectives.bernoulli_log_prob, 1.0, 1))[:, 0]  # fmt: skip
    z2, z1 = (_f64(layer.z) for layer in p.layers)
    xs = _f64(x).reshape(3, -1)
    m1, lv1 = _gaussian_mlp(params["q_z1"], xs)
    m2, lv2 = _gaussian_mlp(params["q_z2"], z1)
    pm1, plv1 = _gaussian_mlp(params["p_z1"], z2)
    h = z1
    px = params["p_x"]
    for i in range(len(px) - 1):
        h = np.tanh(_dense(px[f"Dense_{i}"], h))
    logits = _dense(px[f"Dense_{len(px) - 1}"], h)
    expected = (
        np.sum(xs * logits - np.logaddexp(0, logits), axis=1)
        + stats.norm.logpdf(z1, pm1, np.exp(0.5 * plv1)).sum(1)
        + stats.norm.logpdf(z2).sum(1)
        - stats.norm.logpdf(z1, m1, np.exp(0.5 * lv1)).sum(1)
        - stats.norm.logpdf(z2, m2, np.exp(0.5 * lv2)).sum(1)
    )
    np.testing.assert_allclose(log_w, expected, rtol=1e-5, atol=1e-3)


def test_ladder_closed_form_kl_per_group_against_monte_carlo():
    """Each group's closed-form KL, given the groups above, against the average of log q -
    log p over draws of that group alone (the groups above held at one draw)."""
    model, params = _model("ladder")
    params = jax.tree.map(lambda a: a + 0.05 * jnp.sign(a) if a.ndim == 4 else a, params)
    x, key = _images(2), jax.random.key(9)
    p = objectives.run_model(model, params, x, noise_from_key(key), 1.0)
    closed = _f64(objectives.layer_kl(p.layers[1], "auto", 1.0))

    def bottom_group_log_ratio(k):
        zs = list(layer.z for layer in p.layers)
        eps = jax.random.normal(k, zs[1].shape)
        q = p.layers[1].q
        zs[1] = q.mean + jnp.exp(0.5 * q.logvar) * eps
        again = objectives.run_model(model, params, x, None, 1.0, given=tuple(zs))
        return again.layers[1].log_q - again.layers[1].log_p

    draws = _f64(jax.jit(jax.vmap(bottom_group_log_ratio))(jax.random.split(key, 3000)))
    se = draws.std(0) / math.sqrt(len(draws))
    np.testing.assert_array_less(np.abs(draws.mean(0) - closed), 4 * se + 1e-4)
    assert np.all(closed > 0.01)


@pytest.mark.parametrize("name", list(MODELS))
def test_iwae_is_above_the_elbo_for_every_model(name):
    """The k-sample bound of independent draws above the ELBO (closed-form KL where it holds)
    within three standard errors, and tighter with k."""
    model, params = _model(name)
    x = _images(6)
    log_lik = objectives.bernoulli_log_prob
    keys = jax.random.split(jax.random.key(10), 64)
    elbo = jax.jit(jax.vmap(lambda k: -(lambda t: t.recon + t.kl)(
        objectives.elbo_terms(model, params, x, k, log_lik, 1.0))))(keys)  # fmt: skip
    elbo = _f64(elbo).mean(0)
    bounds = {}
    for k in (1, 16):
        noise = noise_from_key(jax.random.key(11))
        log_w = _f64(objectives.log_weights(model, params, x, noise, log_lik, 1.0, k))
        bounds[k] = logsumexp(log_w, axis=1) - math.log(k)
    assert np.all(np.isfinite(bounds[16]))
    assert bounds[16].mean() > elbo.mean() - 3 * elbo.std() / math.sqrt(len(elbo))
    assert bounds[16].mean() > bounds[1].mean()


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_has_the_interface(name):
    model, params = _model(name)
    x = _images(2)
    p = objectives.run_model(model, params, x, zero_noise, 1.0)
    assert p.logits.shape == x.shape and len(p.layers) >= 1
    for layer in p.layers:
        assert layer.log_q.shape == layer.log_p.shape == (2,)
    posterior = model.apply({"params": params}, x, method="posterior")
    assert [q.mean.shape for q in posterior] == [layer.z.shape for layer in p.layers]
    for q, layer in zip(posterior, p.layers, strict=True):  # the noise-free z (after a flow)
        np.testing.assert_allclose(q.mean, layer.z, rtol=1e-5, atol=1e-6)
    latents, logits = model.apply({"params": params}, jax.random.key(0), 3, method="sample_prior")
    assert logits.shape == (3, *SHAPE) and latents[0].shape[1:] == p.layers[0].z.shape[1:]
    top = model.apply({"params": params}, latents[0], method="decode_top")
    assert top.shape == (3, *SHAPE)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"model.prior": "mog", "objective.kl": "analytic"}, "objective.kl='analytic' needs"),
        ({"model.arch": "two_layer", "objective.kl": "analytic"}, "layer 1 (top first)"),
        (
            {"model.posterior": "iaf", "objective.name": "iwae", "objective.dreg": True},
            "model.posterior='iaf' gives no density at a given z",
        ),
        (
            {"model.arch": "ladder", "objective.name": "iwae", "objective.dreg": True},
            "shares q's parameters with p's",
        ),
        (
            {"model.prior": "vamp", "objective.name": "iwae", "objective.dreg": True},
            "log p(z) of model.prior='vamp' reaches q's parameters (encoder)",
        ),
        ({"objective.k": 5}, "objective.k apply to objective.name=iwae only"),
        ({"objective.dreg": True}, "objective.dreg apply to objective.name=iwae only"),
        (
            {"objective.name": "iwae", "objective.kl": "sample"},
            "objective.kl apply to objective.name=elbo only",
        ),
        ({"model.arch": "ladder", "model.prior": "vamp"}, "has a hierarchy of its own"),
        ({"objective.name": "iwae", "objective.kl_warmup_steps": 10}, "kl_warmup_steps apply"),
    ],
)
def test_bad_combinations_are_refused_before_training(values, message):
    config = with_values(base_config(), values, "test")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_parts(config, SHAPE, make_mesh(), 600)


@pytest.mark.parametrize("name", ["conv", "mog", "two_layer"])
def test_dreg_is_accepted_where_q_has_parameters_of_its_own(name):
    """The check that a prior's log p reaches q's parameters finds none for N(0, I), a mixture
    of its own parameters, and Burda's p(z1 | z2); it finds the encoder for the VampPrior (the
    refusal above), with no flag on the prior."""
    values = {**MODELS[name], "objective.name": "iwae", "objective.k": 2, "objective.dreg": True}
    build_parts(with_values(base_config(), values, "test"), SHAPE, make_mesh(), 600)


@pytest.mark.parametrize("name", ["mog", "ladder"])
def test_a_learned_prior_under_kl_warmup_is_not_reported_unused(name):
    """The first step's KL weight is 0 under warm-up, and free bits pass no gradient below
    their floor; the check of which parameters the loss reaches looks past both, so a learned
    prior (the ladder's top-down priors) is not named."""
    from vae_jax.parts import init_state
    from vae_jax.training.steps import parameters_without_gradient

    values = {**MODELS[name], "objective.kl_warmup_steps": 100, "objective.free_bits": 5.0,
              "train.batch_size": 4}  # fmt: skip
    parts = build_parts(with_values(base_config(), values, "test"), SHAPE, make_mesh(), 8)
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, *SHAPE)), jnp.uint8)
    assert parameters_without_gradient(parts, init_state(parts, 0), images, 1.0) == []
