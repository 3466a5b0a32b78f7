"""A run from start to end, as in the flax examples: ``train_and_evaluate(config, workdir)``.

Check the config -> check and lock the workdir -> restore the newest valid checkpoint ->
train (:mod:`vae_jax.training.loop`) -> evaluate (:mod:`vae_jax.evaluation.run`). Runs whose
configs differ only in ``seed`` and ``model.noise_scale`` can go the same path together
(:func:`train_together`): one compiled step vmapped over them, each run with its own workdir,
checkpoints, metrics and figures, so that any of them can later be resumed or evaluated alone.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import NamedTuple

import jax
import ml_collections
import optax
from jax.sharding import Mesh

from vae_jax import parallel
from vae_jax.config.keys import validate
from vae_jax.config.saved import check_resumable, to_saved
from vae_jax.core.models import VAE, make_model
from vae_jax.core.settings import flatten
from vae_jax.core.train_step import checkpoint_like
from vae_jax.data.datasets import load_dataset
from vae_jax.data.images import Dataset, check_dataset
from vae_jax.errors import ConfigError, DataError, OutputError
from vae_jax.evaluation.run import evaluate_run, evaluated_step
from vae_jax.evaluation.trained_run import checkpoint_like_for, optimizer_for
from vae_jax.outputs.checkpoints import Checkpointer, Restored
from vae_jax.outputs.workdir import Workdir
from vae_jax.training import loop

TOGETHER_KEYS = ("seed", "model.noise_scale")  # the keys in which runs trained together differ


class Run(NamedTuple):
    config: ml_collections.ConfigDict
    workdir: Path
    name: str = ""  # shown in progress lines and figure titles


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    dataset: Dataset | None = None,
    name: str = "",
    force: bool = False,
) -> list[dict]:
    """Train ``config`` in ``workdir``, resuming from its newest valid checkpoint, then
    evaluate it (``eval.after_training``); return the history (one record per epoch, the lines
    of ``metrics.jsonl``; losses in nats per image).

    ``dataset`` (uint8 images, see :class:`vae_jax.data.Dataset`) replaces the one that
    ``config.data`` names. ``force`` starts anew: a run already in ``workdir`` is first moved
    aside to ``<workdir>.old-<time>``. Bad input raises :class:`ConfigError`, :class:`DataError`
    or :class:`WorkdirError` before anything is written; a stop request raises
    :class:`TrainingInterrupted` after saving a checkpoint; a NaN raises
    :class:`NonFiniteError` with the newest checkpoint intact.
    """
    histories = train_together([Run(config, Path(workdir), name)], dataset, force)
    assert histories is not None  # a single run is always at one step
    return histories[0]


def train_together(
    runs: list[Run], dataset: Dataset | None = None, force: bool = False
) -> list[list[dict]] | None:
    """Train and evaluate ``runs`` as :func:`train_and_evaluate` does, all in one program;
    return their histories. Returns None, having written nothing, when their newest
    checkpoints are at different steps (they then have to be trained one by one)."""
    mesh = parallel.make_mesh()
    check_runs(runs, mesh, force)
    workdirs = [Workdir(r.workdir) for r in runs]
    with contextlib.ExitStack() as cleanup:
        for w in workdirs:
            cleanup.callback(w.unlock)
            if w.path.exists():
                w.lock()  # refuse at once if another process is training here
        newest = [
            _restore_newest(w, r.config, mesh, cleanup, force)
            for r, w in zip(runs, workdirs, strict=True)
        ]
        if len({restored.step if restored else 0 for _, restored in newest}) > 1:
            return None
        histories = [restored.meta["history"] if restored else [] for _, restored in newest]
        if all(len(h) >= r.config.train.num_epochs for h, r in zip(histories, runs, strict=True)):
            for w, h in zip(workdirs, histories, strict=True):
                print(f"Run in {w.path} is finished ({len(h)} epochs).")
        else:
            if dataset is None:
                dataset = load_dataset(runs[0].config.data)
            histories = _train(runs, workdirs, newest, dataset, mesh, force, cleanup)
        for run, w, history in zip(runs, workdirs, histories, strict=True):
            if not is_finished(history, evaluated_step(w.path), run.config):
                _writing_to(w, lambda w=w: evaluate_run(w.path, dataset=dataset))
        return histories


def is_finished(
    history: list[dict], evaluated: int | None, config: ml_collections.ConfigDict
) -> bool:
    """Trained to ``train.num_epochs`` and, when ``eval.after_training`` asks for it, evaluated
    (``evaluated``: the step of ``eval.json``) at its newest step."""
    if len(history) < config.train.num_epochs:
        return False
    return not config.eval.after_training or evaluated == history[-1]["step"]


def together_key(config: ml_collections.ConfigDict) -> str:
    """Runs with the same key can train together (their arrays have the same shapes)."""
    flat = flatten(config)
    return json.dumps({k: v for k, v in flat.items() if k not in TOGETHER_KEYS}, default=str)


def check_runs(runs: list[Run], mesh: Mesh, force: bool) -> None:
    """Valid configs whose batches divide over the devices, in workdirs that are free for them
    (or hold the same run); several runs only if they differ in :data:`TOGETHER_KEYS` alone."""
    for run in runs:
        validate(run.config)
        parallel.check_divisible(run.config.train.batch_size, mesh, "train.batch_size")
        parallel.check_divisible(run.config.eval.batch_size, mesh, "eval.batch_size")
        workdir = Workdir(run.workdir)
        workdir.check()
        if not force and (saved := workdir.saved_config()) is not None:
            check_resumable(saved, run.config, workdir.config_path)
    if len(runs) > 1:
        if len({together_key(r.config) for r in runs}) != 1:
            raise ConfigError(
                f"runs trained together may differ only in {', '.join(TOGETHER_KEYS)}"
            )
        if jax.process_count() > 1:
            raise ConfigError("training runs together is single-process; use --shard across hosts")


def _restore_newest(
    workdir: Workdir,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    cleanup: contextlib.ExitStack,
    force: bool,
) -> tuple[Checkpointer | None, Restored | None]:
    """The run's checkpointer and newest valid checkpoint; ``(None, None)`` without a
    checkpoints folder (nothing is created) or with ``force``."""
    if force or not workdir.checkpoints.is_dir():
        return None, None
    checkpointer = Checkpointer(workdir.checkpoints, config.checkpoint.max_to_keep)
    cleanup.callback(checkpointer.close)
    return checkpointer, checkpointer.restore_latest_valid(checkpoint_like_for(config, mesh))


def _train(
    runs: list[Run],
    workdirs: list[Workdir],
    newest: list[tuple[Checkpointer | None, Restored | None]],
    dataset: Dataset,
    mesh: Mesh,
    force: bool,
    cleanup: contextlib.ExitStack,
) -> list[list[dict]]:
    config = runs[0].config
    check_dataset(dataset, config.train.batch_size)
    for (_, restored), w in zip(newest, workdirs, strict=True):
        _check_images(dataset, restored, w)
    model = _model(config, dataset.image_shape)
    tx = optimizer_for(config, len(dataset.train_images))
    # --- nothing was written before this line (but the lock of an existing workdir) ---
    members = []
    for run, w, (checkpointer, restored) in zip(runs, workdirs, newest, strict=True):
        if force and (moved := w.move_aside()) is not None:
            w.unlock()
            print(f"--force: moved the previous run in {w.path} to {moved}")
        _create(w, run.config, model, tx, dataset.image_shape, mesh)
        if checkpointer is None:
            checkpointer = Checkpointer(w.checkpoints, run.config.checkpoint.max_to_keep)
            cleanup.callback(checkpointer.close)
        members.append(loop.Member(run.config, w, run.name, checkpointer, restored))
    return _writing_to(workdirs[0], lambda: loop.train(members, model, tx, mesh, dataset))


def _check_images(dataset: Dataset, restored: Restored | None, w: Workdir) -> None:
    """The images must be those the restored run saw."""
    if restored is not None and tuple(restored.meta["image_shape"]) != dataset.image_shape:
        raise DataError(
            f"images are {dataset.image_shape}, but the run in {w.path} was trained on "
            f"{tuple(restored.meta['image_shape'])}"
        )


def _model(config: ml_collections.ConfigDict, image_shape: tuple[int, ...]) -> VAE:
    try:
        return make_model(image_shape, **config.model)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _create(
    w: Workdir,
    config: ml_collections.ConfigDict,
    model: VAE,
    tx: optax.GradientTransformation,
    image_shape: tuple[int, ...],
    mesh: Mesh,
) -> None:
    """Lock and create the workdir, checking room for the run's checkpoints."""
    if not w.locked:
        w.lock()
    like = checkpoint_like(model, tx, image_shape, parallel.replicated(mesh))
    size = sum(s.size * s.dtype.itemsize for s in jax.tree.leaves(like))
    w.create(to_saved(config), size, config.checkpoint.max_to_keep)


def _writing_to(w: Workdir, work):
    """``work()``, with a failure to write a figure, metrics.jsonl or an event file turned into
    :class:`OutputError` naming the newest valid checkpoint."""
    try:
        return work()
    except OSError as e:
        steps = Checkpointer.steps_in(w.checkpoints)
        newest = f"step {steps[-1]}; rerunning the command resumes from it" if steps else "none"
        raise OutputError(
            f"could not write to the workdir: {e}. Check free space and permissions in "
            f"{w.path}; the newest valid checkpoint is {newest}."
        ) from e
