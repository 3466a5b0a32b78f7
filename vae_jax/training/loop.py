"""The epoch loop around the pure step of :mod:`vae_jax.core.train_step`.

:func:`train` trains one run (or several together, their step vmapped) to its last epoch.
The step is compiled once, ahead of time, and runs under ``jax.transfer_guard("disallow")``;
the loop syncs with the host once per epoch and whenever it saves. A checkpoint is saved after
every epoch, every ``checkpoint.every_steps`` steps and ``every_seconds`` seconds (when set),
and when SIGTERM/SIGINT asks the run to stop; each holds the step, so a run resumes from any of
them exactly where it stopped (README, "Interrupted runs").
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh
from tqdm import tqdm

from vae_jax import parallel
from vae_jax.core import objectives, rng
from vae_jax.core.conv_ops import compile_fast
from vae_jax.core.models import VAE
from vae_jax.core.pixels import to_float
from vae_jax.core.settings import flatten, values
from vae_jax.core.train_step import (
    TRAIN_METRICS,
    EpochSums,
    TrainState,
    checkpoint_tree,
    epoch_permutation,
    init_state,
    make_train_step,
    zero_sums,
)
from vae_jax.data.images import Dataset
from vae_jax.errors import NonFiniteError, TrainingInterrupted
from vae_jax.evaluation.evaluators import make_test_evaluator
from vae_jax.outputs import plots
from vae_jax.outputs.checkpoints import Checkpointer, Restored
from vae_jax.outputs.metrics import MetricsWriter, cpu_cores
from vae_jax.outputs.workdir import Workdir, is_writer
from vae_jax.training.stopping import Pause, StopRequest


class Member(NamedTuple):
    """One run of those the loop trains together (usually the only one)."""

    config: ml_collections.ConfigDict
    workdir: Workdir
    name: str
    checkpointer: Checkpointer
    restored: Restored | None


class Group(NamedTuple):
    """How ``size`` runs trained together are held: one run's trees as they are, several
    stacked along a new leading axis, with the step and the permutation vmapped over it."""

    size: int

    def join(self, trees: list) -> Any:
        return trees[0] if self.size == 1 else jax.tree.map(lambda *xs: jnp.stack(xs), *trees)

    def part(self, tree: Any, i: int) -> Any:
        return tree if self.size == 1 else jax.tree.map(lambda x: x[i], tree)

    def mapped(self, fn: Callable, in_axes: tuple) -> Callable:
        return fn if self.size == 1 else jax.vmap(fn, in_axes=in_axes)


def train(
    members: list[Member], model: VAE, tx: optax.GradientTransformation, mesh: Mesh, data: Dataset
) -> list[list[dict]]:
    """Train every member to its ``train.num_epochs`` (all equal), in lockstep from the same
    step; their configs differ at most in ``seed`` and ``model.noise_scale``. Returns each
    member's history: one record per epoch, losses in nats per image."""
    config, group = members[0].config, Group(len(members))
    num_epochs = config.train.num_epochs
    state, sums, histories = _start(members, group, model, tx, data.image_shape, mesh)
    step = members[0].restored.step if members[0].restored else 0
    scales = [m.config.model.noise_scale for m in members]
    trainer = make_trainer(config, model, tx, mesh, data.train_images, state, sums, group, scales)
    roots = [group.part(state, i).root for i in range(group.size)]
    outputs = [
        EpochOutputs(model, m, mesh, data.test_images, r)
        for m, r in zip(members, roots, strict=True)
    ]
    writers = [MetricsWriter(m.workdir.metrics, m.workdir.tensorboard) for m in members]
    for writer, history in zip(writers, histories, strict=True):
        writer.write(history)  # metrics.jsonl matches the checkpoint, after any crash
    saver = Saver(members, group, data.image_shape)
    clock = EpochClock(trainer.compile_seconds, config.train.batch_size)
    spe = trainer.steps_per_epoch
    _print_start(members, mesh, data, step, spe)
    with StopRequest() as stop:  # from here on, SIGTERM/SIGINT stop cleanly, with a checkpoint
        c = config.checkpoint
        pause = Pause(stop, c.every_steps, c.every_seconds, config.train.log_every_steps)
        while len(histories[0]) < num_epochs and not pause.stopping:
            epoch, start = step // spe + 1, step % spe
            sums = trainer.zeros if start == 0 else sums
            segment = trainer.run(state, sums, epoch, start, pause)
            state, sums, step = segment.state, segment.sums, segment.step
            clock.add(segment)
            for i, writer in enumerate(writers):
                writer.write_losses([(s, losses[i]) for s, losses in segment.losses])
            _raise_if_nonfinite(members, group, trainer, state, sums)
            if step % spe == 0:
                _end_epoch(epoch, step, state, sums, histories, outputs, writers, clock, trainer)
            if saver.save(step, state, sums, histories):
                pause.saved()
            if step % spe == 0:
                _write_epoch(members, writers, histories, num_epochs)
        saver.save(step, state, sums, histories)  # a stop before the first step saves too
    _finish(members, writers, histories, num_epochs)
    if len(histories[0]) < num_epochs or pause.stopping:  # a stop in the last epoch skips eval
        raise _interrupted(pause.signum, step, spe)
    return histories


