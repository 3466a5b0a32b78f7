"""``make eval``: evaluate a run's checkpoint; write ``eval.json``, a table and the figures.

Uses the run's own config (``config.json``); only ``eval.*`` keys may be overridden, since
nothing else may differ from what was trained. Also run at the end of training when
``eval.after_training`` is set.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vae_jax import parallel
from vae_jax.atomic_io import write_json
from vae_jax.config.experiments import override, override_keys
from vae_jax.config.keys import with_values
from vae_jax.core import objectives, rng
from vae_jax.core.models import VAE
from vae_jax.core.pixels import to_float
from vae_jax.data.datasets import load_dataset
from vae_jax.data.images import Dataset
from vae_jax.errors import ConfigError, DataError
from vae_jax.evaluation.evaluators import (
    ACTIVE_UNIT_THRESHOLD,
    LatentStats,
    decoder_means,
    iwae_bound,
    latent_stats,
    make_test_evaluator,
)
from vae_jax.evaluation.trained_run import restore_run
from vae_jax.outputs import plots
from vae_jax.outputs.workdir import Workdir, is_writer

NUM_TRAVERSAL_DIMS = 10
NUM_INTERPOLATIONS = 8


def apply_eval_overrides(
    config: ml_collections.ConfigDict, overrides: Sequence[str] | Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """``config`` with ``eval.*`` overrides: ``--config.eval.KEY=VALUE`` arguments, or
    ``{"eval.KEY": value}``; other keys are refused (evaluation uses the run's own config)."""
    named = dict(overrides) if isinstance(overrides, Mapping) else None
    for key in named if named is not None else override_keys(overrides):
        if not key.startswith("eval."):
            raise ConfigError(
                f"--config.{key}: evaluation uses the run's own config; only eval.* keys can be "
                "overridden (e.g. --config.eval.iwae_k=100)"
            )
    if named is not None:
        return with_values(config, named, "evaluation settings")
    return override(config, overrides)


def evaluate(
    workdir: str | Path,
    step: int | None = None,
    dataset: Dataset | None = None,
    **eval_settings: Any,
) -> dict:
    """:func:`evaluate_run` for notebooks: ``evaluate("runs/z20", iwae_k=5000,
    iwae_test_size=0)`` sets ``eval.iwae_k`` and ``eval.iwae_test_size``."""
    overrides = {f"eval.{k}": v for k, v in eval_settings.items()}
    return evaluate_run(workdir, overrides, step=step, dataset=dataset)


def evaluated_step(workdir: Path) -> int | None:
    """The checkpoint step that ``eval.json`` describes, if there is one."""
    try:
        return int(json.loads(Workdir(workdir).eval_json().read_text())["step"])
    except (OSError, ValueError, KeyError):
        return None


def evaluate_run(
    workdir: str | Path,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    step: int | None = None,
    dataset: Dataset | None = None,
) -> dict:
    """Evaluate checkpoint ``step`` (default: the newest valid one) of the run in ``workdir``.

    Returns what it writes to ``eval.json`` (``eval_step_<step>.json`` for a chosen step).
    """
    workdir = Path(workdir)
    config, model, state, meta = restore_run(workdir, step)
    config = apply_eval_overrides(config, overrides)
    mesh = parallel.make_mesh()
    parallel.check_divisible(config.eval.batch_size, mesh, "eval.batch_size")
    if dataset is None:
        dataset = load_dataset(config.data)
    if tuple(meta["image_shape"]) != dataset.test_images.shape[1:]:
        raise DataError(
            f"test images are {dataset.test_images.shape[1:]}, but the run in {workdir} was "
            f"trained on {tuple(meta['image_shape'])}"
        )
    if is_writer():
        Workdir(workdir).check_writable(Workdir(workdir).eval_figures(step))
    start = time.perf_counter()
    result = _evaluate(config, model, state.params, state.root, dataset, mesh, meta, workdir, step)
    result["seconds"] = time.perf_counter() - start
    path = Workdir(workdir).eval_json(step)
    if is_writer():
        write_json(path, result)
        print(format_table(result, path))
    return result


def _evaluate(config, model, params, root, dataset, mesh, meta, workdir: Path, step) -> dict:
    """The numbers of ``eval.json``, and the figures."""
    c = config
    log_lik = objectives.log_likelihood(c.model.likelihood, c.model.obs_stddev)
    test_images = dataset.test_images
    elbo = make_test_evaluator(
        model,
        test_images,
        mesh,
        rng.stream(root, rng.Stream.EVAL),
        log_lik=log_lik,
        noise_scale=c.model.noise_scale,
        batch_size=c.eval.batch_size,
        num_samples=c.eval.num_samples,
    )(params)
    latent = latent_stats(
        model,
        params,
        test_images,
        mesh,
        noise_scale=c.model.noise_scale,
        batch_size=c.eval.batch_size,
    )
    iw = iwae_bound(
        model,
        params,
        test_images[: c.eval.iwae_test_size or None],
        mesh,
        rng.stream(root, rng.Stream.IWAE),
        log_lik=log_lik,
        noise_scale=c.model.noise_scale,
        latent_dim=c.model.latent_dim,
        k=c.eval.iwae_k,
        pairs_per_call=c.eval.iwae_pairs_per_call,
    )
    decode = _decoder(model, params)
    originals = np.asarray(to_float(test_images[: plots.FIGURE_IMAGES]))
    recon = decode(latent.means[: plots.FIGURE_IMAGES])
    label = f"{workdir.name}: step {meta['step']} (epoch {meta['epoch']})"
    out = Workdir(workdir).eval_figures(step)
    drawn = _draw(out, c, decode, latent, originals, recon, root, dataset, label)
    result = _result(c, meta, workdir, len(test_images), elbo, latent, iw, recon, originals, drawn)
    return {**result, "figures_dir": str(out.relative_to(workdir))}


def _decoder(model: VAE, params: dict):
    """``z -> `` decoder means in [0, 1], as numpy."""
    fn = decoder_means(model)
    return lambda z: np.asarray(fn(params, jnp.asarray(z, jnp.float32)))


def _result(c, meta, workdir, n_test, elbo, latent, iw, recon, originals, drawn) -> dict:
    return {
        "workdir": str(workdir),
        "step": int(meta["step"]),
        "epoch": int(meta["epoch"]),
        "data": {
            "name": c.data.name,
            "binarize": c.data.binarize,
            "binarize_seed": c.data.binarize_seed,  # the test set's fixed binarization
        },
        "test_images": n_test,
        "noise_scale": c.model.noise_scale,
        "bounds_note": "every bound uses q = N(mean, (noise_scale * stddev)^2), the one sampled",
        "test_neg_elbo_nats": elbo["neg_elbo"],
        "elbo_samples_per_image": c.eval.num_samples,
        "distortion_nats": elbo["recon"],
        "rate_nats": latent.rate,
        "rate_per_dim_nats": latent.rate_per_dim.tolist(),
        "iwae_k": iw.k,
        "iwae_test_images": len(iw.bounds),
        "iwae_nll_nats": iw.nll,
        "iwae_nll_stderr_nats": iw.stderr,
        "iwae_seconds": iw.seconds,
        "iwae_images_per_call": iw.images_per_call,
        "iwae_samples_per_call": iw.samples_per_call,
        "iwae_xla_bytes_per_call": iw.xla_bytes_per_call,
        "peak_host_rss_bytes": iw.peak_host_rss_bytes,
        "active_units": latent.active_units,
        "latent_dim": int(latent.means.shape[1]),
        "active_unit_threshold": ACTIVE_UNIT_THRESHOLD,
        "posterior_mean_variance_per_dim": latent.mean_variance.tolist(),
        "recon_mse_per_pixel_64": float(np.mean(np.square(recon - originals))),
        "figures": drawn,
    }


def _draw(
    out: Path,
    config: ml_collections.ConfigDict,
    decode,
    latent: LatentStats,
    originals: np.ndarray,
    recon: np.ndarray,
    root: jax.Array,
    dataset: Dataset,
    label: str,
) -> list[str]:
    """The evaluation's figures (process 0 draws); returns their file names."""
    if not is_writer():
        return []
    z = jax.random.normal(
        rng.stream(root, rng.Stream.FIGURES), (plots.FIGURE_IMAGES, config.model.latent_dim)
    )
    plots.save_panels(
        out / "eval_samples.png",
        [("Samples from the prior", plots.make_grid(decode(np.asarray(z))))],
        label,
    )
    plots.save_panels(
        out / "eval_reconstructions.png",
        [("Originals", plots.make_grid(originals)), ("Reconstructions", plots.make_grid(recon))],
        label,
    )
    names = ["eval_samples.png", "eval_reconstructions.png"]
    names += _draw_latent_space(out, decode, latent, originals, label)
    if config.model.latent_dim == 2:
        plots.save_manifold(out / "manifold.png", decode, f"{label}: learned manifold")
        plots.save_latent_scatter(
            out / "latent_scatter.png",
            latent.means,
            dataset.test_labels,
            f"{label}: test set posterior means",
        )
        names += ["manifold.png", "latent_scatter.png"]
    return names


def _draw_latent_space(
    out: Path, decode, latent: LatentStats, originals: np.ndarray, label: str
) -> list[str]:
    """Traversals of the most active dimensions, interpolations, and the KL per dimension."""
    order = np.argsort(-latent.mean_variance)[:NUM_TRAVERSAL_DIMS]
    spread = np.sqrt(latent.mean_variance + np.mean(np.square(latent.stddevs), axis=0))
    plots.save_traversals(
        out / "traversals.png",
        decode,
        latent.means[0],
        order,
        spread,
        latent.rate_per_dim,
        f"{label}: traversals of the {len(order)} most active dimensions",
    )
    names = ["traversals.png"]
    pairs = min(NUM_INTERPOLATIONS, len(originals) // 2)
    if pairs:
        plots.save_interpolations(
            out / "interpolations.png",
            decode,
            latent.means[0 : 2 * pairs : 2],
            latent.means[1 : 2 * pairs : 2],
            originals[0 : 2 * pairs : 2],
            originals[1 : 2 * pairs : 2],
            f"{label}: interpolations between test images",
        )
        names.append("interpolations.png")
    plots.save_kl_per_dim(
        out / "kl_per_dim.png",
        latent.rate_per_dim,
        latent.mean_variance,
        ACTIVE_UNIT_THRESHOLD,
        label,
    )
    return [*names, "kl_per_dim.png"]


def format_table(r: dict, path: Path) -> str:
    """The printed summary of an evaluation."""
    data = r["data"]["name"] + (
        f", {r['data']['binarize']} binarization"
        if r["data"]["binarize"] != "none"
        else ", grayscale"
    )
    rows = [
        (
            f"test -ELBO ({r['elbo_samples_per_image']} sample/image)",
            f"{r['test_neg_elbo_nats']:.2f} nats",
        ),
        ("  distortion (reconstruction)", f"{r['distortion_nats']:.2f} nats"),
        ("  rate (KL)", f"{r['rate_nats']:.2f} nats"),
        (
            f"IWAE NLL bound, k={r['iwae_k']} ({r['iwae_test_images']} images)",
            f"{r['iwae_nll_nats']:.2f} ± {r['iwae_nll_stderr_nats']:.2f} nats (std. error)",
        ),
        (
            f"active units (Var > {r['active_unit_threshold']:g})",
            f"{r['active_units']} / {r['latent_dim']}",
        ),
        ("reconstruction MSE / pixel (64 images)", f"{r['recon_mse_per_pixel_64']:.5f}"),
        (
            "IWAE time, memory",
            f"{r['iwae_seconds']:.1f} s; XLA {r['iwae_xla_bytes_per_call'] / 2**20:.0f} MiB per "
            f"call, process peak {r['peak_host_rss_bytes'] / 2**20:.0f} MiB",
        ),
    ]
    width = max(len(a) for a, _ in rows)
    lines = [
        f"Evaluation of {r['workdir']} at step {r['step']} (epoch {r['epoch']}), "
        f"{r['test_images']} test images, {data}"
    ]
    lines += [f"  {a.ljust(width)}  {b}" for a, b in rows]
    lines.append(f"  written: {path} and {len(r['figures'])} figures in {r['figures_dir']}/")
    return "\n".join(lines)
