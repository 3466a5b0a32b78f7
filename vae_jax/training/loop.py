"""Training: the loop around the pure step of :mod:`vae_jax.core.train_step` (the imperative shell).

The loop syncs with the host once per epoch and whenever it saves; the step is compiled once,
ahead of time; the step loop runs under ``jax.transfer_guard("disallow")``. A checkpoint is
saved after every epoch, every ``checkpoint.every_steps`` steps and ``every_seconds`` seconds
(when set), and when SIGTERM/SIGINT asks the run to stop; each holds the step, so a run resumes
from any of them exactly where it stopped (see README, "Interrupted runs").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh
from tqdm import tqdm

from vae_jax import config as config_lib
from vae_jax import data as data_lib
from vae_jax import parallel
from vae_jax.core import objectives, rng
from vae_jax.core.conv_ops import compile_fast
from vae_jax.core.models import VAE, make_model
from vae_jax.core.train_step import (
    TRAIN_METRICS,
    EpochSums,
    TrainState,
    epoch_permutation,
    init_state,
    make_optimizer,
    make_train_step,
    zero_sums,
)
from vae_jax.errors import (
    ConfigError,
    DataError,
    NonFiniteError,
    OutputError,
    TrainingInterrupted,
)
from vae_jax.evaluation import run as run_eval
from vae_jax.evaluation.evaluators import make_test_evaluator
from vae_jax.evaluation.trained_run import saved_like
from vae_jax.outputs import plots as figures
from vae_jax.outputs.checkpoints import Checkpointer, Restored
from vae_jax.outputs.metrics import MetricsWriter, is_writer
from vae_jax.outputs.workdir import Workdir
from vae_jax.training.stopping import StopRequest

NUM_FIGURE_IMAGES = 64


def make_figure_fn(model: VAE) -> Callable:
    """``(params, images_u8, z) -> (reconstructions, samples)``, decoder means in [0, 1].

    Reconstructions decode the posterior mean of each image (no noise), samples decode the
    given latents, so grids of different epochs are directly comparable.
    """

    @jax.jit
    def fn(params, images_u8, z):
        variables = {"params": params}
        mean, _ = model.apply(variables, data_lib.to_float(images_u8), method=VAE.encode)
        recon = objectives.decoder_mean(model.apply(variables, mean, method=VAE.decode))
        samples = objectives.decoder_mean(model.apply(variables, z, method=VAE.decode))
        return recon, samples

    return fn


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    dataset: data_lib.Dataset | None = None,
    name: str = "",
    force: bool = False,
) -> list[dict]:
    """Train ``config`` in ``workdir``, resuming from its newest valid checkpoint; return the
    history (one record per epoch, the lines of ``metrics.jsonl``; losses in nats per image).

    ``force`` starts anew: a run already in ``workdir`` is first moved aside to
    ``<workdir>.old-<time>``. Bad input raises :class:`ConfigError`, :class:`DataError` or
    :class:`WorkdirError` before anything is written; a stop request raises
    :class:`TrainingInterrupted` after saving a checkpoint; a NaN raises
    :class:`NonFiniteError` with the newest checkpoint intact.
    """
    mesh = parallel.make_mesh()
    check_config(config, mesh)
    run = Workdir(Path(workdir))
    run.check(config, force=force)
    if run.path.exists():
        run.lock()  # refuse at once if another process is training here
    try:
        return _train(config, run, mesh, dataset, name, force)
    finally:
        run.unlock()


def check_config(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
    """The config is valid and its batch sizes divide over the devices."""
    config_lib.validate(config)
    parallel.check_divisible(config.train.batch_size, mesh, "train.batch_size")
    parallel.check_divisible(config.eval.batch_size, mesh, "eval.batch_size")


def restore_newest(
    run: Workdir, config: ml_collections.ConfigDict, mesh: Mesh
) -> tuple[Checkpointer | None, Restored | None]:
    """The run's checkpointer and newest valid checkpoint; ``(None, None)`` without a
    checkpoints folder (nothing is created)."""
    if not run.checkpoints.is_dir():
        return None, None
    checkpointer = Checkpointer(run.checkpoints, config.checkpoint.max_to_keep)
    return checkpointer, checkpointer.restore_latest_valid(lambda m: saved_like(config, m, mesh))


def model_for(
    config: ml_collections.ConfigDict,
    dataset: data_lib.Dataset,
    restored: Restored | None,
    run: Workdir,
) -> VAE:
    """The model for ``dataset``'s images, which must be those the restored run saw."""
    data_lib.check_dataset(dataset, config.train.batch_size)
    if restored is not None and tuple(restored.meta["image_shape"]) != dataset.image_shape:
        raise DataError(
            f"images are {dataset.image_shape}, but the run in {run.path} was trained on "
            f"{tuple(restored.meta['image_shape'])}"
        )
    try:
        return make_model(config.model, dataset.image_shape)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def create_workdir(run: Workdir, config: ml_collections.ConfigDict, image_shape, mesh) -> None:
    """Lock and create ``run``'s workdir, checking room for the run's checkpoints."""
    if not run.locked:
        run.lock()
    like = saved_like(config, {"image_shape": image_shape}, mesh)
    run.create(
        config, checkpoint_bytes=sum(s.size * s.dtype.itemsize for s in jax.tree.leaves(like))
    )


