"""Evaluating a trained run: ``eval.json``, a printed table and the figures.

:func:`evaluate_trained` works on what is in memory (the parts, the parameters, the dataset):
training calls it when it ends. ``make eval`` (:func:`evaluate_workdir`) restores the run's
checkpoint once and calls the same function; it uses the run's own config (``config.json``),
of which only ``eval.*`` keys may be overridden, since nothing else may differ from what was
trained.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vae_jax.atomic_io import write_json
from vae_jax.core import rng
from vae_jax.core.pixels import to_float
from vae_jax.core.train_step import TrainState
from vae_jax.data.datasets import load_dataset
from vae_jax.data.images import Dataset, check_image_shape
from vae_jax.evaluation.decoding import reconstructions
from vae_jax.evaluation.evaluators import iwae_bound, make_test_evaluator
from vae_jax.evaluation.figures import draw_evaluation
from vae_jax.evaluation.latent_stats import ACTIVE_UNIT_THRESHOLD, LatentStats, latent_stats
from vae_jax.evaluation.trained_run import restore_run
from vae_jax.outputs import plots
from vae_jax.outputs.workdir import Workdir, is_writer
from vae_jax.parts import Parts


def evaluate(
    workdir: str | Path, step: int | None = None, dataset: Dataset | None = None, **eval_settings
) -> dict:
    """:func:`evaluate_workdir` for notebooks: ``evaluate("runs/z20", iwae_k=5000,
    iwae_test_size=0)`` sets ``eval.iwae_k`` and ``eval.iwae_test_size``."""
    overrides = {f"eval.{k}": v for k, v in eval_settings.items()}
    return evaluate_workdir(workdir, overrides, step=step, dataset=dataset)


def evaluate_workdir(
    workdir: str | Path,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    step: int | None = None,
    dataset: Dataset | None = None,
) -> dict:
    """``make eval``: checkpoint ``step`` (default: the newest valid one) of the run in
    ``workdir``, restored once, evaluated by :func:`evaluate_trained`."""
    run = Workdir(Path(workdir))
    parts, state, meta = restore_run(run, step, eval_overrides=overrides)
    if dataset is None:
        dataset = load_dataset(parts.config.data)
    check_image_shape(dataset.test_images.shape[1:], parts.image_shape, f"the run in {run.path}")
    return evaluate_trained(parts, state, meta, dataset, run, step)


def evaluate_trained(
    parts: Parts,
    state: TrainState,
    meta: dict,
    dataset: Dataset,
    workdir: Workdir,
    step: int | None = None,
) -> dict:
    """Evaluate the parameters of ``state`` (checkpoint ``meta['step']``, epoch
    ``meta['epoch']``) on ``dataset``'s test images; process 0 writes ``eval.json`` (or
    ``eval_step_<step>.json`` for a chosen ``step``) and the figures, and prints a table.
    Returns what it writes."""
    if is_writer():
        workdir.check_writable(workdir.eval_figures(step))
    start = time.perf_counter()
    result = _evaluate(parts, state, meta, dataset, workdir, step)
    result["seconds"] = time.perf_counter() - start
    path = workdir.eval_json(step)
    if is_writer():
        write_json(path, result)
        print(format_table(result, path))
    return result


def _evaluate(parts: Parts, state, meta, dataset, workdir: Workdir, step) -> dict:
    """The numbers of ``eval.json``, and the figures."""
    params, root, test_images = state.params, state.root, dataset.test_images
    key = rng.stream(root, rng.Stream.EVAL)
    elbo = make_test_evaluator(parts, test_images, key)(params)
    latent = latent_stats(parts, params, test_images, key)
    iwae_images = test_images[: parts.evaluation.iwae_test_size or None]
    iw = iwae_bound(parts, params, iwae_images, rng.stream(root, rng.Stream.IWAE))
    shown = test_images[: plots.FIGURE_IMAGES]
    originals = np.asarray(to_float(shown))
    recon = np.asarray(reconstructions(parts.model)(params, shown))
    label = f"{workdir.path.name}: step {meta['step']} (epoch {meta['epoch']})"
    out = workdir.eval_figures(step)
    drawn = draw_evaluation(out, parts, params, latent, originals, recon, root, dataset, label)
    result = _result(parts.config, meta, workdir.path, len(test_images), elbo, latent, iw)
    mse = float(np.mean(np.square(recon - originals)))
    return {**result, "recon_mse_per_pixel_64": mse, "figures": drawn,
            "figures_dir": str(out.relative_to(workdir.path))}  # fmt: skip


def _result(c, meta, workdir, n_test, elbo, latent: LatentStats, iw) -> dict:
    top = latent.layers[0]
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
        "model": {"arch": c.model.arch, "prior": c.model.prior, "posterior": c.model.posterior},
        "bounds_note": "every bound uses the q actually sampled (noise_scale included) and the "
        "model's own prior; each layer's KL in closed form where it has one, else log q - log p",
        "test_neg_elbo_nats": elbo["neg_elbo"],
        "elbo_samples_per_image": c.eval.num_samples,
        "distortion_nats": elbo["recon"],
        "rate_nats": elbo["kl"],  # distortion + rate = -ELBO
        "rate_per_layer_nats": [layer.rate for layer in latent.layers],
        "rate_per_dim_nats": None if top.rate_per_dim is None else top.rate_per_dim.tolist(),
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
        "active_units_per_layer": [layer.active_units for layer in latent.layers],
        "latent_dim": sum(int(np.prod(layer.shape)) for layer in latent.layers),
        "latent_shapes": [list(layer.shape) for layer in latent.layers],
        "active_unit_threshold": ACTIVE_UNIT_THRESHOLD,
        "posterior_mean_variance_per_dim": top.mean_variance.tolist(),
    }


def _by_layer(values: list[float]) -> str:
    return f" ({', '.join(f'{v:.2f}' for v in values)} by layer)" if len(values) > 1 else ""


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
        ("  rate (KL)", f"{r['rate_nats']:.2f} nats" + _by_layer(r["rate_per_layer_nats"])),
        (
            f"IWAE NLL bound, k={r['iwae_k']} ({r['iwae_test_images']} images)",
            f"{r['iwae_nll_nats']:.2f} ± {r['iwae_nll_stderr_nats']:.2f} nats (std. error)",
        ),
        (
            f"active units (Var > {r['active_unit_threshold']:g})",
            f"{r['active_units']} / {r['latent_dim']}"
            + (
                " (" + ", ".join(map(str, r["active_units_per_layer"])) + " by layer)"
                if len(r["active_units_per_layer"]) > 1
                else ""
            ),
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
