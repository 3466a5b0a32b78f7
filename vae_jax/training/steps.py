"""The train step compiled once for the devices, and the steps run between two host syncs.

:func:`compile_step` compiles :func:`vae_jax.core.train_step.make_train_step` ahead of time for
one run, or for several trained together (vmapped over their states, sums and noise scales),
and, with ``train.steps_per_call`` > 1, that many steps unrolled into one call as well;
:func:`run_steps` runs them from a step to the epoch's end or a pause, under
``jax.transfer_guard("disallow")``, reading the running loss one log point late so that it
never waits for the devices.

Why several steps a call: XLA:CPU allocates a call's temporary buffers (76 MB for the ResNet
VAE's step) at each call and returns them to the system after it, so every call faults them
in again. Unrolled steps share one allocation; they compute exactly what the same steps called
one by one compute (tests/training/test_training.py). A ``lax.fori_loop`` over the step would
compile once, but XLA:CPU runs convolutions in a loop body ~50x slower.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from vae_jax.core.sharding import batch_sharding, replicated
from vae_jax.core.train_step import (
    TRAIN_METRICS,
    EpochSums,
    TrainState,
    epoch_permutation,
    make_gradient,
    make_train_step,
)
from vae_jax.outputs.workdir import is_writer
from vae_jax.parallel import compile_fast
from vae_jax.parts import Parts, full_weight_loss, moved_off_init


class CompiledStep(NamedTuple):
    """The train step of ``models`` runs compiled once for the devices, and the epoch order."""

    step: Callable  # (state, sums, images, perm) -> (state, sums)
    permute: Callable  # (state.rng, epoch) -> the epoch's permutation of the training set
    seconds: float  # spent compiling
    models: int
    steps: Callable | None = None  # as step, train.steps_per_call steps in one call (None: 1)


class Segment(NamedTuple):
    """What :func:`run_steps` did without a host sync: from a start to the epoch's end or a
    pause."""

    state: TrainState
    sums: EpochSums
    step: int  # global step reached
    steps: int  # steps run in this segment
    seconds: float
    losses: list[tuple[int, list[float]]]  # (step, each run's mean loss so far this epoch)


def join_runs(trees: list) -> Any:
    """One run's tree as it is; several runs' stacked along a new leading axis."""
    return trees[0] if len(trees) == 1 else jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def one_run(tree: Any, i: int, models: int) -> Any:
    """Run ``i``'s tree of :func:`_join`'s."""
    return tree if models == 1 else jax.tree.map(lambda x: x[i], tree)


def _batching(parts: Parts) -> dict:
    """How the step takes its batch (see :func:`vae_jax.core.train_step.make_train_step`)."""
    return {
        "batch_size": parts.config.train.batch_size,
        "steps_per_epoch": parts.steps_per_epoch,
        "dynamic_binarize": parts.config.data.binarize == "dynamic",
        "batch_sharding": batch_sharding(parts.mesh),
    }


def parameters_without_gradient(
    parts: Parts, state: TrainState, images: jax.Array, noise_scale: float
) -> list[str]:
    """The names of the parameters (``encoder/mean/kernel``, ...) the loss does not reach:
    their gradient on the first step's batch is zero everywhere, also with every parameter
    moved a little off its initial value (so that a block initialized to the identity, whose
    inner weights get no gradient at exactly zero, is not taken for unused), of the loss with
    every KL at full weight (:func:`~vae_jax.parts.full_weight_loss`)."""
    gradient = make_gradient(full_weight_loss(parts), **_batching(parts))

    def grads(state, images):
        state = state._replace(params=moved_off_init(state.params))
        perm = epoch_permutation(state.root, jnp.int32(0), len(images))
        return gradient(state, images, perm, noise_scale)[1]

    flat = jax.tree_util.tree_leaves_with_path(jax.device_get(jax.jit(grads)(state, images)))
    return ["/".join(str(getattr(k, "key", k)) for k in path)
            for path, g in flat if not np.any(g)]  # fmt: skip


def compile_step(
    parts: Parts, state: TrainState, sums: EpochSums, images: jax.Array, noise_scales: list[float]
) -> CompiledStep:
    """The train step of ``len(noise_scales)`` runs (vmapped over their states, sums and noise
    scales when several), compiled ahead of time for these arrays' shapes and shardings: a call
    with others fails loudly instead of silently recompiling."""
    models, repl, n = len(noise_scales), replicated(parts.mesh), len(images)
    train_step = make_train_step(parts.tx, parts.loss_fn, **_batching(parts))

    def permute(key_data, epoch):
        return epoch_permutation(jax.random.wrap_key_data(key_data), epoch, n)

    scales: float | jax.Array = noise_scales[0]
    if models > 1:
        train_step = jax.vmap(train_step, in_axes=(0, 0, None, 0, 0))
        permute = jax.vmap(permute, in_axes=(0, None))
        scales = jnp.asarray(noise_scales, jnp.float32)
    permute = jax.jit(permute, out_shardings=repl)

    def step(state, sums, images, perm):
        return train_step(state, sums, images, perm, scales)

    per_call = parts.config.train.steps_per_call

    def steps(state, sums, images, perm):  # per_call steps, unrolled
        for _ in range(per_call):
            state, sums = step(state, sums, images, perm)
        return state, sums

    start = time.perf_counter()
    state_sharding = jax.tree.map(lambda _: repl, state)
    sums_sharding = jax.tree.map(lambda _: repl, sums)
    perm = permute(state.rng, jnp.int32(0))

    def compiled(fn: Callable) -> Callable:
        return compile_fast(
            jax.jit(
                fn,
                in_shardings=(state_sharding, sums_sharding, repl, repl),
                out_shardings=(state_sharding, sums_sharding),
                donate_argnums=0,
            ).lower(state, sums, images, perm)
        )

    one, several = compiled(step), compiled(steps) if per_call > 1 else None
    return CompiledStep(one, permute, time.perf_counter() - start, models, several)


def run_steps(
    parts: Parts,
    compiled: CompiledStep,
    state: TrainState,
    sums: EpochSums,
    images: jax.Array,
    epoch: int,
    start: int,
    pause: Callable[[int], bool],
    until: int | None = None,
) -> Segment:
    """Run epoch ``epoch`` (1-based) from its step ``start`` to its end, or until
    ``pause(global_step)`` is true after a call, or a non-finite loss shows up, or (when given)
    global step ``until`` is reached. A call of several steps never passes a point at which the
    loop has to look (see :func:`call_size`)."""
    steps_per_epoch, t = parts.steps_per_epoch, parts.config.train
    perm = compiled.permute(state.rng, jnp.int32(epoch - 1))
    per_step = t.batch_size * compiled.models  # images/s counts every run's images
    bar = tqdm(total=steps_per_epoch * per_step, initial=start * per_step,
               desc=f"epoch {epoch}/{t.num_epochs}", unit="img", unit_scale=True, leave=False,
               disable=not is_writer(), mininterval=0.5)  # fmt: skip
    t0 = time.perf_counter()
    i, step = start, (epoch - 1) * steps_per_epoch + start
    logged = None  # (sums, i, step) at the previous log point, computed by now: read, no stall
    losses = []
    # Any implicit host<->device transfer in the loop is an error; the reads are explicit.
    with jax.transfer_guard("disallow"):
        while i < steps_per_epoch and (until is None or step < until):
            n = call_size(i, step, parts, until)
            call = compiled.step if n == 1 else compiled.steps
            state, sums = call(state, sums, images, perm)
            i, step = i + n, step + n
            if i % t.log_every_steps == 0 or i == steps_per_epoch:
                if logged is not None:
                    seen = jax.device_get(logged[0])
                    if np.any(seen.first_bad >= 0):
                        break
                    means = np.reshape(seen.metrics, (-1, len(TRAIN_METRICS)))[:, 0] / logged[1]
                    losses.append((logged[2], means.tolist()))
                    bar.set_postfix(loss="/".join(f"{v:.2f}" for v in means), refresh=False)
                bar.update(i * per_step - bar.n)
                logged = (sums, i, step)
            if pause(step):
                break
        jax.block_until_ready(sums)
    seconds = time.perf_counter() - t0
    bar.close()
    return Segment(state, sums, step, i - start, seconds, losses)


def call_size(i: int, step: int, parts: Parts, until: int | None) -> int:
    """``train.steps_per_call`` when that many steps from step ``i`` of the epoch (global
    ``step``) end before the next point the loop must stop at, else 1. Those points: the epoch's
    end, a log point, a save every ``checkpoint.every_steps``, a multi-process pause agreement
    (every ``train.log_every_steps`` global steps) and ``until``."""
    per_call, log_every = parts.config.train.steps_per_call, parts.config.train.log_every_steps
    save_every = parts.config.checkpoint.every_steps
    room = min(parts.steps_per_epoch - i, log_every - i % log_every, log_every - step % log_every)
    if save_every > 0:
        room = min(room, save_every - step % save_every)
    if until is not None:
        room = min(room, until - step)
    return per_call if room >= per_call else 1
