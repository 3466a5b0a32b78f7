"""A run's working directory: its layout, its lock, and the checks made before writing into it.

The check of a run's config against the one saved here (the resume diff) is
:func:`vae_jax.config.check_resumable`.

Layout: ``config.json`` (the resolved config), ``metrics.jsonl``, ``tensorboard/``,
``checkpoints/`` (Orbax), ``figures/`` (PNGs), ``eval.json`` (``eval_step_<N>.json``),
``curve.json``, ``.lock``. Only this class knows the names; everything else asks it.

One process at a time: :meth:`Workdir.lock` takes an exclusive ``flock`` on ``.lock``, which the
kernel releases when the process ends however it ends, so a crashed run never leaves a stale
lock (on network filesystems without flock support, don't run two processes on one workdir).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path

import jax

from vae_jax.atomic_io import write_json
from vae_jax.errors import ConfigError, WorkdirError

LOCK_NAME = ".lock"


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def is_writer() -> bool:
    """Only process 0 writes the workdir (config, metrics, figures, lock); in a multi-process
    run the others compute alongside it and take part in the collective checkpoint saves."""
    return jax.process_index() == 0


class Workdir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.config_path = self.path / "config.json"
        self.metrics = self.path / "metrics.jsonl"
        self.tensorboard = self.path / "tensorboard"
        self.checkpoints = self.path / "checkpoints"
        self.figures = self.path / "figures"
        self.curve_json = self.path / "curve.json"
        self.curve_figure = self.figures / "nll_vs_cpu_minutes.png"
        self._lock_fd: int | None = None
        self._made = False  # this process made the folder (when it took the lock)

    def eval_json(self, step: int | None = None) -> Path:
        """The evaluation of the newest checkpoint, or of checkpoint ``step``."""
        return self.path / ("eval.json" if step is None else f"eval_step_{step}.json")

    def history(self) -> list[dict]:
        """The per-epoch records of ``metrics.jsonl`` (none if it is missing)."""
        return read_jsonl(self.metrics)

    def evaluation(self) -> dict | None:
        """``eval.json`` (the evaluation of the newest checkpoint), if it can be read."""
        try:
            result = json.loads(self.eval_json().read_text())
        except (OSError, ValueError):
            return None
        return result if isinstance(result, dict) else None

    def evaluated_step(self) -> int | None:
        """The checkpoint step that ``eval.json`` describes, if there is one."""
        try:
            return int((self.evaluation() or {})["step"])
        except (KeyError, TypeError, ValueError):
            return None

    def saved_config(self) -> dict | None:
        """The parsed ``config.json``, or None if there is none."""
        if not self.config_path.exists():
            return None
        try:
            return json.loads(self.config_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(
                f"{self.config_path} cannot be read as JSON ({e}); it is damaged. Restore it, "
                "or start anew with --force (the old run is moved aside)"
            ) from None

    def _has_foreign_content(self) -> bool:
        return any(p.name != LOCK_NAME for p in self.path.iterdir())

    def check(self) -> None:
        """Refuse a path that is not a directory, or a non-empty one that holds no run."""
        if not self.path.exists():
            return
        if not self.path.is_dir():
            raise ConfigError(f"workdir {self.path} exists and is not a directory")
        if not self.config_path.exists() and self._has_foreign_content():
            raise ConfigError(
                f"workdir {self.path} is not empty and holds no vae_jax run "
                "(no config.json); choose another --workdir"
            )

    # -----------------------------------------------------------------------------------------
    # Lock

    def lock(self) -> None:
        """Take the workdir's lock (creating the folder), or raise if another process holds it.

        In a multi-process run process 0 holds it for all (the others write nothing here)."""
        if not is_writer():
            self._lock_fd = -1
            return
        try:
            self._made = not self.path.exists()
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise WorkdirError(f"cannot use workdir {self.path}: {e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise WorkdirError(f"cannot lock workdir {self.path}: {e}") from None
            raise WorkdirError(
                f"workdir {self.path} is in use by {holder}. Wait for that run to end, or stop "
                "it (SIGTERM or Ctrl-C saves a checkpoint), then rerun this command."
            ) from None
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()} since {started}\n".encode())
        self._lock_fd = fd

    @property
    def locked(self) -> bool:
        return self._lock_fd is not None

    def unlock(self) -> None:
        if self._lock_fd is not None and self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    # -----------------------------------------------------------------------------------------
    # Starting anew, creating, checking space

    def move_aside(self) -> Path | None:
        """Rename a workdir holding a run to ``<workdir>.old-<time>``; return the new path."""
        if not self.path.exists() or not self._has_foreign_content():
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.path.with_name(f"{self.path.name}.old-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.old-{stamp}-{n}")
        try:
            self.path.rename(target)
        except OSError as e:
            raise WorkdirError(f"cannot move {self.path} aside to {target}: {e}") from None
        return target

    def eval_figures(self, step: int | None = None) -> Path:
        """Where an evaluation draws: ``figures/`` for the newest checkpoint, its own
        ``figures/eval_step_<N>/`` for a chosen step (the newest's are left as they are)."""
        return self.figures if step is None else self.figures / f"eval_step_{step}"

    def check_writable(self, *folders: Path) -> None:
        """Refuse, before anything is computed or written, folders that cannot be written."""
        for folder in (self.path, *folders):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                probe = folder / f".write-probe-{os.getpid()}"
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as e:
                raise WorkdirError(f"cannot write to {folder}: {e}") from None

    def create(self, config_json: dict, checkpoint_bytes: int, max_to_keep: int) -> None:
        """Make the folders, check that they are writable and have room for ``max_to_keep``
        checkpoints, and write ``config.json`` (the resolved config). A workdir that this
        process made and then refuses is removed again: nothing is left behind."""
        if not is_writer():
            return
        try:
            self._create(config_json, checkpoint_bytes, max_to_keep)
        except WorkdirError:
            if self._made:
                self.unlock()
                shutil.rmtree(self.path, ignore_errors=True)
            raise

    def _create(self, config_json: dict, checkpoint_bytes: int, max_to_keep: int) -> None:
        try:
            self.figures.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-probe"
            with open(probe, "wb") as f:
                f.write(b"\0" * 4096)
                f.flush()
                os.fsync(f.fileno())
            probe.unlink()
        except OSError as e:
            raise WorkdirError(f"workdir {self.path} is not writable: {e}") from None
        keep = max_to_keep
        need = (keep + 1) * checkpoint_bytes + 16 * 2**20  # + figures, metrics, events
        free = shutil.disk_usage(self.path).free
        if free < need:
            raise WorkdirError(
                f"workdir {self.path} has {free / 2**20:.1f} MiB free; this run needs about "
                f"{need / 2**20:.1f} MiB ({keep} + 1 checkpoints of {checkpoint_bytes / 2**20:.1f} "
                "MiB, plus figures and metrics). Free some space or choose another --workdir."
            )
        try:
            write_json(self.config_path, config_json)
        except OSError as e:
            raise WorkdirError(f"cannot write {self.config_path}: {e}") from None
