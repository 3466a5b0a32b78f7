"""Two processes on this machine (coordinator on 127.0.0.1, gloo collectives, one CPU device
each) train like one process with the same global batch: the same losses and parameters within
float tolerance; process 0 alone writes the workdir, and the checkpoint restores."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import TESTS, worker_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(process_id: int, num_processes: int, port: int, workdir: Path) -> subprocess.Popen:
    env = worker_env(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
    )
    args = [str(process_id), str(num_processes), str(port), str(workdir)]
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
