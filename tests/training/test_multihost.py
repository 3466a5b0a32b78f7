"""Two processes on this machine (coordinator on 127.0.0.1, gloo collectives, one CPU device
each) train like one process with the same global batch: the same losses and parameters within
float tolerance; process 0 alone writes the workdir, and the checkpoint restores. A SIGTERM to
any of them stops both at one agreed step, with a checkpoint there, and timed saves never
hang."""

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TESTS, worker_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(
    process_id: int, num_processes: int, port: int, workdir: Path, *extra: str
) -> subprocess.Popen:
    env = worker_env(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
    )
    args = [str(process_id), str(num_processes), str(port), str(workdir), *extra]
    return subprocess.Popen(
        [sys.executable, str(TESTS / "multihost_worker.py"), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(proc: subprocess.Popen) -> dict:
    try:
        out, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    port = _free_port()
    procs = [_start(i, 2, port, tmp_path / "two") for i in range(2)]
    two = [_result(p) for p in procs]
    one = _result(_start(0, 0, 0, tmp_path / "one"))
    assert [r["process"] for r in two] == [0, 1]
    assert all(r["processes"] == 2 and r["devices"] == 2 for r in two)
    assert (one["processes"], one["devices"]) == (1, 1)
    for key in ("train_loss_nats", "train_kl_nats", "test_neg_elbo_nats"):
        want = [r[key] for r in one["history"]]
        for r in two:
            np.testing.assert_allclose([h[key] for h in r["history"]], want, rtol=1e-5)
    for r in two:
        np.testing.assert_allclose(r["param_sums"], one["param_sums"], rtol=1e-4, atol=1e-4)
    written = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert written == sorted(p.name for p in (tmp_path / "one").iterdir())
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["16", "8"]


EPOCHS = 3  # of 8 steps; log (and agree) every 4 steps


def _pair(workdir: Path, *extra: str) -> list[subprocess.Popen]:
    port = _free_port()
    return [_start(i, 2, port, workdir, "--epochs", str(EPOCHS), *extra) for i in range(2)]


def _wait_for_step(proc: subprocess.Popen, step: int) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.strip() == f"STEP {step}":
            return
        assert line or proc.poll() is None, f"exited before step {step}: {proc.stderr.read()}"
    raise AssertionError(f"no step {step}")


def _finish_both(procs: list[subprocess.Popen], timeout: float = 60) -> tuple[float, list]:
    """Seconds until both exited (from now), and their (returncode, stderr)."""
    start, out = time.monotonic(), []
    for p in procs:
        try:
            _, err = p.communicate(timeout=max(1.0, timeout - (time.monotonic() - start)))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError("a process hung after the stop") from None
        out.append((p.returncode, err))
    return time.monotonic() - start, out


def _summary(results: list[dict]) -> dict:
    return {
        "history": [h["test_neg_elbo_nats"] for h in results[0]["history"]],
        "param_sums": results[0]["param_sums"],
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    procs = _pair(tmp_path_factory.mktemp("uninterrupted") / "run")
    return _summary([_result(p) for p in procs])


STOPS = {
    "SIGTERM to process 1": ([1], 0.0),
    "SIGTERM to both, 300 ms apart": ([0, 1], 0.3),
}


@pytest.mark.slow
@pytest.mark.parametrize("repeat", range(3))
@pytest.mark.parametrize("case", list(STOPS))
def test_a_stop_is_agreed_by_both_processes(tmp_path, uninterrupted, case, repeat):
    """Both stop within seconds at one step, both save it, and resuming both ends where the
    uninterrupted two-process run ends."""
    who, gap = STOPS[case]
    workdir = tmp_path / "run"
    procs = _pair(workdir, "--step-delay", "0.1")
    _wait_for_step(procs[1], 9 + 2 * repeat)  # mid-epoch, at a different step each time
    for i in who:
        procs[i].send_signal(signal.SIGTERM)
        time.sleep(gap)
    seconds, results = _finish_both(procs)
    print(f"{case}, repeat {repeat}: both stopped {seconds:.2f} s after the last signal")
    steps = set()
    for rc, err in results:
        assert rc == 128 + signal.SIGTERM, err[-2000:]
        steps.add(int(re.search(r"stopped by SIGTERM at step (\d+)", err)[1]))
    (step,) = steps  # the same step in both
    assert str(step) in {p.name for p in (workdir / "checkpoints").iterdir()}
    resumed = [_result(p) for p in _pair(workdir)]
    assert _summary(resumed)["history"] == pytest.approx(uninterrupted["history"], rel=1e-6)
    np.testing.assert_allclose(resumed[0]["param_sums"], uninterrupted["param_sums"], rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("repeat", range(3))
def test_timed_saves_never_hang(tmp_path, uninterrupted, repeat):
    """A save every 0.3 s: each process's clock says when, the saves happen at agreed steps."""
    workdir = tmp_path / "run"
    procs = _pair(workdir, "--every-seconds", "0.3", "--step-delay", "0.1", "--keep", "100")
    seconds, results = _finish_both(procs, timeout=300)
    assert [rc for rc, _ in results] == [0, 0], results[0][1][-2000:]
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 8 * EPOCHS
    assert all(s % 4 == 0 for s in steps)  # only at sync points (every 4 steps) or epoch ends
    assert any(s % 8 for s in steps)  # timed saves mid-epoch did happen
    print(f"timed saves, repeat {repeat}: {seconds:.1f} s, checkpoints kept at {steps}")
