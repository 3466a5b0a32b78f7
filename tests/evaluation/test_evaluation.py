"""Evaluation: the IWAE bound against closed forms and independent computations, active units,
eval.json after training vs. a later ``make eval``, figures, and bad input."""

import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_cli, small_config, synthetic_dataset
from PIL import Image
from scipy.special import logsumexp
from scipy.stats import norm

from vae_jax.core import rng
from vae_jax.core.models import VAE, init_params
from vae_jax.core.sharding import make_mesh
from vae_jax.errors import ConfigError
from vae_jax.evaluation.evaluators import (
    iwae_bound,
    iwae_chunking,
    make_test_evaluator,
)
from vae_jax.evaluation.latent_stats import latent_stats
from vae_jax.evaluation.run import evaluate_workdir
from vae_jax.evaluation.trained_run import restore_run
from vae_jax.parts import build_parts
from vae_jax.training.run import train_and_evaluate

VOLATILE = {"seconds", "iwae_seconds", "peak_host_rss_bytes", "workdir"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small conv VAE trained for 3 epochs on synthetic strokes, evaluated after training."""
    workdir = tmp_path_factory.mktemp("trained") / "run"
    config = small_config({"train.num_epochs": 3, "eval.after_training": True, "eval.iwae_k": 16})
    dataset = synthetic_dataset()
    train_and_evaluate(config, workdir, dataset=dataset)
    parts, state, _ = restore_run(workdir)
    return workdir, parts, parts.model, state, dataset


def _iwae(parts, images, root, params, iwae_k=None, iwae_pairs_per_call=None):
    if iwae_pairs_per_call:
        settings = parts.evaluation._replace(iwae_pairs_per_call=iwae_pairs_per_call)
        parts = parts._replace(evaluation=settings)
    return iwae_bound(parts, params, images, rng.stream(root, rng.Stream.IWAE), iwae_k)


def _elbo(parts, images, root):
    return make_test_evaluator(parts, images, rng.stream(root, rng.Stream.EVAL))


def _importance_noise(key, images: int, samples: int, dim: int) -> jax.Array:
    """``[images, samples, dim]``: sample s of image g from ``fold_in(fold_in(key, g), s)``."""

    def one(g, s):
        return jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, g), s), (dim,))

    return jax.vmap(lambda g: jax.vmap(lambda s: one(g, s))(jnp.arange(samples)))(
        jnp.arange(images)
    )


def _numpy_log_weights(model, params, config, x_u8, eps):
    """log p(x|z) + log p(z) - log q(z|x) in float64 numpy, from the network's raw outputs."""
    x = np.asarray(x_u8, np.float64) / 255.0
    mean, logvar = (
        np.asarray(a, np.float64)
        for a in model.apply({"params": params}, jnp.asarray(x, jnp.float32), method=VAE.encode)
    )
    std = config.model.noise_scale * np.exp(0.5 * logvar)
    z = mean[:, None] + std[:, None] * eps
    logits = np.asarray(
        model.apply(
            {"params": params},
            jnp.asarray(z.reshape(-1, z.shape[-1]), jnp.float32),
            method=VAE.decode,
        ),
        np.float64,
    ).reshape(*z.shape[:2], -1)
    flat_x = x.reshape(len(x), 1, -1)
    log_px = np.sum(flat_x * logits - np.logaddexp(0.0, logits), axis=-1)
    log_pz = norm.logpdf(z).sum(-1)
    log_qz = norm.logpdf(z, loc=mean[:, None], scale=std[:, None]).sum(-1)
    return log_px + log_pz - log_qz


def test_k1_bound_equals_the_single_sample_elbo_of_the_same_noise(trained):
    _, parts, model, state, dataset = trained
    config = parts.config
    images = dataset.test_images[:40]
    result = _iwae(parts, images, state.root, state.params, iwae_k=1)
    key = rng.stream(state.root, rng.Stream.IWAE)
    eps = np.asarray(
        _importance_noise(key, 40, 1, config.model.latent_dim),
        np.float64,
    )
    expected = _numpy_log_weights(model, state.params, config, images, eps)[:, 0]
    np.testing.assert_allclose(result.bounds, expected, rtol=1e-5, atol=1e-3)


def test_bound_does_not_depend_on_chunking(trained):
    _, parts, model, state, dataset = trained
    config = parts.config
    images = dataset.test_images[:37]
    a = _iwae(parts, images, state.root, state.params, iwae_k=24, iwae_pairs_per_call=5)
    b = _iwae(parts, images, state.root, state.params, iwae_k=24, iwae_pairs_per_call=4096)
    assert (a.images_per_call, a.samples_per_call) != (b.images_per_call, b.samples_per_call)
    np.testing.assert_allclose(a.bounds, b.bounds, rtol=1e-6)
    key = rng.stream(state.root, rng.Stream.IWAE)
    eps = np.asarray(_importance_noise(key, 37, 24, config.model.latent_dim))
    log_w = _numpy_log_weights(model, state.params, config, images, eps)
    np.testing.assert_allclose(a.bounds, logsumexp(log_w, axis=1) - math.log(24), rtol=1e-5)


def test_iwae_is_above_the_elbo_and_grows_with_k(trained):
    _, parts, model, state, dataset = trained
    config = parts.config
    images = dataset.test_images[:64]
    key = rng.stream(state.root, rng.Stream.IWAE)
    eps = np.asarray(_importance_noise(key, 64, 256, config.model.latent_dim))
    log_w = _numpy_log_weights(model, state.params, config, images, eps)
    # Averaging the k-sample bound over the 256/k disjoint groups of the same draws makes it
    # non-decreasing in k for every image (concavity of log), starting at the ELBO (k=1).
    previous = log_w.mean(axis=1)
    for k in (2, 4, 16, 64, 256):
        groups = log_w.reshape(64, 256 // k, k)
        bound = (logsumexp(groups, axis=2) - math.log(k)).mean(axis=1)
        assert np.all(bound >= previous - 1e-9)
        previous = bound
    assert previous.mean() > log_w.mean() + 0.1  # a real gap: the posterior is not exact

    # The evaluator's own estimates, with independent keys per k: non-decreasing on average
    # within three standard errors of the paired differences.
    results = [_iwae(parts, images, state.root, state.params, iwae_k=k) for k in (1, 8, 64)]
    for low, high in itertools.pairwise(results):
        diff = high.bounds - low.bounds
        assert diff.mean() > -3 * diff.std(ddof=1) / math.sqrt(len(diff))
    elbo = _elbo(parts, images, state.root)
    assert -results[-1].nll > -elbo(state.params)["neg_elbo"]


def _collapse(params, noise_scale: float):
    """Posterior = prior for ``noise_scale`` (mean 0, sampled stddev 1), decoder ignores z."""
    params = jax.tree.map(np.array, params)
    enc, dec = params["encoder"], params["decoder"]
    for head in ("mean", "logvar"):
        enc[head]["kernel"][:] = 0.0
        enc[head]["bias"][:] = 0.0
    enc["logvar"]["bias"][:] = -2.0 * math.log(noise_scale)
    first = "Dense_0"
    dec[first]["kernel"][:] = 0.0
    dec[first]["bias"][:] = np.linspace(-1.0, 1.0, dec[first]["bias"].size)
    return jax.tree.map(jnp.asarray, params)


@pytest.mark.parametrize(
    ("arch", "noise_scale"), [("conv", 1.0), ("conv", 0.5), ("mlp", 1.0), ("mlp", 2.0)]
)
def test_bound_of_a_prior_posterior_and_constant_decoder_is_the_exact_likelihood(arch, noise_scale):
    """With noise_scale s the encoder's stddev is 1/s, so only the q actually sampled (stddev
    s * 1/s = 1) equals the prior: a bound that used the unscaled q would be off."""
    config = small_config({"model.arch": arch, "model.noise_scale": noise_scale, "eval.iwae_k": 7})
    dataset = synthetic_dataset(n_test=20)
    images = (dataset.test_images > 127).astype(np.uint8) * 255  # binary: a true likelihood
    parts = build_parts(config, images.shape[1:], make_mesh())
    model = parts.model
    params = _collapse(init_params(model, jax.random.key(3), images.shape[1:]), noise_scale)
    root = rng.root_key(0)
    logits = np.asarray(
        model.apply({"params": params}, jnp.zeros((1, config.model.latent_dim)), method=VAE.decode),
        np.float64,
    ).reshape(-1)
    x = images.reshape(len(images), -1) / 255.0
    exact = np.sum(x * logits - np.logaddexp(0.0, logits), axis=1)  # log p(x), z integrated out

    result = _iwae(parts, images, root, params)
    np.testing.assert_allclose(result.bounds, exact, rtol=1e-5)
    stats = latent_stats(parts, params, images, root)
    assert stats.active_units == 0
    assert stats.rate == pytest.approx(0.0, abs=1e-6)
    elbo = _elbo(parts, images, root)(params)
    assert -elbo["neg_elbo"] == pytest.approx(exact.mean(), rel=1e-5)
    assert elbo["kl"] == pytest.approx(0.0, abs=1e-5)


def test_eval_after_training_equals_eval_of_the_saved_checkpoint(trained):
    workdir, *_, dataset = trained
    after_training = json.loads((workdir / "eval.json").read_text())
    later = evaluate_workdir(workdir, dataset=dataset)
    for key in after_training.keys() - VOLATILE:
        assert later[key] == after_training[key], key
    assert (
        json.loads((workdir / "eval.json").read_text())["test_neg_elbo_nats"]
        == (after_training["test_neg_elbo_nats"])
    )


def test_eval_json_is_consistent_and_names_its_figures(trained):
    workdir, *_ = trained
    r = json.loads((workdir / "eval.json").read_text())
    assert r["iwae_k"] == 16 and r["iwae_test_images"] == r["test_images"] == 96
    assert r["test_neg_elbo_nats"] == pytest.approx(r["distortion_nats"] + r["rate_nats"], rel=1e-5)
    assert sum(r["rate_per_dim_nats"]) == pytest.approx(r["rate_nats"], rel=1e-5)
    assert sum(r["rate_per_layer_nats"]) == pytest.approx(r["rate_nats"], rel=1e-5)
    variances = np.array(r["posterior_mean_variance_per_dim"])
    assert r["active_units"] == int(np.sum(variances > 0.01)) > 0
    assert r["iwae_nll_nats"] <= r["test_neg_elbo_nats"] + 3 * r["iwae_nll_stderr_nats"]
    assert r["iwae_nll_stderr_nats"] > 0 and r["peak_host_rss_bytes"] > 0
    assert 0 < r["recon_mse_per_pixel_64"] < 1
    assert "manifold.png" not in r["figures"]  # latent_dim 20: no manifold
    for name in r["figures"]:
        with Image.open(workdir / "figures" / name) as im:
            assert im.format == "PNG" and min(im.size) > 100


def test_eval_at_a_chosen_step_writes_its_own_file(trained):
    workdir, *_, dataset = trained
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    r = evaluate_workdir(workdir, ["--config.eval.iwae_k=2"], step=steps[0], dataset=dataset)
    assert r["step"] == steps[0] and r["iwae_k"] == 2
    assert json.loads((workdir / f"eval_step_{steps[0]}.json").read_text())["iwae_k"] == 2
    assert json.loads((workdir / "eval.json").read_text())["iwae_k"] == 16


def test_two_dimensional_latents_get_the_manifold_and_scatter(tmp_path):
    config = small_config(
        {"model.latent_dim": 2, "train.num_epochs": 1, "eval.after_training": True}
    )
    train_and_evaluate(config, tmp_path / "run", dataset=synthetic_dataset())
    r = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert {"manifold.png", "latent_scatter.png", "traversals.png"} <= set(r["figures"])
    for name in r["figures"]:
        assert (tmp_path / "run" / "figures" / name).stat().st_size > 1000


def test_only_eval_keys_may_be_overridden(trained):
    workdir, *_, dataset = trained
    with pytest.raises(ConfigError, match="only eval"):
        evaluate_workdir(workdir, ["--config.model.latent_dim=3"], dataset=dataset)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval", "no_such_experiment"], "unknown experiment 'no_such_experiment'"),
        (["eval", "mnist_z20", "--workdir", "{missing}"], "there is no run at"),
        (["eval", "mnist_z20", "--workdir", "{empty}"], "holds no vae_jax run"),
    ],
)
def test_eval_of_a_missing_or_empty_workdir_is_a_clear_error(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    args = [a.format(missing=tmp_path / "missing", empty=tmp_path / "empty") for a in args]
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


@pytest.mark.parametrize(
    ("n", "k", "pairs", "devices"),
    [
        (10000, 5000, 1024, 1),
        (10000, 5000, 1024, 4),
        (37, 24, 5, 1),
        (3, 100, 16384, 2),
        (96, 1, 1024, 8),
        (5, 7, 1, 1),
    ],
)
def test_iwae_chunking_bounds_the_work_per_call(n, k, pairs, devices):
    images, samples = iwae_chunking(n, k, pairs, devices)
    assert images % devices == 0 and images >= devices
    assert samples * -(-k // samples) >= k and samples <= k
    assert images * samples <= max(pairs, devices * samples)
    assert images <= -(-n // devices) * devices
