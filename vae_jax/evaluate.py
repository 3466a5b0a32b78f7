"""Test-set evaluation: the negative ELBO of the distribution actually sampled, in nats/image.

The test set lives on the devices in fixed chunks; chunk i draws its posterior samples with
``fold_in(EVAL stream, i)``, so every epoch (and every re-evaluation) sees the same noise and
test numbers are comparable across epochs.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from vae_jax import objectives, parallel, rng
from vae_jax.data import to_float
from vae_jax.models import VAE

EVAL_METRICS = ("neg_elbo", "recon", "kl")


def chunk_size(n: int, batch_size: int, n_devices: int) -> int:
    """The eval batch: ``batch_size``, or less for a small test set, a multiple of devices."""
    return min(batch_size, -(-n // n_devices) * n_devices)


def make_test_evaluator(
    model: VAE,
    config: ml_collections.ConfigDict,
    images: np.ndarray,
    mesh: Mesh,
    root: jax.Array,
) -> Callable[[dict], dict[str, float]]:
    """A function ``params -> {'neg_elbo': .., 'recon': .., 'kl': ..}`` (means over ``images``).

    Each image's terms are averaged over ``config.eval.num_samples`` posterior samples. The
    test images are padded to whole chunks; padded rows are masked out.
    """
    n = len(images)
    size = chunk_size(n, config.eval.batch_size, mesh.devices.size)
    n_chunks = -(-n // size)
    padded = np.zeros((n_chunks * size, *images.shape[1:]), images.dtype)
    padded[:n] = images
    mask = (np.arange(n_chunks * size) < n).astype(np.float32)
    batch = parallel.batch_sharding(mesh)
    chunks = [
        (
            jax.device_put(padded[i * size : (i + 1) * size], batch),
            jax.device_put(mask[i * size : (i + 1) * size], batch),
        )
        for i in range(n_chunks)
    ]
    eval_root = rng.stream(root, rng.Stream.EVAL)
    keys = [jax.random.fold_in(eval_root, i) for i in range(n_chunks)]
    num_samples = config.eval.num_samples

    @jax.jit
    def chunk_sums(params, images_u8, mask, key):
        x = to_float(images_u8)

        def one(k):
            t = objectives.elbo_terms(model, params, x, k, config.model)
            return jnp.stack([t.recon + t.kl, t.recon, t.kl])

        per_image = jnp.mean(jax.vmap(one)(jax.random.split(key, num_samples)), axis=0)
        return jnp.sum(per_image * mask, axis=-1)

    def evaluate(params: dict) -> dict[str, float]:
        total = sum(chunk_sums(params, x, m, k) for (x, m), k in zip(chunks, keys, strict=True))
        return dict(zip(EVAL_METRICS, (np.asarray(total) / n).tolist(), strict=True))

    return evaluate
