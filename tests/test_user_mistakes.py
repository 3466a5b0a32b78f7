"""The last user mistakes that ended in a traceback or in noise, each through the real command:
one line naming the cause and the fix, exit 2 (or the right result), no "Traceback" or
"Exception ignored" anywhere in stderr, nothing left of a workdir that was refused.

Multi-process flags that cannot form a run; .npz arrays that are no images; a valid but
different value in a run's config.json; a key config.json holds that vae_jax does not know; a
checkpoint rotated away while it is read, or truncated; a missing --config file; eval of a run
under another experiment's name. (A disk refused up front: tests/outputs/test_workdir.py.)"""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, run_cli, worker_env

QUIET = {"TQDM_DISABLE": "1"}


def _messages(stderr: str) -> list[str]:
    """stderr without the progress bars (tqdm's, which only process 0 draws)."""
    return [line for line in stderr.replace("\r", "\n").splitlines()
            if line.strip() and not line.startswith(("IWAE k=", "epoch "))]  # fmt: skip


TINY = [
    "--config.train.batch_size=32",
    "--config.train.num_epochs=2",
    "--config.eval.batch_size=32",
    "--config.eval.iwae_k=2",
    "--config.eval.iwae_test_size=32",
]


def _images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((n, 12, 12)) > 0.7).astype(np.uint8) * 255


def _assert_one_clean_line(proc, *expected: str) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == 2, err[-3000:]
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    assert err.count("\n") == 0 and err.startswith("error: "), err[-3000:]
    for text in expected:
        assert text in err, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A conv VAE trained 2 epochs on 12x12 arrays of a .npz: two checkpoints."""
    folder = tmp_path_factory.mktemp("trained")
    data = folder / "blobs.npz"
    np.savez(data, train_images=_images(64), test_images=_images(32, 1))
    run = folder / "run"
    proc = run_cli(
        "train", "mnist_z20", "--workdir", str(run), f"--config.data.name={data}", *TINY,
        env=QUIET,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


@pytest.fixture
def run_copy(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


@pytest.mark.parametrize(
    ("flags", "env"),
    [
        (["--coordinator", "127.0.0.1:12399"], {}),
        (["--distributed"], {}),
        (["--distributed", "--coordinator", "127.0.0.1:12399"], {}),
        (["--distributed"], {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:12399"}),
    ],
)
def test_multi_process_flags_that_cannot_form_a_run(tmp_path, flags, env):
    workdir = tmp_path / "run"
    proc = run_cli("train", "mnist_z20", "--workdir", str(workdir), *flags, env=env)
    _assert_one_clean_line(proc, "cannot start a multi-process run", "--num-processes N")
    assert not workdir.exists()


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.array([np.zeros((12, 12)), "a"], dtype=object), "an array of Python objects"),
        (np.full((64, 12, 12), "a"), "images are <U1 (strings)"),
        (np.zeros((64, 0, 12), np.uint8), "images of shape (64, 0, 12)"),
        (np.zeros((64, 12, 12), np.complex64), "images are complex64 (complex numbers)"),
    ],
)
def test_arrays_that_are_no_images(tmp_path, array, expected):
    path = tmp_path / "bad.npz"
    np.savez(path, train_images=array, test_images=_images(32))
    workdir = tmp_path / "run"
    proc = run_cli("train", "mnist_z20", "--workdir", str(workdir), f"--config.data.name={path}")
    _assert_one_clean_line(proc, str(path), expected)
    assert not workdir.exists()


def test_a_changed_value_in_config_json_is_named_not_called_damage(run_copy):
    config = json.loads((run_copy / "config.json").read_text())
    config["model"]["latent_dim"] = 10  # a valid value, the digest of the key names intact
    (run_copy / "config.json").write_text(json.dumps(config))
    before = sorted(p.name for p in run_copy.rglob("*"))
    proc = run_cli("eval", "--workdir", str(run_copy), env=QUIET)
    _assert_one_clean_line(
        proc,
        "holds arrays of other shapes than the run's config describes",
        "(20, 288) saved, (10, 288) from the config",
    )
    assert "damaged" not in proc.stderr and "--force" in proc.stderr
    assert sorted(p.name for p in run_copy.rglob("*")) == before
    script = "import sys, vae_jax; vae_jax.load_run(sys.argv[1])"
    loaded = subprocess.run(
        [sys.executable, "-c", script, str(run_copy)], capture_output=True, text=True
    )
    assert "ConfigError: checkpoint" in loaded.stderr and "Exception ignored" not in loaded.stderr


def test_a_key_config_json_should_not_hold_is_named(run_copy):
    config = json.loads((run_copy / "config.json").read_text())
    config["model"]["dropout"] = 0.5
    (run_copy / "config.json").write_text(json.dumps(config))
    proc = run_cli("eval", "--workdir", str(run_copy), env=QUIET)
    _assert_one_clean_line(proc, "holds model.dropout, which vae_jax does not know")
    assert "lacks" not in proc.stderr


ROTATE = """
import glob, os, shutil, sys
from vae_jax.__main__ import main
from vae_jax.outputs.checkpoints import Checkpointer
run, read, done = sys.argv[1], Checkpointer._restore, []
def racing(self, step, shapes):  # the run saves a newer checkpoint and rotates this one away
    if done:                      # while its arrays are being read
        return read(self, step, shapes)
    done.append(step)
    shutil.copytree(f"{run}/checkpoints/{step}", f"{run}/checkpoints/{step + 1}")
    for f in glob.glob(f"{run}/checkpoints/{step}/state/**/d/*", recursive=True):
        os.unlink(f)
    try:
        return read(self, step, shapes)
    finally:
        shutil.rmtree(f"{run}/checkpoints/{step}")
