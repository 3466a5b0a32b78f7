"""The functional core of training: the state, its initialization, and the pure train step.

The whole training set lives on the devices (uint8, replicated); each epoch's order is a
permutation drawn from ``fold_in(DATA_ORDER, epoch)``, and the step slices its batch out of it
by ``state.step``; its noise comes from ``fold_in(TRAIN, step)``. Data order and noise are thus
functions of (seed, step) alone, which is what makes a resumed run bit-exact.

A checkpoint holds :func:`checkpoint_tree`: the :class:`TrainState` and the epoch's running
:class:`EpochSums`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Sharding

from vae_jax.core import objectives, pixels, rng
from vae_jax.core.models import init_params
from vae_jax.core.settings import NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, Setting, one_of

TRAIN_METRICS = ("loss", "recon", "kl")


class TrainState(NamedTuple):
    """Everything a step changes, plus the run's root key (constant, saved for provenance)."""

    step: jax.Array  # int32 []: steps taken so far
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32 key data of rng.root_key(seed)

    @property
    def root(self) -> jax.Array:
        return jax.random.wrap_key_data(self.rng)


class EpochSums(NamedTuple):
    """What the steps of an epoch accumulate (kept out of the donated state, so the loop can
    read an older value without waiting)."""

    metrics: jax.Array  # float32 [3]: sums of loss, recon, kl (nats/image) over the epoch
    first_bad: jax.Array  # int32 []: the first step with a non-finite loss or gradient, or -1


def zero_sums() -> EpochSums:
    return EpochSums(jnp.zeros(len(TRAIN_METRICS), jnp.float32), jnp.full((), -1, jnp.int32))


SCHEDULES = ("constant", "staircase", "cosine")
SETTINGS = {  # the optimizer's config keys; make_optimizer takes them by their last component
    "train.learning_rate": Setting(1e-3, POSITIVE, "Adam's (peak) learning rate"),
    "train.schedule": Setting(
        "constant",
        one_of(*SCHEDULES),
        "constant; staircase: Burda et al.'s 8 stages, stage i 3^i/3280 of the run at "
        "lr * 10^(-i/7); cosine: linear warm-up, then cosine decay to 0",
    ),
    "train.warmup_steps": Setting(0, NON_NEGATIVE_INT, "cosine: warm-up steps"),
    "train.adam_eps": Setting(1e-8, POSITIVE, "Adam's epsilon (Burda et al.: 1e-4)"),
    "train.grad_clip_norm": Setting(
        0.0, NON_NEGATIVE, "clip the gradient to this global norm (0: never)"
    ),
    "train.grad_skip_norm": Setting(
        0.0, NON_NEGATIVE, "skip an update whose gradient's global norm is above this (0: never)"
    ),
}
STAIRCASE_STAGES = 8


def learning_rate_schedule(
    total_steps: int, learning_rate: float, schedule: str, warmup_steps: int
) -> optax.Schedule:
    """The learning rate at each step of a run of ``total_steps`` steps. Its state is the step
    count inside Adam's state, so it survives a resume with the checkpoint."""
    if schedule == "staircase":  # Burda et al. 2016: 3^i passes at 1e-3 * 10^(-i/7)
        weights = [3**i for i in range(STAIRCASE_STAGES)]
        ends = [round(total_steps * sum(weights[: i + 1]) / sum(weights)) for i in range(7)]
        scales: dict[int, float] = {}  # stages shorter than a step: their drops add up
        for end in ends:
            scales[end] = scales.get(end, 1.0) * 10 ** (-1 / 7)
        return optax.piecewise_constant_schedule(learning_rate, scales)
    if schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, learning_rate, warmup_steps, max(total_steps, warmup_steps + 1)
        )
    return optax.constant_schedule(learning_rate)


def make_optimizer(
    total_steps: int,
    *,
    learning_rate: float,
    schedule: str,
    warmup_steps: int,
    adam_eps: float,
    grad_clip_norm: float,
    grad_skip_norm: float,
) -> optax.GradientTransformation:
    """Adam with the learning-rate schedule of :data:`SETTINGS` over ``total_steps``; a
    constant rate with the default epsilon is ``optax.adam(learning_rate)`` itself. The
    stabilizers of deep hierarchies (VDVAE): gradients clipped to ``grad_clip_norm``; updates
    whose gradient norm exceeds ``grad_skip_norm`` skipped (Adam's state untouched)."""
    if schedule == "constant" and adam_eps == 1e-8:
        tx = optax.adam(learning_rate)
    else:
        lr = learning_rate_schedule(total_steps, learning_rate, schedule, warmup_steps)
        tx = optax.adam(lr, eps=adam_eps)
    if grad_clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)
    if grad_skip_norm:
        skip = functools.partial(optax.skip_large_updates, max_squared_norm=grad_skip_norm**2)
        tx = optax.MultiSteps(tx, 1, should_skip_update_fn=skip)
    return tx


