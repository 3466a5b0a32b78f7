"""Shared fixtures: the offline MNIST (skipped with a reason when absent), a shared data cache,
small configs and a synthetic dataset for fast training tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SHARED_TFDS = ROOT.parent / "shared" / "data" / "tensorflow_datasets"


def tfds_data_dir() -> str | None:
    """$TFDS_DATA_DIR if it holds mnist, else ../shared/data/tensorflow_datasets if it does."""
    for d in (os.environ.get("TFDS_DATA_DIR"), str(SHARED_TFDS)):
        if d and (Path(d) / "mnist").is_dir():
            return d
    return None


@pytest.fixture(scope="session", autouse=True)
def _isolated_env(tmp_path_factory):
    """One data cache per test process (decoded once; each pytest-xdist worker has its own, as
    a test damages it on purpose), never the user's ~/.cache, and one persistent XLA
    compilation cache, so the many small runs (and subprocesses) compile each
    program once."""
    import jax

    os.environ["VAE_JAX_CACHE_DIR"] = str(tmp_path_factory.mktemp("data_cache"))
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("xla_cache"))
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if tfds_data_dir():
        os.environ["TFDS_DATA_DIR"] = tfds_data_dir()


@pytest.fixture
def mnist_dir() -> str:
    d = tfds_data_dir()
    if d is None:
        pytest.skip(
            "prepared MNIST not found: set TFDS_DATA_DIR to a TFDS data dir with mnist/3.0.1 "
            f"(looked in $TFDS_DATA_DIR and {SHARED_TFDS})"
        )
    return d


SMALL = {
    "train.batch_size": 32,
    "train.num_epochs": 2,
    "train.log_every_steps": 4,
    "eval.batch_size": 64,
    "eval.iwae_k": 8,
    "eval.after_training": False,  # tests that want it turn it on
}


def small_config(values: dict | None = None):
    """The seed config shrunk for tests, with ``values`` ({dotted key: value}) set."""
    from vae_jax.config.keys import base_config, with_values

    return with_values(base_config(), {**SMALL, **(values or {})}, "test config")


def synthetic_dataset(n_train: int = 256, n_test: int = 96, seed: int = 0):
    """Blurry random strokes, uint8 28x28x1: enough structure for a VAE to learn something."""
    from vae_jax.data.images import Dataset

    rng = np.random.default_rng(seed)

    def images(n):
        canvas = np.zeros((n, 28, 28), np.float32)
        for i in range(n):
            r, c = rng.integers(4, 24, size=2)
            canvas[i, r - 3 : r + 3, 2:26] = 1.0
            canvas[i, 2:26, c - 2 : c + 2] = 1.0
        return (canvas[..., None] * 255).astype(np.uint8)

    return Dataset(
        images(n_train),
        rng.integers(0, 10, n_train).astype(np.int32),
        images(n_test),
        rng.integers(0, 10, n_test).astype(np.int32),
    )


def run_cli(
    *args: str, env: dict | None = None, cwd: Path = ROOT, timeout: float = 600
) -> subprocess.CompletedProcess:
    """``python -m vae_jax ARGS`` in a subprocess, output captured."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "vae_jax", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


WORKER = TESTS / "train_worker.py"


def worker_env(**extra: str) -> dict:
    """The environment of a worker script in tests/: it imports conftest, and vae_jax as this
    process does."""
    path = os.pathsep.join(p for p in (str(TESTS), str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def start_worker(workdir: Path, *args: str) -> subprocess.Popen:
    """``tests/train_worker.py WORKDIR ARGS`` in the background, stdout and stderr piped."""
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(workdir), *args],
        env=worker_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(proc: subprocess.Popen, line: str, timeout: float = 300.0) -> str:
    """Read a process's stdout until a line that starts with ``line`` (fail if it exits first)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = proc.stdout.readline()
        if out.startswith(line):
            return out
        if not out and proc.poll() is not None:
            raise AssertionError(
                f"worker exited ({proc.returncode}) before {line!r}: {proc.stderr.read()[-3000:]}"
            )
    proc.kill()
    raise AssertionError(f"timed out waiting for {line!r}")


def finish(proc: subprocess.Popen, timeout: float = 300.0) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err