def _train(
    config: ml_collections.ConfigDict,
    run: Workdir,
    mesh: Mesh,
    dataset: data_lib.Dataset | None,
    name: str,
    force: bool,
) -> list[dict]:
    checkpointer = None
    try:
        restored = None
        if not force:
            checkpointer, restored = restore_newest(run, config, mesh)
            if restored is not None and len(restored.meta["history"]) >= config.train.num_epochs:
                print(f"Run in {run.path} is finished ({len(restored.meta['history'])} epochs).")
                if config.eval.after_training and not run_eval.is_current(run.path, restored.step):
                    run_eval.evaluate_run(run.path, dataset=dataset)
                return restored.meta["history"]
        if dataset is None:
            dataset = data_lib.load_dataset(config.data)
        model = model_for(config, dataset, restored, run)

        # --- nothing was written before this line (but the lock of an existing workdir) ---
        if force and (moved := run.move_aside()) is not None:
            run.unlock()
            print(f"--force: moved the previous run in {run.path} to {moved}")
        create_workdir(run, config, dataset.image_shape, mesh)
        if checkpointer is None:
            checkpointer = Checkpointer(run.checkpoints, config.checkpoint.max_to_keep)
        try:
            member = Member(config, run, name, checkpointer, restored)
            history = train_members([member], mesh, dataset, model)[0]
            if config.eval.after_training:
                run_eval.evaluate_run(run.path, dataset=dataset)
            return history
        except OSError as e:  # a figure, metrics.jsonl or an event file
            steps = checkpointer.steps()
            newest = f"step {steps[-1]}; rerunning the command resumes from it" if steps else "none"
            raise OutputError(
                f"could not write to the workdir: {e}. Check free space and permissions in "
                f"{run.path}; the newest valid checkpoint is {newest}."
            ) from e
    finally:
        if checkpointer is not None:
            checkpointer.close()


class _Segment(NamedTuple):
    state: TrainState
    sums: EpochSums
    step: int  # global step reached
    steps: int  # steps run in this segment
    seconds: float


class Member(NamedTuple):
    """One run of those a loop trains together (one, or several under ``jax.vmap``)."""

    config: ml_collections.ConfigDict
    run: Workdir
    name: str
    checkpointer: Checkpointer
    restored: Restored | None


