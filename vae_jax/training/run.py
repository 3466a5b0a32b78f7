"""A run from start to end, as in the flax examples: ``train_and_evaluate(config, workdir)``.

:func:`train_together` reads top to bottom: check the configs and workdirs -> restore the
newest valid checkpoints -> load the data -> build the parts (:mod:`vae_jax.parts`) -> train
(:mod:`vae_jax.training.loop`) -> evaluate the parameters in memory
(:mod:`vae_jax.evaluation.run`). A single run is a group of one; runs whose configs differ only
in ``seed`` and ``model.noise_scale`` (a sweep's) go the same path together: one compiled step
vmapped over them, each run with its own workdir, checkpoints, metrics and figures, so that any
of them can later be resumed or evaluated alone.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import NamedTuple

import jax
import ml_collections
from jax.sharding import Mesh

from vae_jax.config.keys import validate
from vae_jax.config.saved import check_resumable, to_saved
from vae_jax.core.settings import flatten
from vae_jax.core.sharding import make_mesh
from vae_jax.data.datasets import load_dataset
from vae_jax.data.images import Dataset, check_dataset, check_image_shape
from vae_jax.errors import ConfigError, OutputError
from vae_jax.evaluation.run import evaluate_trained
from vae_jax.outputs.checkpoints import Checkpointer
from vae_jax.outputs.workdir import Workdir
from vae_jax.parts import Parts, build_parts, check_batches, checkpoint_shapes
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

    ``dataset`` (uint8 images, see :class:`vae_jax.Dataset`) replaces the one that
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
    mesh = make_mesh()
    workdirs = check_runs(runs, mesh, force)
    if dataset is None:
        dataset = load_dataset(runs[0].config.data)
    check_dataset(dataset, runs[0].config.train.batch_size)
    n_train = len(dataset.train_images)
    parts = [build_parts(r.config, dataset.image_shape, mesh, n_train) for r in runs]
    with contextlib.ExitStack() as cleanup:
        members = [
            _restore_newest(p, w, r.name, cleanup, force)
            for p, w, r in zip(parts, workdirs, runs, strict=True)
        ]
        if len({m.restored.step if m.restored else 0 for m in members}) > 1:
            return None
        if all(_trained(m) for m in members):
            trained = [(m.restored.state["train_state"], _history(m)) for m in members]
            for m in members:
                print(f"Run in {m.workdir.path} is finished ({len(_history(m))} epochs).")
        else:
            members = [_create(m, p, force, cleanup) for m, p in zip(members, parts, strict=True)]
            trained = _writing_to(members[0].workdir, lambda: loop.train(parts, members, dataset))
        for m, p, (state, history) in zip(members, parts, trained, strict=True):
            if not is_finished(history, m.workdir.evaluated_step(), m.config):
                meta = {"step": history[-1]["step"], "epoch": len(history)}
                _writing_to(m.workdir, lambda: evaluate_trained(p, state, meta, dataset, m.workdir))  # noqa: B023
        return [history for _, history in trained]


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


def check_runs(runs: list[Run], mesh: Mesh, force: bool) -> list[Workdir]:
    """The runs' workdirs, once their configs are valid, their batches divide over the devices
    (asked before the data are read, so that a bad batch fails at once) and the workdirs are
    free for them (or hold the same run); several runs only if they differ in
    :data:`TOGETHER_KEYS` alone."""
    workdirs = []
    for run in runs:
        validate(run.config)
        check_batches(run.config, mesh, training=True)
        workdir = Workdir(run.workdir)
        workdir.check()
        if not force and (saved := workdir.saved_config()) is not None:
            check_resumable(saved, run.config, workdir.config_path)
        workdirs.append(workdir)
    if len(runs) > 1:
        if len({together_key(r.config) for r in runs}) != 1:
            raise ConfigError(
                f"runs trained together may differ only in {', '.join(TOGETHER_KEYS)}"
            )
        if jax.process_count() > 1:
            raise ConfigError("training runs together is single-process; use --shard across hosts")
    return workdirs


def _restore_newest(
    parts: Parts, workdir: Workdir, name: str, cleanup: contextlib.ExitStack, force: bool
) -> loop.Member:
    """The run, its workdir locked if it exists (another process training there is refused at
    once), its checkpointer and newest valid checkpoint; none without a checkpoints folder
    (nothing is created) or with ``force``."""
    cleanup.callback(workdir.unlock)
    if workdir.path.exists():
        workdir.lock()
    if force or not workdir.checkpoints.is_dir():
        return loop.Member(parts.config, workdir, name, None, None)
    checkpointer = Checkpointer(workdir.checkpoints, parts.config.checkpoint.max_to_keep)
    cleanup.callback(checkpointer.close)

    def shapes(meta: dict) -> dict:  # the images must be those the run was trained on
        what = f"the run in {workdir.path}"
        check_image_shape(parts.image_shape, meta["image_shape"], what)
        return checkpoint_shapes(parts)

    restored = checkpointer.restore_latest_valid(shapes)
    return loop.Member(parts.config, workdir, name, checkpointer, restored)


def _history(member: loop.Member) -> list[dict]:
    return member.restored.meta["history"] if member.restored else []


def _trained(member: loop.Member) -> bool:
    return len(_history(member)) >= member.config.train.num_epochs


def _create(
    member: loop.Member, parts: Parts, force: bool, cleanup: contextlib.ExitStack
) -> loop.Member:
    """Create (or reuse) the run's workdir, locked, with room for its checkpoints and its
    config.json; ``force`` first moves a run already there aside."""
    w = member.workdir
    if force and (moved := w.move_aside()) is not None:
        w.unlock()
        print(f"--force: moved the previous run in {w.path} to {moved}")
    if not w.locked:
        w.lock()
    shapes = checkpoint_shapes(parts)
    size = sum(s.size * s.dtype.itemsize for s in jax.tree.leaves(shapes))
    w.create(to_saved(member.config), size, member.config.checkpoint.max_to_keep)
    if member.checkpointer is not None:
        return member
    checkpointer = Checkpointer(w.checkpoints, member.config.checkpoint.max_to_keep)
    cleanup.callback(checkpointer.close)
    return member._replace(checkpointer=checkpointer)


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