def make_trainer(
    config: ml_collections.ConfigDict,
    model: VAE,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    train_images: np.ndarray,
    state: TrainState,
    sums: EpochSums,
    group: Group,
    noise_scales: list[float],
) -> EpochTrainer:
    """The step loop with ``config``'s settings (those shared by runs trained together), one
    noise scale per run."""
    return EpochTrainer(
        tx,
        mesh,
        train_images,
        state,
        sums,
        group,
        batch_size=config.train.batch_size,
        log_every=config.train.log_every_steps,
        num_epochs=config.train.num_epochs,
        loss_fn=objectives.make_loss(model, **values(config, objectives.SETTINGS)),
        dynamic_binarize=config.data.binarize == "dynamic",
        noise_scales=noise_scales,
    )


def _finish(members: list[Member], writers: list, histories: list, num_epochs: int) -> None:
    """Close the writers (with the hparams of finished runs) and say where the runs are."""
    finished = len(histories[0]) == num_epochs
    for m, writer, history in zip(members, writers, histories, strict=True):
        if finished:
            writer.write_hparams(flatten(m.config), history[-1])
        writer.close()
        if finished:
            print(f"Done: {m.workdir.path} (figures in {m.workdir.figures}, metrics in "
                  f"{m.workdir.metrics})")  # fmt: skip


def _start(
    members: list[Member],
    group: Group,
    model: VAE,
    tx: optax.GradientTransformation,
    image_shape: tuple[int, ...],
    mesh: Mesh,
) -> tuple[TrainState, EpochSums, list[list[dict]]]:
    """The members' states and epoch sums (restored, or fresh), joined, and their histories."""
    repl = parallel.replicated(mesh)
    states, sums, histories = [], [], []
    for m in members:
        if m.restored is None:
            init = functools.partial(init_state, m.config.seed, model, tx, image_shape)
            states.append(jax.jit(init, out_shardings=repl)())
            sums.append(jax.device_put(zero_sums(), repl))
            histories.append([])
        else:
            states.append(m.restored.state["train_state"])
            sums.append(m.restored.state["epoch_sums"])
            histories.append(m.restored.meta["history"])
    return group.join(states), group.join(sums), histories


def _print_start(members: list[Member], mesh: Mesh, data: Dataset, step: int, spe: int) -> None:
    n_train, batch_size = len(data.train_images), members[0].config.train.batch_size
    where = members[0].workdir.path if len(members) == 1 else f"{len(members)} runs under jax.vmap"
    print(
        f"vae_jax {members[0].name or 'run'}: {where} | {mesh.devices.size} "
        f"{jax.devices()[0].platform} device(s) | {n_train} train / {len(data.test_images)} test "
        f"images, batch {batch_size}, {spe} steps/epoch"
        + (f" (last {n_train % batch_size} of each shuffle unused)" if n_train % batch_size else "")
        + (f" | resuming at step {step} (epoch {step // spe + 1})" if members[0].restored else "")
    )


