"""A run's parts, built from its config in one place (:func:`build_parts`): the model, the
optimizer and its schedule, the training loss, the evaluators' settings, the train state's
initialization and the shapes a checkpoint holds. Training, evaluation, a run loaded back
(:func:`vae_jax.load_run`), the bench and sweeps all take their parts from here; below this
line nothing reads the config.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import ml_collections
import optax
from jax.sharding import Mesh

from vae_jax.core import objectives, train_step
from vae_jax.core.models import VAE, make_model
from vae_jax.core.settings import values
from vae_jax.core.sharding import replicated
from vae_jax.core.train_step import TrainState
from vae_jax.errors import ConfigError


class EvalSettings(NamedTuple):
    """What every evaluator takes besides the parameters and the images."""

    log_lik: objectives.LogLikelihood
    noise_scale: float  # the bounds use q = N(mean, (noise_scale * stddev)^2), the one sampled
    latent_dim: int
    batch_size: int  # test images per chunk
    num_samples: int  # posterior samples per image of the test -ELBO
    iwae_k: int
    iwae_test_size: int  # the IWAE bound on the first N test images (0: all)
    iwae_pairs_per_call: int


class Parts(NamedTuple):
    config: ml_collections.ConfigDict  # validated
    image_shape: tuple[int, ...]
    model: VAE
    tx: optax.GradientTransformation
    loss_fn: objectives.Loss
    steps_per_epoch: int  # 0 where the training set is not known (a run loaded back)
    evaluation: EvalSettings
    mesh: Mesh


def build_parts(
    config: ml_collections.ConfigDict,
    image_shape: tuple[int, ...],
    mesh: Mesh,
    train_size: int | None = None,
) -> Parts:
    """The parts of a run of ``config`` on images of ``image_shape``; ``train_size`` (the
    number of training images) sets the learning-rate schedule's length, which a run loaded
    back for evaluation does not need. A model that cannot take the images is a
    :class:`ConfigError`."""
    try:
        model = make_model(image_shape, **config.model)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    steps_per_epoch = (train_size or 0) // config.train.batch_size
    total_steps = steps_per_epoch * config.train.num_epochs or 1
    tx = train_step.make_optimizer(total_steps, **values(config, train_step.SETTINGS))
    loss_fn = objectives.make_loss(model, **values(config, objectives.SETTINGS))
    e, m = config.eval, config.model
    evaluation = EvalSettings(
        objectives.log_likelihood(m.likelihood, m.obs_stddev),
        m.noise_scale,
        m.latent_dim,
        e.batch_size,
        e.num_samples,
        e.iwae_k,
        e.iwae_test_size,
        e.iwae_pairs_per_call,
    )
    return Parts(config, tuple(image_shape), model, tx, loss_fn, steps_per_epoch, evaluation, mesh)


def init_state(parts: Parts, seed: int) -> TrainState:
    """A fresh train state (parameters from ``seed``), replicated on the devices."""
    return jax.jit(
        lambda: train_step.init_state(seed, parts.model, parts.tx, parts.image_shape),
        out_shardings=replicated(parts.mesh),
    )()


def checkpoint_shapes(parts: Parts) -> dict:
    """The pytree a checkpoint of this run holds, as shapes, dtypes and replicated shardings."""
    return train_step.checkpoint_like(
        parts.model, parts.tx, parts.image_shape, replicated(parts.mesh)
    )
