"""What a run measures and writes each epoch: ``metrics.jsonl`` and TensorBoard events.

Every file is written atomically (see :mod:`vae_jax.atomic_io`). Only process 0 writes.
"""

from __future__ import annotations

import json
import resource
import sys
from collections.abc import Sequence
from pathlib import Path

from vae_jax.atomic_io import atomic_write_text
from vae_jax.outputs.workdir import is_writer


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


def peak_host_memory_bytes() -> int:
    """The peak resident memory of this process so far."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB
