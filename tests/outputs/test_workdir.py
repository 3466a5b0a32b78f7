"""The workdir: one process at a time, --force, and a workdir that is read-only or full."""

import os
import shlex
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import (
    WORKER,
    finish,
    small_config,
    start_worker,
    synthetic_dataset,
    wait_for_line,
    worker_env,
)

from vae_jax.errors import ConfigError, DataError, WorkdirError
from vae_jax.evaluation.trained_run import restore_run
from vae_jax.outputs.checkpoints import Checkpointer
from vae_jax.outputs.workdir import Workdir
from vae_jax.training.run import train_and_evaluate


def test_second_process_refuses_and_a_killed_one_leaves_no_stale_lock(tmp_path):
    workdir = tmp_path / "run"
    first = start_worker(workdir, "--step-delay", "0.5")
    wait_for_line(first, "STEP 1")
    rc, _, err = finish(start_worker(workdir))
    assert rc == 2
    assert f"workdir {workdir} is in use by process {first.pid} on" in err
    first.send_signal(signal.SIGKILL)
    finish(first)
    rc, _, err = finish(start_worker(workdir))  # the kernel released the dead process's lock
    assert rc == 0, err[-3000:]


def test_lock_is_taken_before_anything_else(tmp_path):
    data = synthetic_dataset()
    train_and_evaluate(small_config({"train.num_epochs": 1}), tmp_path, data)
    holder = Workdir(tmp_path)
    holder.lock()
    try:
        with pytest.raises(WorkdirError, match="is in use by process"):
            train_and_evaluate(small_config({"train.num_epochs": 2}), tmp_path, data)
    finally:
        holder.unlock()


def test_force_moves_the_old_run_aside_and_starts_anew(tmp_path, capsys):
    data = synthetic_dataset()
    workdir = tmp_path / "run"
    old = train_and_evaluate(small_config({"train.num_epochs": 1}), workdir, data)
    with pytest.raises(ConfigError, match="--force"):
        train_and_evaluate(
            small_config({"model.latent_dim": 5, "train.num_epochs": 1}), workdir, data
        )
    new = train_and_evaluate(
        small_config({"model.latent_dim": 5, "train.num_epochs": 1}), workdir, data, force=True
    )
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert (
        len(moved) == 1
        and f"moved the previous run in {workdir} to {moved[0]}" in capsys.readouterr().out
    )
    assert '"latent_dim": 20' in (moved[0] / "config.json").read_text()  # the old run, intact
    assert Checkpointer(moved[0] / "checkpoints", 3).steps() == [8]
    assert '"latent_dim": 5' in (workdir / "config.json").read_text()
    assert new[0]["test_neg_elbo_nats"] != old[0]["test_neg_elbo_nats"]


def test_force_with_bad_input_moves_nothing(tmp_path):
    data = synthetic_dataset()
    train_and_evaluate(small_config({"train.num_epochs": 1}), tmp_path / "run", data)
    bad = data._replace(train_images=data.train_images.astype(np.float32))
    with pytest.raises(DataError):
        train_and_evaluate(small_config(), tmp_path / "run", bad, force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    assert Checkpointer(tmp_path / "run" / "checkpoints", 3).steps() == [8]


def test_force_never_moves_a_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "thesis.tex").write_text("mine")
    with pytest.raises(ConfigError, match="holds no vae_jax run"):
        train_and_evaluate(small_config(), tmp_path, synthetic_dataset(), force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.tex"]


# ---------------------------------------------------------------------------------------------
# A real read-only or full filesystem: a tmpfs in a private mount namespace (needs root and
# unshare; as another user, the read-only case uses chmod instead).


def _can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", "mount -t tmpfs tmpfs /mnt"],
        capture_output=True,
    )
    return probe.returncode == 0


needs_mount = pytest.mark.skipif(
    not _can_mount(), reason="needs root and `unshare -m` to mount a private tmpfs"
)


def _in_tmpfs(tmp_path, size: str, commands: str) -> subprocess.CompletedProcess:
    """Run shell ``commands`` with $MNT a fresh tmpfs of ``size``, private to them."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = (
        f"set -u; MNT={shlex.quote(str(mnt))}; mount -t tmpfs -o size={size} tmpfs $MNT; {commands}"
    )
    env = worker_env()
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _worker(workdir: str, *args: str) -> str:
    """The worker's command line; ``workdir`` is left unquoted so that $MNT expands."""
    quoted = " ".join(shlex.quote(a) for a in (sys.executable, str(WORKER)))
    return f"{quoted} {workdir} " + " ".join(shlex.quote(a) for a in args)


@needs_mount
def test_read_only_filesystem_is_refused_before_training(tmp_path):
    out = _in_tmpfs(
        tmp_path,
        "64m",
        f"{_worker('$MNT/run', '--epochs', '1')} >/dev/null && mount -o remount,ro $MNT && "
        f"{_worker('$MNT/run', '--epochs', '2')}; echo rc=$? >&2",
    )
    assert "rc=2" in out.stderr, out.stderr[-3000:]
    assert "Read-only file system" in out.stderr and "Traceback" not in out.stderr


def test_unwritable_parent_is_refused_before_anything_is_written(tmp_path):
    if os.geteuid() == 0:
        if not _can_mount():
            pytest.skip("root ignores permissions and no private tmpfs can be mounted")
        out = _in_tmpfs(
            tmp_path, "1m", f"mount -o remount,ro $MNT; {_worker('$MNT/run')}; echo rc=$? >&2"
        )
    else:
        parent = tmp_path / "locked"
        parent.mkdir(mode=0o500)
        out = subprocess.run(
            ["sh", "-c", f"{_worker(str(parent / 'run'))}; echo rc=$? >&2"],
            env=worker_env(),
            capture_output=True,
            text=True,
        )
    assert "rc=2" in out.stderr, out.stderr[-3000:]
    assert "cannot use workdir" in out.stderr and "Traceback" not in out.stderr


@needs_mount
def test_too_little_space_is_refused_before_training(tmp_path):
    out = _in_tmpfs(tmp_path, "2m", f"{_worker('$MNT/run')}; echo rc=$? >&2; ls -A $MNT/run >&2")
    assert "rc=2" in out.stderr, out.stderr[-3000:]
    assert "MiB free; this run needs about" in out.stderr
    assert "No such file or directory" in out.stderr.split("rc=2")[1]  # nothing left behind


@needs_mount
def test_disk_full_on_save_leaves_only_valid_checkpoints(tmp_path):
    copy = tmp_path / "copy"
    out = _in_tmpfs(
        tmp_path,
        "64m",
        f"{_worker('$MNT/run', '--fill-disk-before-save', '16')}; echo rc=$? >&2; "
        f"cp -a $MNT/run {shlex.quote(str(copy))}",
    )
    assert "rc=1" in out.stderr, out.stderr[-3000:]
    assert "could not write a valid checkpoint at step 16" in out.stderr
    assert "the newest valid checkpoint is step 8" in out.stderr
    assert "Traceback" not in out.stderr
    assert Checkpointer(copy / "checkpoints", 3).steps() == [8]
    assert restore_run(copy)[2]["step"] == 8  # and it verifies against its sha256
