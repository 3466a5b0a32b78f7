"""A trained run loaded back from its workdir: its parts and verified train state
(:func:`restore_run`), and the same for notebooks with encode, decode, sample and bounds
(:func:`load_run`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from vae_jax.config.experiments import apply_eval_overrides
from vae_jax.config.saved import from_saved, say_added
from vae_jax.core import pixels, rng
from vae_jax.core.sharding import make_mesh
from vae_jax.core.train_step import TrainState
from vae_jax.data.images import as_uint8, check_image_shape
from vae_jax.errors import ConfigError
from vae_jax.evaluation import decoding, evaluators
from vae_jax.outputs.checkpoints import Checkpointer
from vae_jax.outputs.workdir import Workdir
from vae_jax.parts import Parts, build_parts, checkpoint_shapes


def restore_run(
    workdir: str | Path | Workdir,
    step: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    eval_overrides: Sequence[str] | Mapping[str, Any] = (),
) -> tuple[Parts, TrainState, dict]:
    """``(parts, state, meta)`` of the run in ``workdir``: its newest valid checkpoint, or
    ``step``, on ``mesh`` (default: this machine's devices), its config from ``config.json`` with
    ``eval_overrides`` (``eval.*`` keys only). Raises :class:`ConfigError` if there is none."""
    workdir = workdir if isinstance(workdir, Workdir) else Workdir(Path(workdir))
    if not workdir.path.is_dir():
        raise ConfigError(f"there is no run at {workdir.path}: train one there first (make train)")
    saved = workdir.saved_config()
    if saved is None:
        raise ConfigError(f"{workdir.path} holds no vae_jax run (no config.json)")
    config, added = from_saved(saved, str(workdir.config_path))
    say_added(added, str(workdir.config_path))
    config = apply_eval_overrides(config, eval_overrides)
    if not workdir.checkpoints.is_dir():
        raise ConfigError(f"{workdir.path} has no checkpoint yet")
    mesh = mesh or make_mesh()

    def shapes(meta: dict) -> dict:
        return checkpoint_shapes(build_parts(config, tuple(meta["image_shape"]), mesh))

    checkpointer = Checkpointer(workdir.checkpoints, config.checkpoint.max_to_keep, read_only=True)
    try:
        if step is not None and step not in checkpointer.steps():
            steps = ", ".join(map(str, checkpointer.steps())) or "none"
            raise ConfigError(
                f"{workdir.path} has no checkpoint at step {step}; steps there: {steps}"
            )
        restored = (
            checkpointer.restore_latest_valid(shapes)
            if step is None
            else checkpointer.restore(step, shapes)
        )
    finally:
        checkpointer.close()
    if restored is None:
        raise ConfigError(f"{workdir.path} has no checkpoint yet")
    parts = build_parts(config, tuple(restored.meta["image_shape"]), mesh)
    return parts, restored.state["train_state"], restored.meta


class TrainedRun:
    """A trained run, for notebooks: ``run = vae_jax.load_run("runs/mnist_z20")``.

    Images may be uint8 (0..255, or 0/1) or floats in [0, 1], shaped ``[N, H, W, C]`` or
    ``[N, H, W]``; they are processed in batches of ``eval.batch_size``. Every result is a numpy
    array; bounds are in nats per image. A model of several latent layers (a hierarchy) lists
    them top first; ``decode`` takes the top layer's latents.
    """

    def __init__(self, parts: Parts, state: TrainState, meta: dict):
        self.parts, self.config, self.meta = parts, parts.config, meta
        self.params = state.params
        self.step = int(meta["step"])
        self.image_shape = parts.image_shape
        self.latent_shapes = [layer.shape for layer in parts.evaluation.layers]  # top first
        self._root = state.root
        self._posteriors = decoding.posteriors(parts.model)
        self._decode = decoding.decoder_means(parts.model)
        self._reconstruct = decoding.reconstructions(parts.model)

    def _images(self, images) -> np.ndarray:
        images = as_uint8(images, "images")
        check_image_shape(images.shape[1:], self.image_shape, "this run")
        return images

    def _batched(self, fn, array: np.ndarray) -> list:
        size = self.config.eval.batch_size
        return [fn(self.params, array[i : i + size]) for i in range(0, len(array), size)]

    def encode(self, images) -> tuple[np.ndarray, np.ndarray] | list[tuple[np.ndarray, ...]]:
        """q(z|x): its mean and stddev (the q sampled: ``noise_scale`` included). For a
        hierarchy, a (mean, stddev) pair per layer, top first, along the noise-free path (the
        layers above at their means). After a flow posterior (``model.posterior=iaf``) q is no
        Gaussian: the mean is the flow of the Gaussian's mean (the noise-free z the decoder
        sees) and the stddev the Gaussian's before the flow."""
        chunks = self._batched(self._posteriors, pixels.to_float(self._images(images)))
        s = self.config.model.noise_scale
        layers = [
            (
                np.concatenate([np.asarray(c[i].mean) for c in chunks]),
                s * np.exp(0.5 * np.concatenate([np.asarray(c[i].logvar) for c in chunks])),
            )
            for i in range(len(self.latent_shapes))
        ]
        return layers[0] if len(layers) == 1 else layers

    def decode(self, z) -> np.ndarray:
        """Pixel means of p(x | z) for top-layer latents ``z`` (floats in [0, 1], ``[N, H, W,
        C]``); a hierarchy's lower layers at their prior means."""
        z = np.asarray(z, np.float32).reshape(-1, *self.latent_shapes[0])
        return np.concatenate([np.asarray(x) for x in self._batched(self._decode, z)])

    def reconstruct(self, images) -> np.ndarray:
        """Decodings of the noise-free posterior (every layer at its mean)."""
        images = self._images(images)
        return np.concatenate([np.asarray(x) for x in self._batched(self._reconstruct, images)])

    def sample(self, key: jax.Array | int, n: int) -> np.ndarray:
        """``n`` images decoded from latents drawn from the model's own prior (a learned one,
        or a hierarchy top-down)."""
        key = jax.random.key(key) if isinstance(key, int) else key
        return np.asarray(decoding.prior_samples(self.parts.model, n)(self.params, key))

    def elbo(self, images, key: jax.Array | None = None) -> np.ndarray:
        """Each image's ELBO, a lower bound on log p(x) in nats (``eval.num_samples`` posterior
        samples). Without ``key``, the run's own test noise: on the run's test images, the mean
        is minus the ``test_neg_elbo_nats`` it logged."""
        key = rng.stream(self._root, rng.Stream.EVAL) if key is None else key
        evaluate = evaluators.make_test_evaluator(self.parts, self._images(images), key)
        return -evaluate(self.params, per_image=True)[0]

    def iwae(self, images, key: jax.Array | None = None, k: int | None = None) -> np.ndarray:
        """Each image's IWAE bound on log p(x) in nats with ``k`` samples (default
        ``eval.iwae_k``); without ``key``, the run's own evaluation noise."""
        key = rng.stream(self._root, rng.Stream.IWAE) if key is None else key
        return evaluators.iwae_bound(self.parts, self.params, self._images(images), key, k).bounds


def load_run(workdir: str | Path, step: int | None = None) -> TrainedRun:
    """The run in ``workdir`` at its newest valid checkpoint (or ``step``), on this machine's
    devices (a run trained on a GPU loads on a CPU)."""
    return TrainedRun(*restore_run(workdir, step))
