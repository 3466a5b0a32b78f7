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

from vae_jax.errors import CheckpointError, ConfigError, VaeJaxError

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


def _orbax_leftover(exc: BaseException | None, obj: Any = None) -> bool:
    """Is this the report of a read that Orbax abandoned after a failed restore: an array read
    (a coroutine of Orbax or TensorStore) that failed, or a TensorStore callback that found
    Orbax's event loop closed?"""
    code = getattr(obj, "cr_code", None)
    if code is not None and ("orbax" in code.co_filename or "tensorstore" in code.co_filename):
        return True
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        return True
    if exc is not None and any(s in str(exc) for s in ("OCDBT database", "TensorStore")):
        return True  # a TensorStore read of the checkpoint's files
    tb = exc.__traceback__ if exc is not None else None
    while tb is not None:
        if "orbax" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _quiet_abandoned_reads() -> None:
    """When a restore fails, Orbax leaves the reads of the other arrays running: they fail
    later, in TensorStore's threads or when the garbage collector finds them, each with a
    traceback. The failure is reported in one line, so this process drops those reports (and
    only those) from the first restore on."""
    unraisable, excepthook = sys.unraisablehook, sys.excepthook
    if getattr(unraisable, "vae_jax_quiet", False):
        return

    def quiet_unraisable(report) -> None:
        if not _orbax_leftover(report.exc_value, report.object):
            unraisable(report)

    def quiet_excepthook(kind, value, tb) -> None:
        if not _orbax_leftover(value):
            excepthook(kind, value, tb)

    quiet_unraisable.vae_jax_quiet = True  # type: ignore[attr-defined]
    sys.unraisablehook, sys.excepthook = quiet_unraisable, quiet_excepthook
    logging.getLogger("asyncio").addFilter(_DropAbandonedTasks())


class _DropAbandonedTasks(logging.Filter):
    """asyncio's "Task exception was never retrieved" for an abandoned Orbax read."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (_orbax_leftover(exc) or "orbax" in record.getMessage())


class _DropReadOnlyNotices(logging.Filter):
    """Orbax warns that a ``read_only`` manager is read only; for a reader that is the point."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("read_only=True" in text or "directory is read only" in text)


def _shapes_by_path(tree: Any) -> dict[str, tuple]:
    """``{'train_state/params/encoder/mean/kernel': (1568, 20), ...}`` of a pytree of arrays,
    shape structs or Orbax array metadata (which stores named tuples as dicts)."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
        out["/".join(names)] = tuple(getattr(leaf, "shape", ()))
    return out


def _damaged(path: Path, reason: str, maybe: str = "") -> CheckpointError:
    """The error of a checkpoint that cannot be restored, its ``reason`` kept apart."""
    alternative = f"{maybe} while it was read " if maybe else ""
    error = CheckpointError(f"checkpoint {path} is damaged {alternative}({reason})")
    error.reason = reason  # type: ignore[attr-defined]
    return error


def _short(e: BaseException) -> str:
    """An error in one short line (TensorStore appends its whole spec to its messages)."""
    text = f"{type(e).__name__}: {e}".strip().splitlines()[0].split(" See full TensorStore")[0]
    return text if len(text) <= 200 else text[:200] + "..."


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
        _quiet_abandoned_reads()
        try:
            shapes = shapes_for(self.restore_meta(step))
            self._check_shapes(step, shapes)
            state, meta = self._restore(step, shapes)
        except VaeJaxError:
            raise  # shapes_for refused the checkpoint: e.g. a run of other images
        except Exception as e:  # Orbax, JSON, missing files: all say the same to the user
            gc.collect()  # the abandoned reads, quietly now rather than at some later moment
            raise _damaged(self.directory / str(step), _short(e), "or was rotated away") from e
        if tree_sha256(state) != meta["sha256"]:
            raise _damaged(self.directory / str(step), "its arrays do not match their sha256")
        return Restored(step, state, meta)

    def _check_shapes(self, step: int, shapes: Any) -> None:
        """Refuse, before any array is read, a checkpoint whose arrays have other shapes than
        the config describes: its run's config.json was changed after training, or the
        checkpoint is another run's. (Unreadable metadata is left to the restore, which then
        reports the checkpoint as damaged.)"""
        absl_logger = logging.getLogger("absl")
        level = absl_logger.level
        absl_logger.setLevel(logging.ERROR)  # "Metadata file does not exist": not ours to say
        try:
            reader = ocp.StandardCheckpointer()
            try:
                stored = reader.metadata(self.directory / str(step) / "state").item_metadata
            finally:
                reader.close()
            saved = _shapes_by_path(stored)
        except Exception:
            return
        finally:
            absl_logger.setLevel(level)
        wanted = _shapes_by_path(shapes)
        differ = [k for k, shape in wanted.items() if k in saved and saved[k] != shape]
        if differ:
            first = differ[0]
            more = f", and {len(differ) - 1} more" if len(differ) > 1 else ""
            raise ConfigError(
                f"checkpoint {self.directory / str(step)} holds arrays of other shapes than the "
                f"run's config describes ({first}: {saved[first]} saved, {wanted[first]} from "
                f"the config{more}): the run's config.json was changed after training, or the "
                "checkpoint is another run's. Restore the values it was trained with, or train "
                "anew with --force"
            )

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
                    if self._rotated_away(step):
                        break  # start over from the newest
                    print(
                        f"warning: checkpoint {self.directory / str(step)} is damaged "
                        f"({getattr(e, 'reason', e)}); falling back to an older one",
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