def stack(trees: list) -> Any:
    """The trees of several runs as one, each leaf with a new leading axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree: Any, i: int) -> Any:
    return jax.tree.map(lambda x: x[i], tree)


def train_members(
    members: list[Member], mesh: Mesh, dataset: data_lib.Dataset, model: VAE
) -> list[list[dict]]:
    """Train every member to its ``train.num_epochs`` (all equal), in lockstep, from the same
    step; one member trains with the plain step, several with it vmapped over their states and
    noise scales (their configs differ only in ``seed`` and ``model.noise_scale``). Returns
    each member's history."""
    config = members[0].config
    grouped = len(members) > 1
    tx = make_optimizer(config)
    batch_size, num_epochs = config.train.batch_size, config.train.num_epochs
    n_train = len(dataset.train_images)
    spe = n_train // batch_size
    repl = parallel.replicated(mesh)
    states, sums_list, histories = [], [], []
    for m in members:
        if m.restored is None:
            states.append(
                jax.jit(
                    lambda c=m.config: init_state(c, model, tx, dataset.image_shape),
                    out_shardings=repl,
                )()
            )
            sums_list.append(jax.device_put(zero_sums(), repl))
            histories.append([])
        else:
            states.append(m.restored.state["train_state"])
            sums_list.append(m.restored.state["epoch_sums"])
            histories.append(m.restored.meta["history"])
    restored = members[0].restored
    step = restored.step if restored else 0
    saved_step = step if restored else None
    state, sums = (stack(states), stack(sums_list)) if grouped else (states[0], sums_list[0])
    noise_scales = [m.config.model.noise_scale for m in members] if grouped else None
    writers = [MetricsWriter(m.run.path) for m in members]
    for writer, history in zip(writers, histories, strict=True):
        writer.write(history)  # metrics.jsonl matches the checkpoint, after any crash
    n_devices, platform = mesh.devices.size, jax.devices()[0].platform
    where = members[0].run.path if not grouped else f"{len(members)} runs under jax.vmap"
    print(
        f"vae_jax {members[0].name or 'run'}: {where} | {n_devices} {platform} device(s) | "
        f"{n_train} train / {len(dataset.test_images)} test images, batch {batch_size}, "
        f"{spe} steps/epoch"
        + (f" (last {n_train % batch_size} of each shuffle unused)" if n_train % batch_size else "")
        + (f" | resuming at step {step} (epoch {step // spe + 1})" if restored else "")
    )
    every_steps, every_seconds = config.checkpoint.every_steps, config.checkpoint.every_seconds
    last_save = time.monotonic()

    def member(tree: Any, i: int) -> Any:
        return unstack(tree, i) if grouped else tree

    def save() -> None:
        nonlocal saved_step, last_save
        for i, m in enumerate(members):
            meta = {
                "epoch": len(histories[i]),
                "step": step,
                "image_shape": list(dataset.image_shape),
            }
            m.checkpointer.save(
                step,
                {"train_state": member(state, i), "epoch_sums": member(sums, i)},
                {**meta, "history": histories[i]},
            )
        saved_step, last_save = step, time.monotonic()

    with StopRequest() as stop:  # from here on, SIGTERM/SIGINT stop cleanly, with a checkpoint

        def pause(at: int) -> bool:
            return (
                stop.requested
                or (every_steps > 0 and at % every_steps == 0)
                or (every_seconds > 0 and time.monotonic() - last_save >= every_seconds)
            )

        trainer = EpochTrainer(
            model, tx, config, mesh, dataset.train_images, state, sums, noise_scales
        )
        outputs = [
            EpochOutputs(
                model,
                m.config,
                mesh,
                dataset.test_images,
                member(state, i).root,
                m.run.figures,
                m.name,
            )
            for i, m in enumerate(members)
        ]
        epoch_seconds, epoch_steps, compile_seconds = 0.0, 0, trainer.compile_seconds
        while len(histories[0]) < num_epochs and not stop.requested:
            epoch, start = step // spe + 1, step % spe
            if start == 0:
                sums = trainer.zeros
            segment = trainer.run(state, sums, epoch, start, pause)
            state, sums, step = segment.state, segment.sums, segment.step
            epoch_seconds += segment.seconds
            epoch_steps += segment.steps
            first_bad = np.asarray(jax.device_get(sums.first_bad)).reshape(-1)
            for i, bad in enumerate(first_bad):
                if bad >= 0:
                    m = members[i]
                    raise _nonfinite_error(
                        trainer, member(state, i), int(bad), m.checkpointer, m.config, m.run.path
                    )
            epoch_done = step % spe == 0
            if epoch_done:
                all_means = np.asarray(jax.device_get(sums.metrics)).reshape(len(members), -1)
                for i, out in enumerate(outputs):
                    test, eval_seconds = out.evaluate_and_draw(member(state, i).params, epoch)
                    train = dict(zip(TRAIN_METRICS, all_means[i] / spe, strict=True))
                    histories[i].append(
                        {
                            "epoch": epoch,
                            "step": step,
                            **{f"train_{k}_nats": float(v) for k, v in train.items()},
                            **{f"test_{k}_nats": v for k, v in test.items()},
                            "train_seconds": epoch_seconds,
                            # per run: models trained together share the seconds
                            "images_per_sec": epoch_steps * batch_size / epoch_seconds,
                            "eval_seconds": eval_seconds,
                            "compile_seconds": compile_seconds,
                            "devices": n_devices,
                            "models_together": len(members),
                            "time": time.time(),
                        }
                    )
                epoch_seconds, epoch_steps, compile_seconds = 0.0, 0, 0.0
            if step != saved_step:
                save()
            if epoch_done:
                for i, (writer, history) in enumerate(zip(writers, histories, strict=True)):
                    writer.write(history)
                    prefix = f"{members[i].name}: " if grouped else ""
                    tqdm.write(prefix + _format_epoch(history[-1], num_epochs))
        if len(histories[0]) < num_epochs and step != saved_step:
            save()  # stopped before the first step: the claim "a checkpoint is saved" holds

    for writer in writers:
        writer.close()
    if len(histories[0]) < num_epochs:
        assert stop.signum is not None
        done_epochs = (step - 1) // spe if step else 0
        raise TrainingInterrupted(stop.signum, step, done_epochs + 1, step - done_epochs * spe, spe)
    for m, writer in zip(members, writers, strict=True):
        print(f"Done: {m.run.path} (figures in {m.run.figures}, metrics in {writer.path})")
    return histories


