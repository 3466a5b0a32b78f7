"""Verified Orbax checkpoints of the training loop's state, with fallback past damaged ones.

Each checkpoint is a step folder in ``<workdir>/checkpoints`` holding two items: ``state`` (a
pytree: the :class:`~vae_jax.core.train_step.TrainState` and the running sums of the epoch's
metrics) and ``meta`` (JSON: epoch, step, image shape, the per-epoch metrics history, and the
sha256 of the state's bytes).

Guarantees:

- Orbax writes a step into a temporary folder and renames it when complete, so a crash during a
  save leaves no folder that looks like a checkpoint; leftovers are removed on the next start.
- After a save the checkpoint is read back and its sha256 compared, and only then are checkpoints
  beyond ``max_to_keep`` deleted (oldest first): an older checkpoint is never deleted before a
  newer one is complete and readable.
- :meth:`Checkpointer.restore_latest_valid` tries the newest checkpoint first and falls back,
  with a warning, past any that fails to read or to match its sha256.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from vae_jax.errors import CheckpointError, VaeJaxError

ROTATION_RETRIES = 20


class Restored(NamedTuple):
    step: int
    state: Any  # the pytree that was saved
    meta: dict


def tree_sha256(tree: Any) -> str:
    """sha256 of every leaf's dtype, shape and bytes, in tree order."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(jax.device_get(tree)):
        a = np.ascontiguousarray(leaf)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.data)
    return h.hexdigest()


def _collect_abandoned_reads() -> None:
    """After a failed restore, Orbax leaves the reads of the other arrays as unfinished
    coroutines; collect them now, quietly, instead of letting them print "Exception ignored"
    whenever the garbage collector happens to find them later."""
    hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    try:
        gc.collect()
    finally:
        sys.unraisablehook = hook


class _DropReadOnlyNotices(logging.Filter):
    """Orbax warns that a ``read_only`` manager is read only; for a reader that is the point."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("read_only=True" in text or "directory is read only" in text)


def _short(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip().splitlines()[0]
    return text if len(text) <= 300 else text[:300] + "..."


class Checkpointer:
    """``read_only`` for readers (evaluation, tests): they must not clean up the temporary
    folder of a save that the training process has in flight."""

    def __init__(self, directory: Path, max_to_keep: int, read_only: bool = False):
        self.directory = Path(directory).absolute()
        self.max_to_keep = max_to_keep
        quiet = _DropReadOnlyNotices()
        absl_logger = logging.getLogger("absl")
        absl_logger.addFilter(quiet)
        try:
            self.manager = self._manager(read_only)
        finally:
            absl_logger.removeFilter(quiet)

    def _manager(self, read_only: bool) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=None,  # deleted by us, after the newer one is verified
                create=not read_only,
                read_only=read_only,
                enable_async_checkpointing=False,
                cleanup_tmp_directories=not read_only,
            ),
            item_names=("state", "meta"),
        )

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    @classmethod
    def steps_in(cls, directory: Path) -> list[int]:
        """The steps of the complete checkpoints in ``directory`` (none if it is missing)."""
        if not Path(directory).is_dir():
            return []
        reader = cls(directory, max_to_keep=1, read_only=True)
        try:
            return reader.steps()
        finally:
            reader.close()

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Save, read back and verify, then delete checkpoints beyond ``max_to_keep``.

        Raises :class:`CheckpointError` (naming the newest valid checkpoint) if the save or its
        verification fails; an unverified checkpoint is removed, never left to look valid.
        """
        meta = {**meta, "sha256": tree_sha256(state)}
        previous = [s for s in self.steps() if s != step]
        try:
            if step in self.steps():  # e.g. an epoch end and a stop request at the same step
                self.manager.delete(step)
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                ),
                force=True,
            )
            self.manager.wait_until_finished()
            self._verify(step, state, meta["sha256"])
        except Exception as e:
            self._discard(step)
            newest = f"step {previous[-1]}" if previous else "none"
            raise CheckpointError(
                f"could not write a valid checkpoint at step {step} in {self.directory} "
                f"({_short(e)}). Check free space and permissions there; the newest valid "
                f"checkpoint is {newest}, and rerunning the command resumes from it."
            ) from e
        for old in self.steps()[: -self.max_to_keep]:
            try:
                self.manager.delete(old)
            except Exception as e:  # the run is safe: newer checkpoints exist
                print(
                    f"warning: could not delete old checkpoint {old}: {_short(e)}", file=sys.stderr
                )

    def _verify(self, step: int, state: Any, sha256: str) -> None:
        shapes = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        restored, meta = self._restore(step, shapes)
        if tree_sha256(restored) != sha256 or meta.get("sha256") != sha256:
            raise CheckpointError("read back different bytes than were written")

    def _discard(self, step: int) -> None:
        try:
            self.manager.reload()
            if step in self.steps():
                self.manager.delete(step)
        except Exception:
            pass  # an unfinished save is a temporary folder, removed on the next start

    def _restore(self, step: int, shapes: Any) -> tuple[Any, dict]:
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(shapes), meta=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], restored["meta"]

    def restore_meta(self, step: int) -> dict:
        """Only the JSON record of ``step`` (no arrays are read)."""
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return restored["meta"]

    def restore(self, step: int, shapes_for: Callable[[dict], Any]) -> Restored:
        """Checkpoint ``step``, verified against its sha256. ``shapes_for(meta)`` gives the
        shapes, dtypes and shardings to restore into."""
        try:
            state, meta = self._restore(step, shapes_for(self.restore_meta(step)))
        except VaeJaxError:
            raise  # shapes_for refused the checkpoint: e.g. a run of other images
        except Exception as e:  # Orbax, JSON, missing files: all say the same to the user
            raise CheckpointError(
                f"checkpoint {self.directory / str(step)} cannot be read ({_short(e)}); it is "
                "damaged or was rotated away while it was read"
            ) from e
        if tree_sha256(state) != meta["sha256"]:
            raise CheckpointError(f"checkpoint {step}: its arrays do not match their sha256")
        return Restored(step, state, meta)

    def restore_latest_valid(self, shapes_for: Callable[[dict], Any]) -> Restored | None:
        """The newest checkpoint that reads back and matches its sha256, or None if there are
        none at all. Raises :class:`CheckpointError` when checkpoints exist but none is valid.

        A checkpoint that vanishes while it is read was rotated away by a run saving a newer
        one (evaluation beside training): the newest ones are then tried again, quietly."""
        for _ in range(ROTATION_RETRIES):
            steps = self.steps()
            for step in reversed(steps):
                try:
                    return self.restore(step, shapes_for)
                except CheckpointError as e:
                    _collect_abandoned_reads()
                    if self._rotated_away(step):
                        break  # start over from the newest
                    print(
                        f"warning: checkpoint {self.directory / str(step)} is damaged "
                        f"({_short(e)}); falling back to an older one",
                        file=sys.stderr,
                    )
            else:
                if steps:
                    raise CheckpointError(
                        f"none of the checkpoints in {self.directory} (steps "
                        f"{', '.join(map(str, steps))}) can be read. Move the workdir aside, or "
                        "start anew in it with --force (which moves the old run aside)."
                    )
                return None
        raise CheckpointError(
            f"the checkpoints in {self.directory} were rotated away {ROTATION_RETRIES} times "
            "while being read (a run saving very often?); try again"
        )

    def _rotated_away(self, step: int) -> bool:
        try:
            self.manager.reload()
        except Exception:
            return False
        return step not in self.steps()

    def close(self) -> None:
        self.manager.close()