def init_state(
    seed: int, model: nn.Module, tx: optax.GradientTransformation, image_shape: Sequence[int]
) -> TrainState:
    root = rng.root_key(seed)
    params = init_params(model, rng.stream(root, rng.Stream.INIT), image_shape)
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.key_data(root))


def checkpoint_tree(state: TrainState, sums: EpochSums) -> dict:
    """The pytree a checkpoint holds."""
    return {"train_state": state, "epoch_sums": sums}


def checkpoint_like(
    model: nn.Module,
    tx: optax.GradientTransformation,
    image_shape: Sequence[int],
    sharding: Sharding,
) -> dict:
    """:func:`checkpoint_tree` as shapes, dtypes and ``sharding``, without computing it."""
    state = jax.eval_shape(lambda: init_state(0, model, tx, image_shape))
    tree = checkpoint_tree(state, jax.eval_shape(zero_sums))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), tree)


def epoch_permutation(root: jax.Array, epoch: jax.Array, n: int) -> jax.Array:
    """The order of the training set in (0-based) ``epoch``."""
    return jax.random.permutation(
        jax.random.fold_in(rng.stream(root, rng.Stream.DATA_ORDER), epoch), n
    )


def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def make_gradient(
    loss_fn: objectives.Loss,
    *,
    batch_size: int,
    steps_per_epoch: int,
    dynamic_binarize: bool,
    batch_sharding: Sharding,
) -> Callable[..., tuple[tuple[jax.Array, jax.Array], Any]]:
    """``(state, images, perm, noise_scale) -> ((loss, metrics), grads)`` of the batch of step
    ``state.step`` (see :func:`make_train_step`)."""

    def gradient(state: TrainState, images, perm, noise_scale):
        offset = (state.step % steps_per_epoch) * batch_size
        idx = jax.lax.with_sharding_constraint(
            jax.lax.dynamic_slice_in_dim(perm, offset, batch_size), batch_sharding
        )
        x = pixels.to_float(images[idx])
        key = jax.random.fold_in(rng.stream(state.root, rng.Stream.TRAIN), state.step)
        noise_key, binarize_key = jax.random.split(key)
        if dynamic_binarize:
            x = pixels.dynamic_binarize(binarize_key, x)

        def loss(params):
            return loss_fn(params, x, noise_key, state.step, noise_scale)

        return jax.value_and_grad(loss, has_aux=True)(state.params)

    return gradient


def make_train_step(
    tx: optax.GradientTransformation, loss_fn: objectives.Loss, **batching: Any
) -> Callable[..., tuple[TrainState, EpochSums]]:
    """``(state, sums, images, perm, noise_scale) -> (state, sums)``, pure; ``loss_fn`` is
    :func:`vae_jax.core.objectives.make_loss`'s; ``batching``: ``batch_size``,
    ``steps_per_epoch``, ``dynamic_binarize``, ``batch_sharding``.

    ``images``: the uint8 training set; ``perm``: this epoch's permutation of it. The step's
    batch is ``images[perm[i*B:(i+1)*B]]`` with ``i = state.step % steps_per_epoch``, placed by
    ``batch_sharding`` over the devices. Noise (and dynamic binarization) use
    ``fold_in(TRAIN, state.step)``. ``noise_scale`` may be traced: runs trained together map
    this step over their states and noise scales.

    NaN guard: if the loss or any gradient is not finite, the update is not applied, the step is
    recorded in ``sums.first_bad``, and no later step changes the parameters either, so the
    loop can stop with the state as it was before the bad step.
    """
    gradient = make_gradient(loss_fn, **batching)

    def step(state: TrainState, sums: EpochSums, images, perm, noise_scale):
        (loss, metrics), grads = gradient(state, images, perm, noise_scale)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)

        finite = jnp.isfinite(loss) & _all_finite(grads)
        ok = finite & (sums.first_bad < 0)

        def keep(new, old):
            return jnp.where(ok, new, old)

        new_state = TrainState(
            state.step + 1,
            jax.tree.map(keep, params, state.params),
            jax.tree.map(keep, opt_state, state.opt_state),
            state.rng,
        )
        first_bad = jnp.where(finite | (sums.first_bad >= 0), sums.first_bad, state.step)
        return new_state, EpochSums(sums.metrics + jnp.where(ok, metrics, 0.0), first_bad)

    return step