Checkpointer._restore = racing
sys.exit(main(["eval", "--workdir", run]))
"""


def test_a_checkpoint_rotated_away_mid_read_is_retried_quietly(run_copy):
    proc = subprocess.run(
        [sys.executable, "-c", ROTATE, str(run_copy)],
        cwd=ROOT,
        env={**worker_env(), **QUIET},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Evaluation of" in proc.stdout
    assert _messages(proc.stderr) == []  # no warning, no traceback: nothing was wrong


def test_a_truncated_newest_checkpoint_falls_back_in_one_line(run_copy):
    newest = max(int(p.name) for p in (run_copy / "checkpoints").iterdir() if p.name.isdigit())
    for array in (run_copy / "checkpoints" / str(newest)).rglob("d/*"):
        array.write_bytes(array.read_bytes()[:10])
    proc = run_cli("eval", "--workdir", str(run_copy), env=QUIET)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(_messages(proc.stderr)) == 1, proc.stderr[-3000:]
    err = _messages(proc.stderr)[0]
    assert len(err) < 600 and "TensorStore" not in err, err  # not its whole spec
    assert "Exception ignored" not in proc.stderr and "Traceback" not in proc.stderr
    newest_path = run_copy / "checkpoints" / str(newest)
    assert err.startswith(f"warning: checkpoint {newest_path} is damaged (")
    assert err.endswith("falling back to an older one")


def test_a_missing_config_file_is_named(tmp_path):
    proc = run_cli("train", f"--config={tmp_path / 'nope.py'}", "--workdir", str(tmp_path / "r"))
    _assert_one_clean_line(proc, f"experiment file {tmp_path / 'nope.py'} does not exist")
    assert "unknown experiment" not in proc.stderr
    assert not (tmp_path / "r").exists()


def test_eval_under_another_experiments_name_says_so(run_copy):
    proc = run_cli("eval", "mnist_z2", "--workdir", str(run_copy), env=QUIET)
    assert proc.returncode == 0, proc.stderr[-3000:]
    notes = [line for line in proc.stdout.splitlines() if line.startswith("note:")]
    assert len(notes) == 1, proc.stdout
    assert "was not trained with experiment mnist_z2" in notes[0]
    assert "evaluated with its own config" in notes[0]
    assert "Traceback" not in proc.stderr
