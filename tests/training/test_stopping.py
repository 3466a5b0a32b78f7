"""SIGTERM/SIGINT inside StopRequest: the first asks to stop, a second one acts at once."""

import os
import signal

import pytest

from vae_jax.training.stopping import StopRequest


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_first_signal_only_sets_the_flag(signum, capsys):
    before = signal.getsignal(signum)
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signum)
        assert stop.requested and stop.signum == signum
        assert "stopping after the current step" in capsys.readouterr().err
    assert signal.getsignal(signum) is before  # handlers restored


def test_second_sigint_interrupts_at_once():
    with StopRequest() as stop, pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested
        os.kill(os.getpid(), signal.SIGINT)


def test_second_sigterm_gets_the_default_action():
    with StopRequest():
        os.kill(os.getpid(), signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
