"""A run's parts, built from its config in one place (:func:`build_parts`): the model, the
optimizer and its schedule, the training loss, the evaluators' settings, the train state's
initialization and the shapes a checkpoint holds. Training, evaluation, a run loaded back
(:func:`vae_jax.load_run`), the bench and sweeps all take their parts from here; below this
line nothing reads the config.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from vae_jax.core import objectives, train_step
from vae_jax.core.latents import zero_noise
from vae_jax.core.models import init_params, make_model
from vae_jax.core.settings import values
from vae_jax.core.sharding import check_divisible, replicated
from vae_jax.core.train_step import TrainState
from vae_jax.errors import ConfigError


class LatentLayer(NamedTuple):
    """One stochastic layer of a model, as its passes show it (top first)."""

    shape: tuple[int, ...]  # of one image's latent
    closed_form: bool  # its KL(q || p) has a closed form

    @property
    def size(self) -> int:
        return math.prod(self.shape)


class EvalSettings(NamedTuple):
    """What every evaluator takes besides the parameters and the images."""

    log_lik: objectives.LogLikelihood
    noise_scale: float  # the bounds use the q actually sampled (noise_scale included)
    layers: tuple[LatentLayer, ...]
    batch_size: int  # test images per chunk
    num_samples: int  # posterior samples per image of the test -ELBO
    iwae_k: int
    iwae_test_size: int  # the IWAE bound on the first N test images (0: all)
    iwae_pairs_per_call: int


class Parts(NamedTuple):
    config: ml_collections.ConfigDict  # validated
    image_shape: tuple[int, ...]
    model: nn.Module  # the interface of vae_jax.core.latents
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
    back for evaluation does not need. A model that cannot take the images, or a batch that
    does not divide over the mesh's devices, is a :class:`ConfigError`."""
    check_batches(config, mesh, training=train_size is not None)
    try:
        model = make_model(image_shape, **config.model)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    layers = latent_layers(model, image_shape)
    check_combination(config, model, layers, tuple(image_shape))
    steps_per_epoch = (train_size or 0) // config.train.batch_size
    total_steps = steps_per_epoch * config.train.num_epochs or 1
    tx = train_step.make_optimizer(total_steps, **values(config, train_step.SETTINGS))
    loss_fn = objectives.make_loss(model, **values(config, objectives.SETTINGS))
    e, m = config.eval, config.model
    evaluation = EvalSettings(
        objectives.log_likelihood(m.likelihood, m.obs_stddev),
        m.noise_scale,
        layers,
        e.batch_size,
        e.num_samples,
        e.iwae_k,
        e.iwae_test_size,
        e.iwae_pairs_per_call,
    )
    return Parts(config, tuple(image_shape), model, tx, loss_fn, steps_per_epoch, evaluation, mesh)


def check_batches(config: ml_collections.ConfigDict, mesh: Mesh, training: bool) -> None:
    """Refuse an eval batch (and, for ``training``, a train batch) that does not divide over
    the mesh's devices."""
    try:
        check_divisible(config.eval.batch_size, mesh, "eval.batch_size")
        if training:
            check_divisible(config.train.batch_size, mesh, "train.batch_size")
    except ValueError as e:
        raise ConfigError(str(e)) from None


def full_weight_loss(parts: Parts) -> objectives.Loss:
    """The run's training loss with every KL at its full weight from the first step (no
    warm-up, no free bits): what the check of the parameters the loss reaches differentiates,
    so that a KL weighted 0 at the start does not hide a learned prior."""
    settings = values(parts.config, objectives.SETTINGS)
    return objectives.make_loss(parts.model, **{**settings, "kl_warmup_steps": 0, "free_bits": 0.0})


def latent_layers(model: nn.Module, image_shape: tuple[int, ...]) -> tuple[LatentLayer, ...]:
    """The model's stochastic layers, read off a pass traced at shapes only (no compute)."""

    def one_pass():
        x = jnp.zeros((1, *image_shape), jnp.float32)
        params = init_params(model, jax.random.key(0), image_shape)
        return objectives.run_model(model, params, x, zero_noise, 1.0)

    traced = jax.eval_shape(one_pass)
    return tuple(
        LatentLayer(tuple(layer.z.shape[1:]), layer.q is not None and layer.p is not None)
        for layer in traced.layers
    )