def _end_epoch(
    epoch: int,
    step: int,
    state: TrainState,
    sums: EpochSums,
    histories: list[list[dict]],
    outputs: list[EpochOutputs],
    writers: list[MetricsWriter],
    clock: EpochClock,
    trainer: EpochTrainer,
) -> None:
    """Evaluate and draw each run, and append its epoch's record to its history."""
    group, spe = trainer.group, trainer.steps_per_epoch
    means = np.asarray(jax.device_get(sums.metrics)).reshape(group.size, -1) / spe
    for i, (history, out) in enumerate(zip(histories, outputs, strict=True)):
        test, eval_seconds, grids = out.evaluate_and_draw(group.part(state, i).params, epoch)
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
                "images_per_sec": clock.images_per_sec,
                "eval_seconds": eval_seconds,
                "compile_seconds": clock.compile_seconds,
                "cpu_seconds": clock.cpu_seconds,
                "cpu_cores": cpu_cores(),
                "devices": trainer.devices,
                "models_together": group.size,
                "time": time.time(),
            }
        )
    clock.reset()


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


def _interrupted(signum: int | None, step: int, spe: int) -> TrainingInterrupted:
    assert signum is not None
    done_epochs = (step - 1) // spe if step else 0
    return TrainingInterrupted(signum, step, done_epochs + 1, step - done_epochs * spe, spe)


class Saver:
    """Saves every member's checkpoint at a step, once per step (when to save is
    :class:`~vae_jax.training.stopping.Pause`'s decision)."""

    def __init__(self, members: list[Member], group: Group, image_shape: tuple[int, ...]):
        self.members, self.group, self.image_shape = members, group, list(image_shape)
        restored = members[0].restored
        self.saved_step = restored.step if restored else None

    def save(self, step: int, state: TrainState, sums: EpochSums, histories: list) -> bool:
        """Save at ``step`` unless saved there already; say whether it did."""
        if step == self.saved_step:
            return False
        for i, m in enumerate(self.members):
            tree = checkpoint_tree(self.group.part(state, i), self.group.part(sums, i))
            meta = {"epoch": len(histories[i]), "step": step, "image_shape": self.image_shape}
            m.checkpointer.save(step, tree, {**meta, "history": histories[i]})
        self.saved_step = step
        return True


class Segment(NamedTuple):
    """Steps run without a host sync: from a start to the epoch's end or a pause."""

    state: TrainState
    sums: EpochSums
    step: int  # global step reached
    steps: int  # steps run in this segment
    seconds: float
    losses: list[tuple[int, list[float]]]  # (step, each run's mean loss so far this epoch)


class EpochClock:
    """The epoch's training seconds and steps so far (segments add up), and compile time."""

    def __init__(self, compile_seconds: float, batch_size: int):
        self.batch_size = batch_size
        self.compile_seconds, self.seconds, self.steps = compile_seconds, 0.0, 0
        self.cpu_start = time.process_time()

    def add(self, segment: Segment) -> None:
        self.seconds += segment.seconds
        self.steps += segment.steps

    @property
    def cpu_seconds(self) -> float:
        """CPU time of this process (all its threads) since the epoch started: training,
        evaluation and drawing."""
        return time.process_time() - self.cpu_start

    @property
    def images_per_sec(self) -> float:
        return self.steps * self.batch_size / self.seconds

    def reset(self) -> None:
        self.compile_seconds, self.seconds, self.steps = 0.0, 0.0, 0
        self.cpu_start = time.process_time()


def _raise_if_nonfinite(
    members: list[Member], group: Group, trainer: EpochTrainer, state: TrainState, sums: EpochSums
) -> None:
    first_bad = np.asarray(jax.device_get(sums.first_bad)).reshape(-1)
    for i, bad in enumerate(first_bad):
        if bad >= 0:
            raise _nonfinite_error(trainer, group.part(state, i), int(bad), members[i])


def _nonfinite_error(
    trainer: EpochTrainer, state: TrainState, first_bad: int, member: Member
) -> NonFiniteError:
    spe, config = trainer.steps_per_epoch, member.config
    indices = trainer.batch_indices(state, first_bad)
    steps = member.checkpointer.steps()
    newest = (
        f"The newest checkpoint (step {steps[-1]}) predates it and is intact; rerunning the "
        f"command resumes from there and meets the same batch at step {first_bad} again."
        if steps
        else "No checkpoint was saved before it."
    )
    shown = ", ".join(map(str, indices[:32])) + (", ..." if len(indices) > 32 else "")
    hints = [f"a lower train.learning_rate (now {config.train.learning_rate:g})"]
    if config.model.likelihood == "gaussian":
        hints.append(f"a larger model.obs_stddev (now {config.model.obs_stddev:g})")
    hints.append("checking those images")
    return NonFiniteError(
        f"non-finite loss or gradient at step {first_bad} (epoch {first_bad // spe + 1}, "
        f"batch {first_bad % spe + 1} of {spe}) of the run in {member.workdir.path}; the update "
        f"was not applied and training stopped. The batch held training images [{shown}] "
        f"(positions in the training set). {newest} Things to try: {'; '.join(hints)}."
    )