def _nonfinite_error(
    trainer: EpochTrainer,
    state: TrainState,
    first_bad: int,
    checkpointer: Checkpointer,
    config: ml_collections.ConfigDict,
    path: Path,
) -> NonFiniteError:
    spe = trainer.steps_per_epoch
    indices = trainer.batch_indices(state, first_bad)
    steps = checkpointer.steps()
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
        f"batch {first_bad % spe + 1} of {spe}) of the run in {path}; the update was not "
        "applied and training "
        f"stopped. The batch held training images [{shown}] (positions in the training "
        f"set). {newest} Things to try: {'; '.join(hints)}."
    )


def _format_epoch(record: dict, num_epochs: int) -> str:
    return (
        f"epoch {record['epoch']:2d}/{num_epochs}  "
        f"train loss {record['train_loss_nats']:.2f} "
        f"(recon {record['train_recon_nats']:.2f}, KL {record['train_kl_nats']:.2f})  "
        f"test -ELBO {record['test_neg_elbo_nats']:.2f}  "
        f"[{record['train_seconds']:.1f} s, {record['images_per_sec']:.0f} img/s]"
    )


class EpochTrainer:
    """The training set on the devices, the train step compiled once, and the step loop.

    With ``noise_scales`` (one per model) the state and sums hold several models along a
    leading axis and the step is ``jax.vmap``-ed over them (and their noise scales)."""

    def __init__(
        self,
        model: VAE,
        tx: optax.GradientTransformation,
        config: ml_collections.ConfigDict,
        mesh: Mesh,
        train_images: np.ndarray,
        state: TrainState,
        sums: EpochSums,
        noise_scales: list[float] | None = None,
    ):
        self.batch_size = config.train.batch_size
        self.num_epochs = config.train.num_epochs
        self.log_every = config.train.log_every_steps
        self.models = 1 if noise_scales is None else len(noise_scales)
        n = len(train_images)
        self.steps_per_epoch = n // self.batch_size
        repl = parallel.replicated(mesh)
        self.images = jax.device_put(train_images, repl)

        def permute(key_data, epoch):
            return epoch_permutation(jax.random.wrap_key_data(key_data), epoch, n)

        step = make_train_step(model, tx, config, self.steps_per_epoch, mesh)
        self.zeros = jax.device_put(zero_sums(), repl)
        if noise_scales is not None:
            permute = jax.vmap(permute, in_axes=(0, None))
            scales = jnp.asarray(noise_scales, jnp.float32)
            vstep = jax.vmap(step, in_axes=(0, 0, None, 0, 0))

            def step(state, sums, images, perm):
                return vstep(state, sums, images, perm, scales)

            self.zeros = jax.device_put(stack([zero_sums()] * self.models), repl)
        self._permute = jax.jit(permute, out_shardings=repl)
        state_sharding = jax.tree.map(lambda _: repl, state)
        sums_sharding = jax.tree.map(lambda _: repl, sums)
        start = time.perf_counter()
        # Compiled ahead of time: a later call with other shapes or shardings fails loudly
        # instead of silently recompiling.
        lowered = jax.jit(
            step,
            in_shardings=(state_sharding, sums_sharding, repl, repl),
            out_shardings=(state_sharding, sums_sharding),
            donate_argnums=0,
        ).lower(state, sums, self.images, self._permute(state.rng, jnp.int32(0)))
        self._step = compile_fast(lowered)
        self.compile_seconds = time.perf_counter() - start

    def batch_indices(self, state: TrainState, step: int) -> list[int]:
        """Positions in the training set of the batch of global ``step`` (``state``: one
        model's)."""
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
    ) -> _Segment:
        """Run epoch ``epoch`` (1-based) from its step ``start`` to its end, or until
        ``pause(global_step)`` is true after a step, or a non-finite loss shows up."""
        spe = self.steps_per_epoch
        perm = self._permute(state.rng, jnp.int32(epoch - 1))
        per_step = self.batch_size * self.models  # images/s counts every model's images
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
        shown = None  # (sums, i) of the previous log point, computed by now: no stall
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
                        losses = np.reshape(seen.metrics, (-1, len(TRAIN_METRICS)))[:, 0]
                        loss = "/".join(f"{v / shown[1]:.2f}" for v in losses)
                        bar.set_postfix(loss=loss, refresh=False)
                    bar.update(i * per_step - bar.n)
                    shown = (sums, i)
                if pause(step):
                    break
            jax.block_until_ready(sums)
        seconds = time.perf_counter() - t0
        bar.close()
        return _Segment(state, sums, step, i - start, seconds)


