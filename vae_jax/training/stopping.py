"""SIGTERM/SIGINT as a request to stop after the current step (and save), not a crash, and the
decision to pause (save, stop) at a step, agreed by every process of a multi-process run.

Preemptible VMs and cluster schedulers send SIGTERM before they kill a job; Ctrl-C sends
SIGINT. Inside :class:`StopRequest` the first such signal only sets a flag that the training
loop reads after every step; a second one gets the default behaviour (terminate / raise
KeyboardInterrupt) for a user who does not want to wait for the save.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from types import FrameType

import jax
import numpy as np
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """A context manager; ``signum`` is the first signal received inside it, or None."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # only there can we listen
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        for s in SIGNALS:  # a second signal acts at once
            signal.signal(s, signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL)
        print(
            f"\n{signal.Signals(signum).name}: stopping after the current step and saving a "
            "checkpoint (send it again to stop at once, without saving)",
            file=sys.stderr,
            flush=True,
        )

    @property
    def requested(self) -> bool:
        return self.signum is not None


class Pause:
    """When the step loop pauses (to save, or to stop), the same decision in every process.

    A pause is due every ``every_steps`` steps (the same step everywhere), every
    ``every_seconds`` seconds, and when a signal asked to stop. With one process those are read
    after every step. With several, each has its own clock and its own signals, and a save is a
    collective: they exchange them at every ``sync_steps``-th step (one small all-gather, no
    per-step sync), so that all pause, save and stop at the same step, whichever of them got
    the signal (a scheduler that preempts one host sends SIGTERM to that host only).
    """

    def __init__(
        self, stop: StopRequest, every_steps: int, every_seconds: float, sync_steps: int
    ) -> None:
        self.stop, self.every_steps, self.every_seconds = stop, every_steps, every_seconds
        self.sync_steps = sync_steps
        self.last_save = time.monotonic()
        self.agreed_signum: int | None = None  # a stop all processes agreed on

    @property
    def stopping(self) -> bool:
        """A stop was requested (here, or in another process)."""
        return self.stop.requested if jax.process_count() == 1 else self.agreed_signum is not None

    @property
    def signum(self) -> int | None:
        return self.stop.signum if jax.process_count() == 1 else self.agreed_signum

    def saved(self) -> None:
        self.last_save = time.monotonic()

    def _time_due(self) -> bool:
        return self.every_seconds > 0 and time.monotonic() - self.last_save >= self.every_seconds

    def __call__(self, step: int) -> bool:
        """Pause after global step ``step``?"""
        if self.every_steps > 0 and step % self.every_steps == 0:
            return True
        if jax.process_count() == 1:
            return self.stop.requested or self._time_due()
        if step % self.sync_steps:
            return False
        mine = np.array([self.stop.signum or 0, self._time_due()], np.int32)
        with jax.transfer_guard("allow"):
            every = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1, 2)
        signals = [int(s) for s in every[:, 0] if s]
        if signals:
            self.agreed_signum = signals[0]
        return bool(signals) or bool(every[:, 1].any())
