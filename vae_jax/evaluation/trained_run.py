"""A trained run loaded back from its workdir: its config, model and verified train state
(:func:`restore_run`), and the same for notebooks with encode, decode, sample and bounds
(:func:`load_run`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from vae_jax import parallel
from vae_jax.config.saved import from_saved, say_added
from vae_jax.core import objectives, pixels, rng, train_step
from vae_jax.core.models import VAE, make_model
from vae_jax.core.settings import values
from vae_jax.core.train_step import TrainState, checkpoint_like, make_optimizer
from vae_jax.data.images import as_uint8
from vae_jax.errors import ConfigError, DataError
from vae_jax.evaluation import evaluators
from vae_jax.outputs.checkpoints import Checkpointer
from vae_jax.outputs.workdir import Workdir


def optimizer_for(config: ml_collections.ConfigDict, train_size: int | None = None):
    """The run's optimizer, its schedule spread over the run's steps on ``train_size`` training
    images (``None``: for the checkpoint's shapes only, any length will do)."""
    t = config.train
    steps = 1 if train_size is None else train_size // t.batch_size * t.num_epochs
    return make_optimizer(steps, **values(config, train_step.SETTINGS))


def checkpoint_like_for(config: ml_collections.ConfigDict, mesh: Mesh) -> Callable[[dict], dict]:
    """``meta -> `` the pytree a checkpoint of this config holds, as shapes, dtypes and
    (replicated) shardings, for the image shape its ``meta`` records."""
    tx = optimizer_for(config)
    repl = parallel.replicated(mesh)

    def like(meta: dict) -> dict:
        shape = tuple(meta["image_shape"])
        return checkpoint_like(make_model(shape, **config.model), tx, shape, repl)

    return like


def restore_run(
    workdir: str | Path, step: int | None = None, mesh: Mesh | None = None
) -> tuple[ml_collections.ConfigDict, VAE, TrainState, dict]:
    """``(config, model, state, meta)`` of the run in ``workdir``: its newest valid checkpoint,
    or ``step``. Raises :class:`ConfigError` if there is none."""
    run = Workdir(Path(workdir))
    if not run.path.is_dir():
        raise ConfigError(f"there is no run at {run.path}: train one there first (make train)")
    saved = run.saved_config()
    if saved is None:
        raise ConfigError(f"{run.path} holds no vae_jax run (no config.json)")
    config, added = from_saved(saved, str(run.config_path))
    say_added(added, str(run.config_path))
    if not run.checkpoints.is_dir():
        raise ConfigError(f"{run.path} has no checkpoint yet")
    like = checkpoint_like_for(config, mesh or parallel.make_mesh())
    checkpointer = Checkpointer(run.checkpoints, config.checkpoint.max_to_keep, read_only=True)
    try:
        if step is not None and step not in checkpointer.steps():
            steps = ", ".join(map(str, checkpointer.steps())) or "none"
            raise ConfigError(f"{run.path} has no checkpoint at step {step}; steps there: {steps}")
        restored = (
            checkpointer.restore_latest_valid(like)
            if step is None
            else checkpointer.restore(step, like)
        )
    finally:
        checkpointer.close()
    if restored is None:
        raise ConfigError(f"{run.path} has no checkpoint yet")
    model = make_model(tuple(restored.meta["image_shape"]), **config.model)
    return config, model, restored.state["train_state"], restored.meta


class TrainedRun:
    """A trained run, for notebooks: ``run = vae_jax.load_run("runs/mnist_z20")``.

    Images may be uint8 (0..255, or 0/1) or floats in [0, 1], shaped ``[N, H, W, C]`` or
    ``[N, H, W]``; they are processed in batches of ``eval.batch_size``. Every result is a numpy
    array; bounds are in nats per image.
    """

    def __init__(self, config, model: VAE, state: TrainState, meta: dict, mesh: Mesh):
        self.config, self.model, self.meta, self.mesh = config, model, meta, mesh
        self.params = state.params
        self.step = int(meta["step"])
        self.image_shape = tuple(meta["image_shape"])
        self._root = state.root
        m = config.model
        self._objective = {
            "log_lik": objectives.log_likelihood(m.likelihood, m.obs_stddev),
            "noise_scale": m.noise_scale,
        }
        self._encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=VAE.encode))
        self._decode = evaluators.decoder_means(model)

    def _images(self, images) -> np.ndarray:
        images = as_uint8(images, "images")
        if images.shape[1:] != self.image_shape:
            raise DataError(f"images are {images.shape[1:]}; this run takes {self.image_shape}")
        return images

    def _batched(self, fn, array: np.ndarray) -> list:
        size = self.config.eval.batch_size
        return [fn(self.params, array[i : i + size]) for i in range(0, len(array), size)]

    def encode(self, images) -> tuple[np.ndarray, np.ndarray]:
        """The mean and the stddev of q(z|x) (the one sampled: ``noise_scale`` included)."""
        parts = self._batched(self._encode, pixels.to_float(self._images(images)))
        mean = np.concatenate([np.asarray(m) for m, _ in parts])
        logvar = np.concatenate([np.asarray(v) for _, v in parts])
        return mean, self.config.model.noise_scale * np.exp(0.5 * logvar)

    def decode(self, z) -> np.ndarray:
        """Pixel means of p(x|z), floats in [0, 1], ``[N, H, W, C]``."""
        z = np.asarray(z, np.float32).reshape(-1, self.config.model.latent_dim)
        return np.concatenate([np.asarray(x) for x in self._batched(self._decode, z)])

    def reconstruct(self, images) -> np.ndarray:
        """Decodings of the posterior means (no noise)."""
        return self.decode(self.encode(images)[0])

    def sample(self, key: jax.Array | int, n: int) -> np.ndarray:
        """``n`` images decoded from z ~ N(0, I)."""
        key = jax.random.key(key) if isinstance(key, int) else key
        return self.decode(jax.random.normal(key, (n, self.config.model.latent_dim)))

    def elbo(self, images, key: jax.Array | None = None) -> np.ndarray:
        """Each image's ELBO, a lower bound on log p(x) in nats (``eval.num_samples`` posterior
        samples). Without ``key``, the run's own test noise: on the run's test images, the mean
        is minus the ``test_neg_elbo_nats`` it logged."""
        key = rng.stream(self._root, rng.Stream.EVAL) if key is None else key
        neg = evaluators.elbo_per_image(
            self.model,
            self.params,
            self._images(images),
            self.mesh,
            key,
            **self._objective,
            batch_size=self.config.eval.batch_size,
            num_samples=self.config.eval.num_samples,
        )
        return -neg[0]

    def iwae(self, images, key: jax.Array | None = None, k: int | None = None) -> np.ndarray:
        """Each image's IWAE bound on log p(x) in nats with ``k`` samples (default
        ``eval.iwae_k``); without ``key``, the run's own evaluation noise."""
        result = evaluators.iwae_bound(
            self.model,
            self.params,
            self._images(images),
            self.mesh,
            rng.stream(self._root, rng.Stream.IWAE) if key is None else key,
            **self._objective,
            latent_dim=self.config.model.latent_dim,
            k=k or self.config.eval.iwae_k,
            pairs_per_call=self.config.eval.iwae_pairs_per_call,
        )
        return result.bounds


def load_run(workdir: str | Path, step: int | None = None) -> TrainedRun:
    """The run in ``workdir`` at its newest valid checkpoint (or ``step``), on this machine's
    devices (a run trained on a GPU loads on a CPU)."""
    mesh = parallel.make_mesh()
    config, model, state, meta = restore_run(workdir, step, mesh)
    return TrainedRun(config, model, state, meta, mesh)
