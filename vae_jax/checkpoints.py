"""Orbax checkpoints of the train state plus a JSON record of the run's progress.

Each checkpoint is a step folder in ``<workdir>/checkpoints`` with two items: ``state`` (the
:class:`~vae_jax.train.TrainState` pytree: step, params, optimizer state, root key) and
``meta`` (JSON: epoch, step, the per-epoch metrics history and the resolved config). Orbax
writes a step into a temporary folder and renames it when complete, and deletes the oldest only
after a newer one is finished, keeping ``max_to_keep``. Saves are synchronous: when ``save``
returns, the checkpoint is on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, directory: Path, max_to_keep: int):
        self.manager = ocp.CheckpointManager(
            Path(directory).absolute(),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
            ),
            item_names=("state", "meta"),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )
        self.manager.wait_until_finished()

    def restore(self, step: int, like: Any) -> tuple[Any, dict]:
        """State (with the shapes, dtypes and shardings of ``like``: arrays or
        ``ShapeDtypeStruct``s) and meta at ``step``."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], restored["meta"]

    def restore_meta(self, step: int) -> dict:
        """Only the JSON record of ``step`` (cheap: no arrays are read)."""
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return restored["meta"]

    def close(self) -> None:
        self.manager.close()
