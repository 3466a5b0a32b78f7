"""The epoch loop around the pure step of :mod:`vae_jax.core.train_step`.

:func:`train` trains one run, or several together (their step vmapped), to its last epoch:
compile the step once, then run steps until the epoch ends or a pause is due (a save, a stop),
end the epoch (test -ELBO, figures, the record), save, write. The step runs under
``jax.transfer_guard("disallow")``; the loop syncs with the host once per epoch and whenever it
saves. A checkpoint is saved after every epoch, every ``checkpoint.every_steps`` steps and
``every_seconds`` seconds (when set), and when SIGTERM/SIGINT asks the run to stop; each holds
the step, so a run resumes from any of them exactly where it stopped (README, "Interrupted
runs").
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from vae_jax.core.settings import flatten
from vae_jax.core.sharding import replicated
from vae_jax.core.train_step import (
    TRAIN_METRICS,
    EpochSums,
    TrainState,
    checkpoint_tree,
    epoch_permutation,
    zero_sums,
)
from vae_jax.data.images import Dataset
from vae_jax.errors import NonFiniteError, TrainingInterrupted
from vae_jax.evaluation.epoch_end import make_epoch_end
from vae_jax.outputs.checkpoints import Checkpointer, Restored
from vae_jax.outputs.metrics import MetricsWriter, cpu_cores
from vae_jax.outputs.workdir import Workdir, is_writer
from vae_jax.parts import Parts, init_state
from vae_jax.training.steps import (
    Segment,
    compile_step,
    join_runs,
    one_run,
    parameters_without_gradient,
    run_steps,
)
from vae_jax.training.stopping import Pause, StopRequest


class Member(NamedTuple):
    """One run of those the loop trains together (usually the only one)."""

    config: ml_collections.ConfigDict
    workdir: Workdir
    name: str
    checkpointer: Checkpointer
    restored: Restored | None


def train(
    parts: list[Parts], members: list[Member], data: Dataset
) -> list[tuple[TrainState, list[dict]]]:
    """Train every member (``parts[i]`` are member i's) to ``train.num_epochs``, in lockstep
    from the same step; their configs differ at most in ``seed`` and ``model.noise_scale``.
    Returns each member's final state and history: one record per epoch, losses in nats per
    image."""
    shared, models = parts[0], len(members)
    config, steps_per_epoch = shared.config, shared.steps_per_epoch
    state, sums, histories = _start(shared, members)
    restored = members[0].restored
    step, saved_step = (restored.step, restored.step) if restored else (0, None)
    images = jax.device_put(data.train_images, replicated(shared.mesh))
    zeros = jax.device_put(join_runs([zero_sums()] * models), replicated(shared.mesh))
    scales = [p.evaluation.noise_scale for p in parts]
    if not restored:  # a fresh start: say which parameters no step would change
        _report_unused(shared, one_run(state, 0, models), images, scales[0])
    compiled = compile_step(shared, state, sums, images, scales)
    epoch_ends = [
        make_epoch_end(
            p, m.name, m.workdir.figures, data.test_images, one_run(state, i, models).root
        )
        for i, (p, m) in enumerate(zip(parts, members, strict=True))
    ]
    writers = [MetricsWriter(m.workdir.metrics, m.workdir.tensorboard) for m in members]
    for writer, history in zip(writers, histories, strict=True):
        writer.write(history)  # metrics.jsonl matches the checkpoint, after any crash
    _print_start(shared, members, data, step)
    clock = _epoch_time(compiled.seconds)
    with StopRequest() as stop:  # from here on, SIGTERM/SIGINT stop cleanly, with a checkpoint
        c = config.checkpoint
        pause = Pause(stop, c.every_steps, c.every_seconds, config.train.log_every_steps)
        while len(histories[0]) < config.train.num_epochs and not pause.stopping:
            epoch, start = step // steps_per_epoch + 1, step % steps_per_epoch
            sums = zeros if start == 0 else sums
            segment = run_steps(shared, compiled, state, sums, images, epoch, start, pause)
            state, sums, step = segment.state, segment.sums, segment.step
            clock = clock.add(segment)
            _write_losses(writers, segment.losses)
            _raise_if_nonfinite(shared, members, state, sums, len(data.train_images))
            if step % steps_per_epoch == 0:
                _end_epoch(shared, epoch, step, state, sums, histories, epoch_ends, writers, clock)
                clock = _epoch_time()
            if step != saved_step:
                saved_step = _save(members, step, state, sums, histories, shared.image_shape)
                pause.saved()
            if step % steps_per_epoch == 0:
                _write_epoch(members, writers, histories, config.train.num_epochs)
        if step != saved_step:  # a stop before the first step saves too
            _save(members, step, state, sums, histories, shared.image_shape)
    _finish(members, writers, histories)
    if len(histories[0]) < config.train.num_epochs or pause.stopping:  # skips the evaluation
        raise _interrupted(pause.signum, step, steps_per_epoch)
    return [(one_run(state, i, models), histories[i]) for i in range(models)]


class EpochTime(NamedTuple):
    """The epoch's training seconds and steps so far (its segments add up), the seconds it
    spent compiling, and the process's CPU clock when it started."""

    seconds: float
    steps: int
    compile_seconds: float
    cpu_start: float

    def add(self, segment: Segment) -> EpochTime:
        return self._replace(seconds=self.seconds + segment.seconds,
                             steps=self.steps + segment.steps)  # fmt: skip


def _epoch_time(compile_seconds: float = 0.0) -> EpochTime:
    return EpochTime(0.0, 0, compile_seconds, time.process_time())


def _start(parts: Parts, members: list[Member]) -> tuple[TrainState, EpochSums, list[list[dict]]]:
    """The members' states and epoch sums (restored, or fresh), joined, and their histories."""
    states, sums, histories = [], [], []
    for m in members:
        if m.restored is None:
            states.append(init_state(parts, m.config.seed))
            sums.append(jax.device_put(zero_sums(), replicated(parts.mesh)))
            histories.append([])
        else:
            states.append(m.restored.state["train_state"])
            sums.append(m.restored.state["epoch_sums"])
            histories.append(m.restored.meta["history"])
    return join_runs(states), join_runs(sums), histories


def _report_unused(parts: Parts, state: TrainState, images: jax.Array, noise_scale: float) -> None:
    unused = parameters_without_gradient(parts, state, images, noise_scale)
    if unused and is_writer():
        listed = ", ".join(unused[:8]) + (f" and {len(unused) - 8} more" if len(unused) > 8 else "")
        print(
            f"warning: {len(unused)} parameter(s) got no gradient in the first step: the loss "
            f"does not reach them, so training will leave them as initialized: {listed}. Does "
            "the objective use that part of the model (a prior or a flow it never calls?)",
            file=sys.stderr,
        )


def _print_start(parts: Parts, members: list[Member], data: Dataset, step: int) -> None:
    n_train, batch_size = len(data.train_images), parts.config.train.batch_size
    steps_per_epoch = parts.steps_per_epoch
    where = members[0].workdir.path if len(members) == 1 else f"{len(members)} runs under jax.vmap"
    resuming = f" | resuming at step {step} (epoch {step // steps_per_epoch + 1})"
    print(
        f"vae_jax {members[0].name or 'run'}: {where} | {parts.mesh.devices.size} "
        f"{jax.devices()[0].platform} device(s) | {n_train} train / {len(data.test_images)} test "
        f"images, batch {batch_size}, {steps_per_epoch} steps/epoch"
        + (f" (last {n_train % batch_size} of each shuffle unused)" if n_train % batch_size else "")
        + (resuming if members[0].restored else "")
    )


def _write_losses(writers: list[MetricsWriter], losses: list[tuple[int, list[float]]]) -> None:
    for i, writer in enumerate(writers):
        writer.write_losses([(step, each[i]) for step, each in losses])


def _end_epoch(
    parts: Parts,
    epoch: int,
    step: int,
    state: TrainState,
    sums: EpochSums,
    histories: list[list[dict]],
    epoch_ends: list[Callable],
    writers: list[MetricsWriter],
    clock: EpochTime,
) -> None:
    """Evaluate and draw each run, and append its epoch's record to its history."""
    models = len(histories)
    means = np.asarray(jax.device_get(sums.metrics)).reshape(models, -1) / parts.steps_per_epoch
    for i, (history, epoch_end) in enumerate(zip(histories, epoch_ends, strict=True)):
        test, eval_seconds, grids = epoch_end(one_run(state, i, models).params, epoch)
        writers[i].write_images(epoch, grids)
        history.append(
            {
                "epoch": epoch,
                "step": step,
                **{
                    f"train_{k}_nats": float(v)
                    for k, v in zip(TRAIN_METRICS, means[i], strict=True)
                },
                **{f"test_{k}_nats": v for k, v in test.items()},
                "train_seconds": clock.seconds,
                # per run: models trained together share the seconds
                "images_per_sec": clock.steps * parts.config.train.batch_size / clock.seconds,
                "eval_seconds": eval_seconds,
                "compile_seconds": clock.compile_seconds,
                "cpu_seconds": time.process_time()
                - clock.cpu_start,  # training, evaluation, drawing
                "cpu_cores": cpu_cores(),
                "devices": parts.mesh.devices.size,
                "models_together": models,
                "time": time.time(),
            }
        )


def _save(
    members: list[Member],
    step: int,
    state: TrainState,
    sums: EpochSums,
    histories: list[list[dict]],
    image_shape: tuple[int, ...],
) -> int:
    """Save every member's checkpoint at ``step``; return the step."""
    for i, m in enumerate(members):
        tree = checkpoint_tree(one_run(state, i, len(members)), one_run(sums, i, len(members)))
        meta = {"epoch": len(histories[i]), "step": step, "image_shape": list(image_shape)}
        m.checkpointer.save(step, tree, {**meta, "history": histories[i]})
    return step


def _write_epoch(
    members: list[Member], writers: list[MetricsWriter], histories: list, num_epochs: int
) -> None:
    for m, writer, history in zip(members, writers, histories, strict=True):
        writer.write(history)
        prefix = f"{m.name}: " if len(members) > 1 else ""
        tqdm.write(prefix + format_epoch(history[-1], num_epochs))


def format_epoch(record: dict, num_epochs: int) -> str:
    """The line printed after each epoch."""
    return (
        f"epoch {record['epoch']:2d}/{num_epochs}  "
        f"train loss {record['train_loss_nats']:.2f} "
        f"(recon {record['train_recon_nats']:.2f}, KL {record['train_kl_nats']:.2f})  "
        f"test -ELBO {record['test_neg_elbo_nats']:.2f}  "
        f"[{record['train_seconds']:.1f} s, {record['images_per_sec']:.0f} img/s]"
    )


def _finish(members: list[Member], writers: list, histories: list) -> None:
    """Close the writers (with the hparams of finished runs) and say where the runs are."""
    finished = len(histories[0]) == members[0].config.train.num_epochs
    for m, writer, history in zip(members, writers, histories, strict=True):
        if finished:
            writer.write_hparams(flatten(m.config), history[-1])
        writer.close()
        if finished:
            print(f"Done: {m.workdir.path} (figures in {m.workdir.figures}, metrics in "
                  f"{m.workdir.metrics})")  # fmt: skip


def _interrupted(signum: int | None, step: int, steps_per_epoch: int) -> TrainingInterrupted:
    assert signum is not None
    done_epochs = (step - 1) // steps_per_epoch if step else 0
    return TrainingInterrupted(
        signum, step, done_epochs + 1, step - done_epochs * steps_per_epoch, steps_per_epoch
    )


def _raise_if_nonfinite(
    parts: Parts, members: list[Member], state: TrainState, sums: EpochSums, n_train: int
) -> None:
    first_bad = np.asarray(jax.device_get(sums.first_bad)).reshape(-1)
    for i, bad in enumerate(first_bad):
        if bad >= 0:
            one = one_run(state, i, len(members))
            indices = batch_indices(parts, one, int(bad), n_train)
            raise _nonfinite_error(parts, members[i], indices, int(bad))


def batch_indices(parts: Parts, state: TrainState, step: int, n_train: int) -> list[int]:
    """Positions in the training set of the batch of global ``step`` (``state``: one run's)."""
    epoch = jnp.int32(step // parts.steps_per_epoch)
    perm = jax.device_get(epoch_permutation(state.root, epoch, n_train))
    offset = (step % parts.steps_per_epoch) * parts.config.train.batch_size
    return [int(i) for i in perm[offset : offset + parts.config.train.batch_size]]


def _nonfinite_error(
    parts: Parts, member: Member, indices: list[int], first_bad: int
) -> NonFiniteError:
    steps_per_epoch, config = parts.steps_per_epoch, member.config
    steps = member.checkpointer.steps()
    newest = (
        f"The newest checkpoint (step {steps[-1]}) predates it and is intact; rerunning the "
        f"command resumes from there and meets the same batch at step {first_bad} again."
        if steps
        else "No checkpoint was saved before it."
    )
    listed = ", ".join(map(str, indices[:32])) + (", ..." if len(indices) > 32 else "")
    hints = [f"a lower train.learning_rate (now {config.train.learning_rate:g})"]
    if config.model.likelihood == "gaussian":
        hints.append(f"a larger model.obs_stddev (now {config.model.obs_stddev:g})")
    hints.append("checking those images")
    return NonFiniteError(
        f"non-finite loss or gradient at step {first_bad} (epoch {first_bad // steps_per_epoch + 1}"
        f", batch {first_bad % steps_per_epoch + 1} of {steps_per_epoch}) of the run in "
        f"{member.workdir.path}; the update was not applied and training stopped. The batch held "
        f"training images [{listed}] (positions in the training set). {newest} Things to try: "
        f"{'; '.join(hints)}."
    )
