"""What a run measures and writes each epoch: ``metrics.jsonl`` and TensorBoard events.

Every file is written atomically (see :mod:`vae_jax.atomic_io`). Only process 0 writes.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vae_jax.atomic_io import atomic_write_text
from vae_jax.outputs.workdir import is_writer

PERF_KEYS = ("images_per_sec", "train_seconds", "eval_seconds")


def tensorboard_scalars(record: dict) -> dict[str, float]:
    """``train_loss_nats`` -> ``train/loss_nats`` (likewise test_*), throughput under perf/."""
    out = {k.replace("_", "/", 1): v for k, v in record.items() if k.endswith("_nats")}
    out.update({f"perf/{k}": record[k] for k in PERF_KEYS if k in record})
    return out


class MetricsWriter:
    """Per-epoch records to ``metrics.jsonl`` (rewritten whole); to TensorBoard the same scalars,
    the running train loss every ``log_every_steps``, image grids per epoch and, at the end, the
    hyperparameters with the final metrics (``tensorboard --logdir runs``)."""

    def __init__(self, path: Path, tensorboard_dir: Path):
        self.path = path
        self._tb_dir = tensorboard_dir
        self._tb = None

    def write(self, history: Sequence[dict]) -> None:
        """Make metrics.jsonl hold exactly ``history``; send the last record to TensorBoard."""
        if not is_writer():
            return
        atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in history))
        if history:
            for tag, value in tensorboard_scalars(history[-1]).items():
                self._board().add_scalar(tag, value, history[-1]["epoch"])
            self._board().flush()

    def write_losses(self, losses: Sequence[tuple[int, float]]) -> None:
        """``(step, mean train loss of the epoch so far)`` points."""
        if is_writer():
            for step, loss in losses:
                self._board().add_scalar("train/loss_running_nats", loss, step)

    def write_images(self, epoch: int, grids: dict[str, np.ndarray]) -> None:
        """uint8 image grids (grayscale or RGB), e.g. this epoch's reconstructions."""
        if is_writer():
            for tag, grid in grids.items():
                self._board().add_image(
                    tag, grid, epoch, dataformats="HW" if grid.ndim == 2 else "HWC"
                )
            self._board().flush()

    def write_hparams(self, config: dict[str, Any], record: dict) -> None:
        """The run's settings (flat) beside its final metrics, for TensorBoard's HPARAMS tab."""
        if not is_writer():
            return
        hparams = {
            k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in config.items()
        }
        metrics = {f"hparam/{k}": v for k, v in tensorboard_scalars(record).items()}
        self._board().add_hparams(hparams, metrics, name="hparams", global_step=record["epoch"])

    def _board(self):
        from tensorboardX import SummaryWriter

        if self._tb is None:
            self._tb = SummaryWriter(logdir=str(self._tb_dir))
        return self._tb

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def peak_host_memory_bytes() -> int:
    """The peak resident memory of this process so far."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity where the OS says it, else all)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
