"""What a run writes besides checkpoints: config.json, metrics.jsonl, TensorBoard events.

Every file is written atomically (see :mod:`vae_jax.atomic_io`). Only process 0 writes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import jax

from vae_jax.atomic_io import atomic_write_text


def is_writer() -> bool:
    return jax.process_index() == 0


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


PERF_KEYS = ("images_per_sec", "train_seconds", "eval_seconds")


def tensorboard_scalars(record: dict) -> dict[str, float]:
    """``train_loss_nats`` -> ``train/loss_nats`` (likewise test_*), throughput under perf/."""
    out = {k.replace("_", "/", 1): v for k, v in record.items() if k.endswith("_nats")}
    out.update({f"perf/{k}": record[k] for k in PERF_KEYS if k in record})
    return out


class MetricsWriter:
    """Per-epoch records to ``metrics.jsonl`` (rewritten whole) and TensorBoard scalars."""

    def __init__(self, workdir: Path):
        self.path = workdir / "metrics.jsonl"
        self._tb_dir = workdir / "tensorboard"
        self._tb = None

    def write(self, history: Sequence[dict]) -> None:
        """Make metrics.jsonl hold exactly ``history``; send the last record to TensorBoard."""
        if not is_writer():
            return
        atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in history))
        if history:
            self._scalars(history[-1])

    def _scalars(self, record: dict) -> None:
        from tensorboardX import SummaryWriter

        if self._tb is None:
            self._tb = SummaryWriter(logdir=str(self._tb_dir))
        for tag, value in tensorboard_scalars(record).items():
            self._tb.add_scalar(tag, value, record["epoch"])
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
