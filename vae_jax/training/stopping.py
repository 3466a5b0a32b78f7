"""SIGTERM/SIGINT as a request to stop after the current step (and save), not a crash.

Preemptible VMs and cluster schedulers send SIGTERM before they kill a job; Ctrl-C sends
SIGINT. Inside :class:`StopRequest` the first such signal only sets a flag that the training
loop reads after every step; a second one gets the default behaviour (terminate / raise
KeyboardInterrupt) for a user who does not want to wait for the save.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

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
