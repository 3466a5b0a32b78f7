"""Test-set bounds, in nats per image: the ELBO and the IWAE bound, for any model of the
interface of :mod:`vae_jax.core.latents` (its layers' log-densities, its own prior).

Every bound uses the distribution actually sampled (``noise_scale`` included). Images are
uint8 ``[N, H, W, C]``, placed on the devices in padded chunks (batch sharded).
The test -ELBO evaluator is built once and called every epoch with new parameters, with no
recompilation; the IWAE bound and the latent statistics are computed once per evaluation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from vae_jax.core import objectives
from vae_jax.core.latents import noise_per_example
from vae_jax.core.pixels import to_float
from vae_jax.core.sharding import batch_sharding
from vae_jax.outputs.metrics import peak_host_memory_bytes
from vae_jax.outputs.workdir import is_writer
from vae_jax.parallel import compile_fast
from vae_jax.parts import EvalSettings, Parts

EVAL_METRICS = ("neg_elbo", "recon", "kl")
TestEvaluator = Callable[..., Any]  # (params, per_image=False) -> means, or [3, N] per image


def chunk_size(n: int, batch_size: int, n_devices: int) -> int:
    """The eval batch: ``batch_size``, or less for a small test set, a multiple of devices."""
    return min(batch_size, -(-n // n_devices) * n_devices)


def _chunks(images: np.ndarray, size: int, mesh: Mesh) -> list[tuple[jax.Array, jax.Array]]:
    """``images`` padded to whole chunks of ``size``, on the devices, with 0/1 masks."""
    n = len(images)
    n_chunks = -(-n // size)
    padded = np.zeros((n_chunks * size, *images.shape[1:]), images.dtype)
    padded[:n] = images
    mask = (np.arange(n_chunks * size) < n).astype(np.float32)
    batch = batch_sharding(mesh)
    return [
        (
            jax.device_put(padded[i * size : (i + 1) * size], batch),
            jax.device_put(mask[i * size : (i + 1) * size], batch),
        )
        for i in range(n_chunks)
    ]


def make_test_evaluator(parts: Parts, images: np.ndarray, key: jax.Array) -> TestEvaluator:
    """``evaluate(params)``: ``{'neg_elbo': .., 'recon': .., 'kl': ..}``, the means over
    ``images``; ``evaluate(params, per_image=True)``: each image's terms, ``[3, N]`` float64.

    The reconstruction term is averaged over ``eval.num_samples`` posterior samples per image;
    each layer's KL is its closed form where one holds, else log q - log p averaged over the
    same samples. Chunk i draws its samples from ``fold_in(key, i)`` (a run's ``key`` is
    its EVAL stream), so every epoch sees the same noise and test numbers are comparable across
    epochs. Built once (the images placed on the devices), called every epoch with new
    parameters, with no recompilation.
    """
    n, settings, mesh = len(images), parts.evaluation, parts.mesh
    chunks = _chunks(images, chunk_size(n, settings.batch_size, mesh.devices.size), mesh)
    keys = [jax.random.fold_in(key, i) for i in range(len(chunks))]
    terms = _elbo_terms(parts.model, settings)
    chunk_terms = jax.jit(terms)

    @jax.jit
    def chunk_sums(params, images_u8, mask, key):
        return jnp.sum(terms(params, images_u8, key) * mask, axis=-1)

    def evaluate(params: dict, per_image: bool = False) -> Any:
        if per_image:
            parts_ = [chunk_terms(params, x, k) for (x, _), k in zip(chunks, keys, strict=True)]
            return np.concatenate([np.asarray(p, np.float64) for p in parts_], axis=1)[:, :n]
        total = sum(chunk_sums(params, x, m, k) for (x, m), k in zip(chunks, keys, strict=True))
        return dict(zip(EVAL_METRICS, (np.asarray(total) / n).tolist(), strict=True))

    return evaluate


def _elbo_terms(model: nn.Module, settings: EvalSettings) -> Callable:
    """``(params, images_u8, key) -> [3, B]``: -ELBO, recon, KL of each image."""

    def terms(params, images_u8, key):
        x = to_float(images_u8)

        def one(k):
            t = objectives.elbo_terms(model, params, x, k, settings.log_lik, settings.noise_scale)
            return jnp.stack([t.recon + t.kl, t.recon, t.kl])

        return jnp.mean(jax.vmap(one)(jax.random.split(key, settings.num_samples)), axis=0)

    return terms


# ---------------------------------------------------------------------------------------------
# IWAE


class IwaeResult(NamedTuple):
    bounds: np.ndarray  # float64 [N]: the k-sample bound on log p(x) of each image
    k: int
    images_per_call: int
    samples_per_call: int
    seconds: float
    xla_bytes_per_call: int  # XLA's own account of one call: temporaries + arguments + outputs
    peak_host_rss_bytes: int  # of the whole process, so far

    @property
    def nll(self) -> float:
        return float(-self.bounds.mean())

    @property
    def stderr(self) -> float:
        return (
            float(self.bounds.std(ddof=1) / math.sqrt(len(self.bounds)))
            if len(self.bounds) > 1
            else 0.0
        )


def iwae_chunking(n_images: int, k: int, pairs_per_call: int, n_devices: int) -> tuple[int, int]:
    """``(images_per_call, samples_per_call)``: at most ``pairs_per_call`` decodes per call,
    images a multiple of the devices, and the k samples split into near-equal chunks."""
    per_device = max(1, pairs_per_call // n_devices)
    sample_chunks = -(-k // per_device)
    samples = -(-k // sample_chunks)
    images = max(n_devices, (pairs_per_call // samples) // n_devices * n_devices)
    return min(images, -(-n_images // n_devices) * n_devices), samples


def iwae_bound(
    parts: Parts, params: dict, images: np.ndarray, key: jax.Array, k: int | None = None
) -> IwaeResult:
    """The ``k``-sample bound (default ``eval.iwae_k``) of every image, computed in chunks of
    at most ``eval.iwae_pairs_per_call`` decodes with a streaming log-sum-exp, under a progress
    bar. Sample s of image g draws its noise from ``fold_in(fold_in(key, g), s)`` (a run's
    ``key`` is its IWAE stream)."""
    start = time.perf_counter()
    n, settings, mesh, model = len(images), parts.evaluation, parts.mesh, parts.model
    k = k or settings.iwae_k
    per_call, samples = iwae_chunking(n, k, settings.iwae_pairs_per_call, mesh.devices.size)
    batch = batch_sharding(mesh)
    chunks = _chunks(images, per_call, mesh)

    def accumulate(params, images_u8, image_ids, offset, lse):
        sample_ids = offset + jnp.arange(samples, dtype=jnp.int32)
        noise = noise_per_example(pair_keys(key, image_ids, sample_ids))
        x = to_float(images_u8)
        log_w = objectives.log_weights(
            model, params, x, noise, settings.log_lik, settings.noise_scale, samples
        )
        log_w = jnp.where(sample_ids < k, log_w, -jnp.inf)
        return jnp.logaddexp(lse, jax.nn.logsumexp(log_w, axis=-1))

    ids = [
        jax.device_put(np.arange(i * per_call, (i + 1) * per_call, dtype=np.int32), batch)
        for i in range(len(chunks))
    ]
    lse0 = jax.device_put(jnp.full((per_call,), -jnp.inf), batch)
    # compiled as the train step is (on CPU without XLA's YNNPACK fusions: 1.25x here)
    fn = compile_fast(jax.jit(accumulate).lower(params, chunks[0][0], ids[0], jnp.int32(0), lse0))
    offsets = [jnp.int32(j * samples) for j in range(-(-k // samples))]
    out = _stream(fn, params, chunks, ids, offsets, lse0, n, k)
    bounds = np.concatenate([np.asarray(b, np.float64) for b in out])[:n] - math.log(k)
    return IwaeResult(
        bounds=bounds,
        k=k,
        images_per_call=per_call,
        samples_per_call=samples,
        seconds=time.perf_counter() - start,
        xla_bytes_per_call=_xla_bytes(fn),
        peak_host_rss_bytes=peak_host_memory_bytes(),
    )


def pair_keys(key: jax.Array, image_ids: jax.Array, sample_ids: jax.Array) -> jax.Array:
    """``[len(image_ids) * len(sample_ids)]`` keys, image by image: sample s of image g has
    ``fold_in(fold_in(key, g), s)``, whatever chunk either falls in."""

    def one(g, s):
        return jax.random.fold_in(jax.random.fold_in(key, g), s)

    return jax.vmap(lambda g: jax.vmap(lambda s: one(g, s))(sample_ids))(image_ids).reshape(-1)


def _stream(fn, params, chunks, ids, offsets, lse0, n: int, k: int) -> list[jax.Array]:
    """Each image chunk's log-sum-exp over all ``k`` samples, under a progress bar."""
    out = []
    with tqdm(
        total=n * k,
        desc=f"IWAE k={k}",
        unit="sample",
        unit_scale=True,
        leave=False,
        mininterval=1.0,
        disable=not is_writer(),
    ) as bar:
        for (x, _), image_ids in zip(chunks, ids, strict=True):
            lse = lse0
            for offset in offsets:
                lse = fn(params, x, image_ids, offset, lse)
            if out:  # one image chunk in flight: independent chunks would otherwise run
                out[-1].block_until_ready()  # at once and multiply the memory
            out.append(lse)
            bar.update(min(len(lse), n - bar.n // k) * k)
    return out


def _xla_bytes(compiled) -> int:
    try:
        m = compiled.memory_analysis()
        return int(
            m.temp_size_in_bytes
            + m.argument_size_in_bytes
            + m.output_size_in_bytes
            - m.alias_size_in_bytes
        )
    except Exception:  # not every backend reports it
        return -1