class EpochTrainer:
    """The training set on the devices, the train step compiled once, and the step loop.

    For a :class:`Group` of several runs the state and sums hold them along a leading axis,
    and the step is vmapped over them and their noise scales."""

    def __init__(
        self,
        tx: optax.GradientTransformation,
        mesh: Mesh,
        train_images: np.ndarray,
        state: TrainState,
        sums: EpochSums,
        group: Group,
        *,
        batch_size: int,
        log_every: int,
        num_epochs: int,
        loss_fn: objectives.Loss,
        dynamic_binarize: bool,
        noise_scales: list[float],
    ):
        self.group, self.batch_size, self.log_every = group, batch_size, log_every
        self.devices = mesh.devices.size
        self.num_epochs = num_epochs
        n = len(train_images)
        self.steps_per_epoch = n // batch_size
        repl = parallel.replicated(mesh)
        self.images = jax.device_put(train_images, repl)
        self.zeros = jax.device_put(group.join([zero_sums()] * group.size), repl)

        def permute(key_data, epoch):
            return epoch_permutation(jax.random.wrap_key_data(key_data), epoch, n)

        mapped = group.mapped(
            make_train_step(
                tx,
                loss_fn,
                batch_size=batch_size,
                steps_per_epoch=self.steps_per_epoch,
                dynamic_binarize=dynamic_binarize,
                batch_sharding=parallel.batch_sharding(mesh),
            ),
            (0, 0, None, 0, 0),
        )
        scales = noise_scales[0] if group.size == 1 else jnp.asarray(noise_scales, jnp.float32)

        def step(state, sums, images, perm):
            return mapped(state, sums, images, perm, scales)

        self._permute = jax.jit(group.mapped(permute, (0, None)), out_shardings=repl)
        self._step, self.compile_seconds = self._compile(step, state, sums, repl)

    def _compile(self, step: Callable, state: TrainState, sums: EpochSums, repl) -> tuple:
        """The step compiled ahead of time (a later call with other shapes or shardings fails
        loudly instead of silently recompiling), and the seconds it took."""
        start = time.perf_counter()
        state_sharding = jax.tree.map(lambda _: repl, state)
        sums_sharding = jax.tree.map(lambda _: repl, sums)
        lowered = jax.jit(
            step,
            in_shardings=(state_sharding, sums_sharding, repl, repl),
            out_shardings=(state_sharding, sums_sharding),
            donate_argnums=0,
        ).lower(state, sums, self.images, self._permute(state.rng, jnp.int32(0)))
        return compile_fast(lowered), time.perf_counter() - start

    def batch_indices(self, state: TrainState, step: int) -> list[int]:
        """Positions in the training set of the batch of global ``step`` (``state``: one
        run's)."""
        epoch = jnp.int32(step // self.steps_per_epoch)
        perm = jax.device_get(epoch_permutation(state.root, epoch, len(self.images)))
        offset = (step % self.steps_per_epoch) * self.batch_size
        return [int(i) for i in perm[offset : offset + self.batch_size]]

    def run(
        self,
        state: TrainState,
        sums: EpochSums,
        epoch: int,
        start: int,
        pause: Callable[[int], bool],
    ) -> Segment:
        """Run epoch ``epoch`` (1-based) from its step ``start`` to its end, or until
        ``pause(global_step)`` is true after a step, or a non-finite loss shows up."""
        spe = self.steps_per_epoch
        perm = self._permute(state.rng, jnp.int32(epoch - 1))
        per_step = self.batch_size * self.group.size  # images/s counts every run's images
        bar = tqdm(
            total=spe * per_step,
            initial=start * per_step,
            desc=f"epoch {epoch}/{self.num_epochs}",
            unit="img",
            unit_scale=True,
            leave=False,
            disable=not is_writer(),
            mininterval=0.5,
        )
        t0 = time.perf_counter()
        i, step = start, (epoch - 1) * spe + start
        shown = None  # (sums, i, step) of the previous log point, computed by now: no stall
        losses = []
        # Any implicit host<->device transfer in the loop is an error; the reads are explicit.
        with jax.transfer_guard("disallow"):
            while i < spe:
                state, sums = self._step(state, sums, self.images, perm)
                i, step = i + 1, step + 1
                if i % self.log_every == 0 or i == spe:
                    if shown is not None:
                        seen = jax.device_get(shown[0])
                        if np.any(seen.first_bad >= 0):
                            break
                        means = np.reshape(seen.metrics, (-1, len(TRAIN_METRICS)))[:, 0] / shown[1]
                        losses.append((shown[2], means.tolist()))
                        bar.set_postfix(loss="/".join(f"{v:.2f}" for v in means), refresh=False)
                    bar.update(i * per_step - bar.n)
                    shown = (sums, i, step)
                if pause(step):
                    break
            jax.block_until_ready(sums)
        seconds = time.perf_counter() - t0
        bar.close()
        return Segment(state, sums, step, i - start, seconds, losses)


def make_figure_fn(model: VAE) -> Callable:
    """``(params, images_u8, z) -> (reconstructions, samples)``, decoder means in [0, 1].

    Reconstructions decode the posterior mean of each image (no noise), samples decode the
    given latents, so grids of different epochs are directly comparable.
    """

    @jax.jit
    def fn(params, images_u8, z):
        variables = {"params": params}
        mean, _ = model.apply(variables, to_float(images_u8), method=VAE.encode)
        recon = objectives.decoder_mean(model.apply(variables, mean, method=VAE.decode))
        samples = objectives.decoder_mean(model.apply(variables, z, method=VAE.decode))
        return recon, samples

    return fn


class EpochOutputs:
    """After each epoch, for one run: the test-set evaluation and the figures (process 0
    draws)."""

    def __init__(
        self, model: VAE, member: Member, mesh: Mesh, test_images: np.ndarray, root: jax.Array
    ):
        config = member.config
        self._evaluate = make_test_evaluator(
            model,
            test_images,
            mesh,
            rng.stream(root, rng.Stream.EVAL),
            log_lik=objectives.log_likelihood(config.model.likelihood, config.model.obs_stddev),
            noise_scale=config.model.noise_scale,
            batch_size=config.eval.batch_size,
            num_samples=config.eval.num_samples,
        )
        self._draw = make_figure_fn(model)
        self._images = test_images[: plots.FIGURE_IMAGES]
        self._z = jax.random.normal(
            rng.stream(root, rng.Stream.FIGURES), (len(self._images), config.model.latent_dim)
        )
        self._dir = member.workdir.figures
        self._late_epoch = config.figures.late_epoch
        self._title = _figure_title(member.name, config)
        if is_writer():
            plots.save_grid(self._dir / "originals.png", to_float(self._images))

    def evaluate_and_draw(self, params: Any, epoch: int) -> tuple[dict, float, dict]:
        """The test-set means, the seconds it took, and the image grids drawn."""
        start = time.perf_counter()
        test = self._evaluate(params)
        recon, samples = self._draw(params, self._images, self._z)
        grids = {
            "reconstructions": plots.make_grid(np.asarray(recon)),
            "samples": plots.make_grid(np.asarray(samples)),
        }
        if is_writer():
            plots.save_png(plots.recon_path(self._dir, epoch), grids["reconstructions"])
            plots.save_png(plots.samples_path(self._dir, epoch), grids["samples"])
            late = min(self._late_epoch, epoch)
            plots.save_reconstructions_figure(self._dir, 1, late, title=self._title)
        return test, time.perf_counter() - start, grids


def _figure_title(name: str, config: ml_collections.ConfigDict) -> str:
    m = config.model
    parts = [name] if name else []
    parts.append(f"{m.arch} VAE, z={m.latent_dim}, noise_scale={m.noise_scale:g}, {m.likelihood}")
    if config.data.binarize != "none":
        parts.append(f"{config.data.binarize} binarization")
    return " | ".join(parts)
