"""A trained run loaded back from its workdir: its config, model and verified train state."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import ml_collections
from jax.sharding import Mesh

from vae_jax import config as config_lib
from vae_jax import parallel
from vae_jax.core.models import VAE, make_model
from vae_jax.core.train_step import TrainState, checkpoint_like, make_optimizer
from vae_jax.errors import ConfigError
from vae_jax.outputs.checkpoints import Checkpointer
from vae_jax.outputs.workdir import Workdir


def checkpoint_like_for(config: ml_collections.ConfigDict, mesh: Mesh) -> Callable[[dict], dict]:
    """``meta -> `` the pytree a checkpoint of this config holds, as shapes, dtypes and
    (replicated) shardings, for the image shape its ``meta`` records."""
    tx = make_optimizer(config.train.learning_rate)
    repl = parallel.replicated(mesh)

    def like(meta: dict) -> dict:
        shape = tuple(meta["image_shape"])
        return checkpoint_like(make_model(shape, **config.model), tx, shape, repl)

    return like


def restore_run(
    workdir: str | Path, step: int | None = None, mesh: Mesh | None = None
) -> tuple[ml_collections.ConfigDict, VAE, TrainState, dict]:
    """``(config, model, state, meta)`` of the run in ``workdir``: its newest valid checkpoint,
    or ``step``. Raises :class:`ConfigError` if there is none."""
    run = Workdir(Path(workdir))
    if not run.path.is_dir():
        raise ConfigError(f"there is no run at {run.path}: train one there first (make train)")
    saved = run.saved_config()
    if saved is None:
        raise ConfigError(f"{run.path} holds no vae_jax run (no config.json)")
    config = config_lib.from_json_dict(saved)
    if not run.checkpoints.is_dir():
        raise ConfigError(f"{run.path} has no checkpoint yet")
    like = checkpoint_like_for(config, mesh or parallel.make_mesh())
    checkpointer = Checkpointer(run.checkpoints, config.checkpoint.max_to_keep, read_only=True)
    try:
        restored = (
            checkpointer.restore_latest_valid(like)
            if step is None
            else checkpointer.restore(step, like)
        )
    finally:
        checkpointer.close()
    if restored is None:
        raise ConfigError(f"{run.path} has no checkpoint yet")
    model = make_model(tuple(restored.meta["image_shape"]), **config.model)
    return config, model, restored.state["train_state"], restored.meta
