"""Runs stopped by signals, killed at random moments and during saves: resume is bit-exact."""

import signal

import jax
import numpy as np
import pytest
from conftest import finish, start_worker, wait_for_line

from vae_jax.evaluation.trained_run import restore_run

EPOCHS, STEPS_PER_EPOCH = 3, 8  # the worker's tiny config: 24 steps


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Final parameters of an uninterrupted run."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    rc, _, err = finish(start_worker(workdir))
    assert rc == 0, err[-3000:]
    return restore_run(workdir)[1].params


def _assert_resumes_to(workdir, reference):
    rc, _, err = finish(start_worker(workdir))
    assert rc == 0, err[-3000:]
    params = restore_run(workdir)[1].params
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def _steps(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.mark.parametrize(
    ("signum", "step"), [(signal.SIGTERM, 3), (signal.SIGTERM, 8), (signal.SIGINT, 13)]
)
def test_stop_signal_saves_at_that_step_and_resume_is_bit_exact(tmp_path, reference, signum, step):
    workdir = tmp_path / "run"
    proc = start_worker(workdir, "--step-delay", "0.15")
    wait_for_line(proc, f"STEP {step}")
    proc.send_signal(signum)
    rc, _, err = finish(proc)
    assert rc == 128 + signum, err[-3000:]
    name = signal.Signals(signum).name
    epoch, into = (step - 1) // STEPS_PER_EPOCH + 1, (step - 1) % STEPS_PER_EPOCH + 1
    assert f"stopped by {name} at step {step} (epoch {epoch}, {into}/8 steps into it)" in err
    assert _steps(workdir)[-1] == step
    _assert_resumes_to(workdir, reference)


def test_a_stop_at_the_last_step_skips_the_evaluation_until_the_run_is_resumed(tmp_path, reference):
    workdir = tmp_path / "run"
    proc = start_worker(workdir, "--step-delay", "0.15", "--evaluate")
    wait_for_line(proc, f"STEP {EPOCHS * STEPS_PER_EPOCH}")
    proc.send_signal(signal.SIGTERM)
    rc, _, err = finish(proc)
    assert rc == 128 + signal.SIGTERM, err[-3000:]
    assert "stopped by SIGTERM at step 24 (epoch 3, 8/8 steps into it)" in err
    assert not (workdir / "eval.json").exists()
    rc, _, err = finish(start_worker(workdir, "--evaluate"))
    assert rc == 0, err[-3000:]
    assert (workdir / "eval.json").exists()
    params = restore_run(workdir)[1].params
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("step", [5, 11, 20])
def test_sigkill_at_a_step_then_resume_is_bit_exact(tmp_path, reference, step):
    workdir = tmp_path / "run"
    proc = start_worker(workdir, "--step-delay", "0.1", "--every-steps", "3")
    wait_for_line(proc, f"STEP {step}")
    proc.kill()
    assert finish(proc)[0] == -signal.SIGKILL
    _assert_resumes_to(workdir, reference)


def test_sigkill_during_a_save_then_resume_is_bit_exact(tmp_path, reference):
    """Power loss mid-save: the half-written checkpoint 16 must not be taken for a valid one."""
    workdir = tmp_path / "run"
    proc = start_worker(workdir, "--hang-in-save", "16")
    wait_for_line(proc, "MIDSAVE")
    proc.kill()
    finish(proc)
    assert _steps(workdir) == [8]  # 16 exists only as Orbax's temporary folder
    assert any(".orbax-checkpoint-tmp" in p.name for p in (workdir / "checkpoints").iterdir())
    _assert_resumes_to(workdir, reference)


def test_periodic_checkpoints(tmp_path):
    workdir = tmp_path / "run"
    rc, _, err = finish(start_worker(workdir, "--every-steps", "5", "--keep", "100"))
    assert rc == 0, err[-3000:]
    assert _steps(workdir) == [5, 8, 10, 15, 16, 20, 24]


def test_checkpoints_every_n_seconds(tmp_path):
    workdir = tmp_path / "run"
    args = ("--every-seconds", "0.35", "--step-delay", "0.1", "--keep", "100", "--epochs", "2")
    rc, _, err = finish(start_worker(workdir, *args))
    assert rc == 0, err[-3000:]
    steps = _steps(workdir)
    mid_epoch = [s for s in steps if s % STEPS_PER_EPOCH]
    assert len(mid_epoch) >= 2, steps  # ~every 4 steps of 0.1 s, besides the epoch ends
    assert {8, 16} <= set(steps)
