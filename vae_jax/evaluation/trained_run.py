"""Loading a trained run back: its config, model and verified train state."""

from __future__ import annotations

from pathlib import Path

import jax
import ml_collections
from jax.sharding import Mesh

from vae_jax import config as config_lib
from vae_jax import parallel
from vae_jax.core.models import VAE, make_model
from vae_jax.core.train_step import TrainState, abstract_state, replicated_like, zero_sums
from vae_jax.errors import ConfigError
from vae_jax.outputs.checkpoints import Checkpointer
from vae_jax.outputs.workdir import Workdir


def saved_like(config: ml_collections.ConfigDict, meta: dict, mesh: Mesh) -> dict:
    """The pytree a checkpoint holds, as shapes, dtypes and shardings."""
    return {
        "train_state": abstract_state(config, tuple(meta["image_shape"]), mesh),
        "epoch_sums": replicated_like(jax.eval_shape(zero_sums), mesh),
    }


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
    mesh = mesh or parallel.make_mesh()
    checkpointer = Checkpointer(run.checkpoints, config.checkpoint.max_to_keep, read_only=True)
    try:
        like_for = lambda meta: saved_like(config, meta, mesh)  # noqa: E731
        if step is None:
            restored = checkpointer.restore_latest_valid(like_for)
        else:
            restored = checkpointer.restore(step, like_for)
    finally:
        checkpointer.close()
    if restored is None:
        raise ConfigError(f"{run.path} has no checkpoint yet")
    image_shape = tuple(restored.meta["image_shape"])
    model = make_model(config.model, image_shape)
    return config, model, restored.state["train_state"], restored.meta