def check_combination(
    config: ml_collections.ConfigDict,
    model: nn.Module,
    layers: tuple[LatentLayer, ...],
    image_shape: tuple[int, ...],
) -> None:
    """Refuse, before training, objectives the model cannot serve and settings the chosen
    objective would ignore."""
    m, o = config.model, config.objective
    what = f"model.arch={m.arch!r}, model.prior={m.prior!r}, model.posterior={m.posterior!r}"
    open_layers = [i for i, layer in enumerate(layers) if not layer.closed_form]
    _check_objective_keys(o)
    if o.kl == "analytic" and open_layers:
        raise ConfigError(
            f"objective.kl='analytic' needs a closed-form KL in every latent layer; with {what} "
            f"layer {open_layers[0]} (top first) has none (a learned prior, a flow, or a prior "
            "that hangs on a later draw). Use objective.kl=auto (closed form where it exists) "
            "or objective.kl=sample"
        )
    if o.name == "iwae" and o.dreg:
        _check_dreg(m, model, image_shape)


def _check_objective_keys(o: ml_collections.ConfigDict) -> None:
    """Refuse a key the chosen objective ignores (set away from its default)."""
    if o.name == "iwae":
        ignored = {"beta": o.beta != 1.0, "kl_warmup_steps": o.kl_warmup_steps,
                   "free_bits": o.free_bits, "kl": o.kl != "auto"}  # fmt: skip
        valid = "beta 1, kl_warmup_steps 0, free_bits 0, kl auto"
        why = "objective.name='iwae' trains the k-sample bound, which has no KL term to weigh"
    else:
        ignored = {"k": o.k != 1, "dreg": o.dreg}
        valid = "k 1, dreg false"
        why = f"objective.name={o.name!r} trains the one-sample bound"
    if any(ignored.values()):
        keys = ", ".join(f"objective.{k}" for k, v in ignored.items() if v)
        other = "elbo" if o.name == "iwae" else "iwae"
        raise ConfigError(
            f"{why}: {keys} apply to objective.name={other} only. Leave them at their defaults "
            f"({valid}) or use objective.name={other}"
        )


def _check_dreg(
    m: ml_collections.ConfigDict, model: nn.Module, image_shape: tuple[int, ...]
) -> None:
    """DReG holds q's parameters apart and needs log q at given latents: refuse a flow (log q
    only at its own samples), a model whose q shares parameters with p, and a prior whose
    log p(z) reaches q's parameters (a VampPrior runs the encoder)."""
    if getattr(model, "flow", None) is not None:
        reason = f"model.posterior={m.posterior!r} gives no density at a given z"
        fix = "model.posterior=gaussian"
    elif getattr(model, "q_params", None) is None:
        reason = f"model.arch={m.arch!r} shares q's parameters with p's"
        fix = "an architecture whose q has parameters of its own (conv, mlp, resnet, two_layer)"
    elif reached := prior_reaches_q(model, image_shape):
        reason = f"log p(z) of model.prior={m.prior!r} reaches q's parameters ({reached})"
        fix = "a prior of its own parameters (model.prior=standard or mog)"
    else:
        return
    raise ConfigError(
        f"objective.dreg=true needs log q(z|x) at given latents with q's parameters apart: "
        f"{reason}. Use objective.dreg=false (the IWAE gradient) or {fix}"
    )


def prior_reaches_q(model: nn.Module, image_shape: tuple[int, ...]) -> str:
    """The submodules of ``model.q_params`` that the prior's log p(z) depends on (comma
    separated; empty: none): every layer's log p differentiated at fixed latents, for one
    all-zero image and the initial parameters moved a little (:func:`moved_off_init`)."""

    def gradients() -> dict:
        x = jnp.zeros((1, *image_shape), jnp.float32)
        params = moved_off_init(init_params(model, jax.random.key(0), image_shape))
        first = objectives.run_model(model, params, x, zero_noise, 1.0)
        zs = tuple(jax.lax.stop_gradient(layer.z) for layer in first.layers)

        def log_p(params: dict) -> jax.Array:
            passed = objectives.run_model(model, params, x, None, 1.0, given=zs)
            return sum(jnp.sum(layer.log_p) for layer in passed.layers)

        return jax.grad(log_p)(params)

    grads = jax.jit(gradients)()
    reached = [
        name
        for name in model.q_params
        if any(bool(jnp.any(g != 0)) for g in jax.tree.leaves(grads.get(name, {})))
    ]
    return ", ".join(reached)


def moved_off_init(params: dict) -> dict:
    """``params`` each moved by 1e-3 N(0, 1) noise (key 0): where a gradient is tested for
    zeros, so that a block initialized to the identity or to zero, whose inner weights get no
    gradient at exactly their initial values, is not taken for unreached."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(0), len(leaves))
    moved = [
        x + 1e-3 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree.unflatten(tree, moved)


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
