"""Several runs trained together: one compiled step, ``jax.vmap``-ed over their states.

The runs' configs may differ only in ``seed`` and ``model.noise_scale``; each run keeps its own
workdir, checkpoints, metrics and figures, written as
:func:`vae_jax.training.loop.train_and_evaluate`
writes them, so any of them can later be resumed, evaluated or extended on its own.
"""

from __future__ import annotations

from pathlib import Path

import jax
import ml_collections

from vae_jax import data as data_lib
from vae_jax import parallel
from vae_jax.errors import ConfigError
from vae_jax.evaluation import run as run_eval
from vae_jax.outputs.checkpoints import Checkpointer
from vae_jax.outputs.workdir import Workdir
from vae_jax.sweeps.runner import group_key
from vae_jax.training.loop import (
    Member,
    check_config,
    create_workdir,
    model_for,
    restore_newest,
    train_members,
)


def train_group(
    runs: list[tuple[ml_collections.ConfigDict, Path, str]], dataset: data_lib.Dataset
) -> bool:
    """Train ``(config, workdir, name)`` runs together to their last epoch, resuming them
    from their checkpoints, then evaluate each (``eval.after_training``).

    Returns False, having written nothing, when their newest checkpoints are at different
    steps (they then have to be trained one by one). Raises :class:`NonFiniteError` naming
    the run whose loss went non-finite; every run's newest checkpoint is then intact.
    """
    configs = [c for c, _, _ in runs]
    if len({group_key(c) for c in configs}) != 1:
        raise ConfigError("runs trained together may differ only in seed and model.noise_scale")
    if jax.process_count() > 1:
        raise ConfigError("training runs together is single-process; use --shard across hosts")
    mesh = parallel.make_mesh()
    config = configs[0]
    for c in configs:
        check_config(c, mesh)
    workdirs = [Workdir(Path(p)) for _, p, _ in runs]
    checkpointers: list[Checkpointer | None] = [None] * len(runs)
    try:
        restored = []
        for i, (c, run) in enumerate(zip(configs, workdirs, strict=True)):
            run.check(c)
            if run.path.exists():
                run.lock()
            checkpointers[i], newest = restore_newest(run, c, mesh)
            restored.append(newest)
        if len({r.step if r else 0 for r in restored}) > 1:
            return False
        # one model for all (same shapes); each restored run must have seen these images
        models = [
            model_for(c, dataset, r, run)
            for c, r, run in zip(configs, restored, workdirs, strict=True)
        ]
        model = models[0]
        members = []
        for i, ((c, _, name), run) in enumerate(zip(runs, workdirs, strict=True)):
            create_workdir(run, c, dataset.image_shape, mesh)
            if checkpointers[i] is None:
                checkpointers[i] = Checkpointer(run.checkpoints, c.checkpoint.max_to_keep)
            members.append(Member(c, run, name, checkpointers[i], restored[i]))
        if restored[0] is None or len(restored[0].meta["history"]) < config.train.num_epochs:
            train_members(members, mesh, dataset, model)
        last_step = config.train.num_epochs * (len(dataset.train_images) // config.train.batch_size)
        for c, run in zip(configs, workdirs, strict=True):
            if c.eval.after_training and not run_eval.is_current(run.path, last_step):
                run_eval.evaluate_run(run.path, dataset=dataset)
        return True
    finally:
        for checkpointer in checkpointers:
            if checkpointer is not None:
                checkpointer.close()
        for run in workdirs:
            run.unlock()