class EpochOutputs:
    """After each epoch: the test-set evaluation and the figures (process 0 draws)."""

    def __init__(
        self,
        model: VAE,
        config: ml_collections.ConfigDict,
        mesh: Mesh,
        test_images: np.ndarray,
        root: jax.Array,
        figures_dir: Path,
        name: str,
    ):
        self._evaluate = make_test_evaluator(model, config, test_images, mesh, root)
        self._draw = make_figure_fn(model)
        self._images = test_images[:NUM_FIGURE_IMAGES]
        self._z = jax.random.normal(
            rng.stream(root, rng.Stream.FIGURES), (len(self._images), config.model.latent_dim)
        )
        self._dir = figures_dir
        self._late_epoch = config.figures.late_epoch
        self._title = _figure_title(name, config)
        if is_writer():
            figures.save_grid(figures_dir / "originals.png", data_lib.to_float(self._images))

    def evaluate_and_draw(self, params: Any, epoch: int) -> tuple[dict, float]:
        start = time.perf_counter()
        test = self._evaluate(params)
        recon, samples = self._draw(params, self._images, self._z)
        if is_writer():
            figures.save_grid(figures.recon_path(self._dir, epoch), np.asarray(recon))
            figures.save_grid(figures.samples_path(self._dir, epoch), np.asarray(samples))
            late = min(self._late_epoch, epoch)
            figures.save_reconstructions_figure(self._dir, 1, late, title=self._title)
        return test, time.perf_counter() - start


def _figure_title(name: str, config: ml_collections.ConfigDict) -> str:
    m = config.model
    parts = [name] if name else []
    parts.append(f"{m.arch} VAE, z={m.latent_dim}, noise_scale={m.noise_scale:g}, {m.likelihood}")
    if config.data.binarize != "none":
        parts.append(f"{config.data.binarize} binarization")
    return " | ".join(parts)
