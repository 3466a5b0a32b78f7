"""Every damaged input a user can meet gives one clear line, a non-zero exit (2: bad input; 1: a
checkpoint that cannot be read), no traceback, and writes or overwrites nothing: a damaged TFDS
data dir, a damaged config.json, a missing or damaged checkpoint step, an unwritable workdir,
multi-process flags that cannot make a run."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_cli, worker_env

SMALL = [
    "--config.data.train_size=600",
    "--config.data.test_size=200",
    "--config.train.batch_size=50",
    "--config.train.num_epochs=1",
    "--config.eval.iwae_k=4",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist_dir_module):
    workdir = tmp_path_factory.mktemp("trained") / "run"
    out = run_cli("train", "mnist_z20", "--workdir", str(workdir), *SMALL)
    assert out.returncode == 0, out.stderr[-3000:]
    return workdir


@pytest.fixture(scope="module")
def mnist_dir_module():
    from conftest import tfds_data_dir

    if tfds_data_dir() is None:
        pytest.skip("prepared MNIST not found (set TFDS_DATA_DIR)")
    return tfds_data_dir()


def _snapshot(folder: Path) -> list:
    return sorted((str(p), p.stat().st_mtime_ns) for p in folder.rglob("*"))


def _damage_tfds(tmp_path: Path, source: str, how: str) -> Path:
    data = tmp_path / "tfds"
    shutil.copytree(source, data)
    version = data / "mnist" / "3.0.1"
    if how == "garbage metadata":
        (version / "dataset_info.json").write_bytes(b"\xff\xfe garbage {")
    elif how == "missing record file":
        (version / "mnist-test.array_record-00000-of-00001").unlink()
    elif how == "truncated record file":
        record = version / "mnist-train.array_record-00000-of-00001"
        record.write_bytes(record.read_bytes()[: record.stat().st_size // 3])
    return data


@pytest.mark.parametrize(
    "how", ["garbage metadata", "missing record file", "truncated record file"]
)
def test_a_damaged_tfds_data_dir(tmp_path, mnist_dir_module, how):
    data = _damage_tfds(tmp_path, mnist_dir_module, how)
    before = _snapshot(data)
    env = {"TFDS_DATA_DIR": str(data), "VAE_JAX_CACHE_DIR": str(tmp_path / "cache")}
    out = run_cli("train", "mnist_z20", "--workdir", str(tmp_path / "run"), env=env)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "error: TFDS dataset 'mnist'" in out.stderr and "Traceback" not in out.stderr
    assert "cannot be read" in out.stderr or "is not prepared" in out.stderr
    assert not (tmp_path / "run").exists() and _snapshot(data) == before


def _edit_config(workdir: Path, edit) -> None:
    path = workdir / "config.json"
    saved = json.loads(path.read_text())
    text = edit(saved)
    path.write_text(text if isinstance(text, str) else json.dumps(saved))


CONFIG_DAMAGE = {
    "invalid JSON": (lambda c: "{not json", "cannot be read as JSON"),
    "a wrong type": (
        lambda c: c["train"].update(batch_size="fifty"),
        "train.batch_size='fifty' is invalid; expected an integer",
    ),
    "a removed key": (
        lambda c: c["data"].pop("test_size"),
        "lacks data.test_size, which it was written with",
    ),
}


@pytest.mark.parametrize("command", ["train", "eval"])
@pytest.mark.parametrize("damage", list(CONFIG_DAMAGE))
def test_a_damaged_config_json(tmp_path, trained, command, damage):
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    edit, message = CONFIG_DAMAGE[damage]
    _edit_config(workdir, edit)
    before = _snapshot(workdir)
    args = [*SMALL] if command == "train" else []
    out = run_cli(command, "mnist_z20", "--workdir", str(workdir), *args)
    assert out.returncode == 2, out.stderr[-3000:]
    assert message in out.stderr and "Traceback" not in out.stderr
    assert _snapshot(workdir) == before  # not a byte written, eval.json and figures as they were


def test_eval_of_a_missing_step_lists_the_steps(tmp_path, trained):
    before = _snapshot(trained)
    out = run_cli("eval", "mnist_z20", "--workdir", str(trained), "--step", "999")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "has no checkpoint at step 999; steps there: 12" in out.stderr
    assert _snapshot(trained) == before


def test_eval_of_a_damaged_step_says_so(tmp_path, trained):
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    for f in (workdir / "checkpoints" / "12").rglob("*"):
        if f.is_file() and f.stat().st_size > 1000:  # the arrays' files, not the metadata
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    before = _snapshot(workdir)
    out = run_cli("eval", "mnist_z20", "--workdir", str(workdir), "--step", "12")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]  # as any
    # checkpoint that fails to read or write
    damaged = f"checkpoint {workdir / 'checkpoints' / '12'} is damaged or was rotated away"
    assert damaged in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert _snapshot(workdir) == before


def test_eval_into_an_unwritable_workdir_writes_nothing(tmp_path, trained):
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    shutil.rmtree(workdir / "figures")
    (workdir / "figures").write_text("not a folder")  # refuses writes whoever we are (root too)
    before = _snapshot(workdir)
    out = run_cli("eval", "mnist_z20", "--workdir", str(workdir))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"cannot write to {workdir / 'figures'}" in out.stderr
    assert _snapshot(workdir) == before


def test_eval_of_a_chosen_step_keeps_the_newest_figures(tmp_path, trained):
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    newest = {p.name: p.read_bytes() for p in (workdir / "figures").glob("eval_*.png")}
    assert newest
    out = run_cli("eval", "mnist_z20", "--workdir", str(workdir), "--step", "12")
    assert out.returncode == 0, out.stderr[-3000:]
    assert {p.name: p.read_bytes() for p in (workdir / "figures").glob("eval_*.png")} == newest
    drawn = json.loads((workdir / "eval_step_12.json").read_text())
    assert drawn["figures_dir"] == "figures/eval_step_12"
    for name in drawn["figures"]:
        assert (workdir / "figures" / "eval_step_12" / name).stat().st_size > 1000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workdir", ""], "--workdir is empty"),
        (
            ["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"],
            "--process-id 2: expected 0..1 for 2 processes",
        ),
        (
            ["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"],
            "--coordinator 'localhost': expected HOST:PORT",
        ),
        (
            ["--num-processes", "2", "--process-id", "0"],
            "only with --coordinator HOST:PORT (or --distributed)",
        ),
        (
            ["--coordinator", "127.0.0.1:1", "--num-processes", "2"],
            "give both --num-processes and --process-id",
        ),
    ],
)
def test_bad_run_flags(tmp_path, args, message):
    if "--workdir" not in args:
        args = [*args, "--workdir", str(tmp_path / "run")]
    out = run_cli("train", "mnist_z20", *args, cwd=tmp_path)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and list(tmp_path.iterdir()) == []


def test_a_missing_peer_is_named_within_the_peer_timeout(tmp_path):
    start = time.monotonic()
    out = run_cli(
        "train", "mnist_z20", "--workdir", str(tmp_path / "run"), "--coordinator",
        f"127.0.0.1:{_free_port()}", "--num-processes", "2", "--process-id", "0",
        "--peer-timeout", "3", env={"JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    assert out.returncode == 2, out.stderr[-3000:]
    assert "process 0 waited 3 s" in out.stderr and "did not all connect" in out.stderr
    assert time.monotonic() - start < 60 and not (tmp_path / "run").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SLOW_START = """
import sys, time
import {module} as target
def slow(*args, **kwargs):
    print("STARTED", flush=True)
    time.sleep(60)
target.{name} = slow
from vae_jax.__main__ import main
sys.exit(main(["train", "mnist_z20", "--workdir", sys.argv[1]]))
"""


@pytest.mark.parametrize(
    "where",
    [
        "vae_jax.training.run.train_and_evaluate",  # before the loop listens for signals
        "vae_jax.data.datasets._load_splits",  # inside the data loader's `except Exception`
    ],
)
def test_sigterm_before_training_starts_says_so(tmp_path, where):
    module, name = where.rsplit(".", 1)
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_START.format(module=module, name=name), str(tmp_path / "run")],
        cwd=ROOT,
        env=worker_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "STARTED"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped by SIGTERM outside training; nothing more was trained or saved" in err
    assert "Traceback" not in err
