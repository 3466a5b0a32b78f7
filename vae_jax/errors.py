"""What can stop a run, each with the exit code the CLI returns and a message that says what to do.

- 2: bad input found before anything was trained (config, data, workdir): nothing was written.
- 1: the run stopped (non-finite loss, a checkpoint that could not be written); the newest valid
  checkpoint is intact.
- 128 + signal number: stopped by SIGTERM/SIGINT after saving a checkpoint; rerun to resume.
"""

from __future__ import annotations

import signal


class VaeJaxError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class ConfigError(VaeJaxError, ValueError):
    """Bad user input (experiment, override key or value, workdir)."""

    exit_code = 2


class DataError(VaeJaxError, RuntimeError):
    """Data missing or malformed; the message names the path and what was expected."""

    exit_code = 2


class WorkdirError(VaeJaxError):
    """The workdir cannot be used: not writable, too little space, or in use by another run."""

    exit_code = 2


class DistributedError(VaeJaxError):
    """The processes of a multi-process run could not find each other."""

    exit_code = 2


class CheckpointError(VaeJaxError):
    """A checkpoint could not be written or verified, or none of the saved ones is readable."""


class OutputError(VaeJaxError):
    """A figure, metrics file or event file could not be written during the run."""


class NonFiniteError(VaeJaxError):
    """A loss or gradient was NaN or Inf; the update was not applied and nothing after it saved."""


class TrainingInterrupted(VaeJaxError):
    """SIGTERM/SIGINT: the current step finished and a checkpoint was saved at ``step``."""

    def __init__(
        self, signum: int, step: int, epoch: int, step_in_epoch: int, steps_per_epoch: int
    ):
        self.signum, self.step = signum, step
        self.exit_code = 128 + signum
        super().__init__(
            f"stopped by {signal.Signals(signum).name} at step {step} "
            f"(epoch {epoch}, {step_in_epoch}/{steps_per_epoch} steps into it); "
            f"a checkpoint at step {step} is saved"
        )
