"""The functional core of training: the state, its initialization, and the pure train step.

The whole training set lives on the devices (uint8, replicated); each epoch's order is a
permutation drawn from ``fold_in(DATA_ORDER, epoch)``, and the step slices its batch out of it
by ``state.step``; its noise comes from ``fold_in(TRAIN, step)``. Data order and noise are thus
functions of (seed, step) alone, which is what makes a resumed run bit-exact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from vae_jax import data as data_lib
from vae_jax import parallel
from vae_jax.core import objectives, rng
from vae_jax.core.models import VAE, init_params, make_model

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


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    return optax.adam(config.train.learning_rate)


def init_state(
    config: ml_collections.ConfigDict,
    model: VAE,
    tx: optax.GradientTransformation,
    image_shape: tuple[int, ...],
) -> TrainState:
    root = rng.root_key(config.seed)
    params = init_params(model, rng.stream(root, rng.Stream.INIT), image_shape)
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.key_data(root))


def abstract_state(
    config: ml_collections.ConfigDict, image_shape: tuple[int, ...], mesh: Mesh
) -> TrainState:
    """Shapes, dtypes and (replicated) shardings of the train state, without computing it."""
    model = make_model(config.model, image_shape)
    shapes = jax.eval_shape(lambda: init_state(config, model, make_optimizer(config), image_shape))
    return replicated_like(shapes, mesh)


def replicated_like(tree: Any, mesh: Mesh) -> Any:
    repl = parallel.replicated(mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl), tree)


def epoch_permutation(root: jax.Array, epoch: jax.Array, n: int) -> jax.Array:
    """The order of the training set in (0-based) ``epoch``."""
    return jax.random.permutation(
        jax.random.fold_in(rng.stream(root, rng.Stream.DATA_ORDER), epoch), n
    )


def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def make_train_step(
    model: VAE,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    steps_per_epoch: int,
    mesh: Mesh,
) -> Callable[[TrainState, EpochSums, jax.Array, jax.Array], tuple[TrainState, EpochSums]]:
    """``(state, sums, images, perm[, noise_scale]) -> (state, sums)``, pure.

    ``images``: the uint8 training set; ``perm``: this epoch's permutation of it. The step's
    batch is ``images[perm[i*B:(i+1)*B]]`` with ``i = state.step % steps_per_epoch``, sharded
    over the devices. Noise (and dynamic binarization) use ``fold_in(TRAIN, state.step)``.
    ``noise_scale`` (traced) replaces ``config.model.noise_scale`` when given: the sweep
    vmaps this step over models that differ in it.

    NaN guard: if the loss or any gradient is not finite, the update is not applied, the step is
    recorded in ``sums.first_bad``, and no later step changes the parameters either, so the
    loop can stop with the state as it was before the bad step.
    """
    batch_size = config.train.batch_size
    dynamic = config.data.binarize == "dynamic"
    batch = parallel.batch_sharding(mesh)

    def step(
        state: TrainState,
        sums: EpochSums,
        images: jax.Array,
        perm: jax.Array,
        noise_scale: jax.Array | None = None,
    ):
        offset = (state.step % steps_per_epoch) * batch_size
        idx = jax.lax.with_sharding_constraint(
            jax.lax.dynamic_slice_in_dim(perm, offset, batch_size), batch
        )
        x = data_lib.to_float(images[idx])
        key = jax.random.fold_in(rng.stream(state.root, rng.Stream.TRAIN), state.step)
        noise_key, binarize_key = jax.random.split(key)
        if dynamic:
            x = data_lib.dynamic_binarize(binarize_key, x)

        def loss_fn(params):
            return objectives.training_loss(model, params, x, noise_key, config.model, noise_scale)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
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
