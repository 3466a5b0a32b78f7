"""The command line as a user runs it: a smoke run on a subset, and bad input."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, finish, run_cli, wait_for_line

SMALL = [
    "--config.data.train_size=600",
    "--config.data.test_size=200",
    "--config.train.batch_size=50",
    "--config.train.num_epochs=2",
]


def test_smoke_run_writes_figures_metrics_and_resumes(tmp_path, mnist_dir):
    workdir = tmp_path / "run"
    out = run_cli("train", "mnist_z20", "--workdir", str(workdir), *SMALL)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "epoch  2/2" in out.stdout and "test -ELBO" in out.stdout
    figures = workdir / "figures"
    for name in (
        "reconstructions.png",
        "originals.png",
        "recon_epoch_01.png",
        "recon_epoch_02.png",
        "samples_epoch_01.png",
        "samples_epoch_02.png",
    ):
        assert (figures / name).stat().st_size > 500, name
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[1]["test_neg_elbo_nats"] < records[0]["test_neg_elbo_nats"]
    config = json.loads((workdir / "config.json").read_text())
    assert config["data"]["train_size"] == 600

    again = run_cli("train", "mnist_z20", "--workdir", str(workdir), *SMALL)
    assert again.returncode == 0 and "is finished (2 epochs)" in again.stdout

    # The flax examples' form: the same config, so the run resumes (a different one is refused).
    more = run_cli(
        "train",
        "--config=experiments/mnist_z20.py",
        "--workdir",
        str(workdir),
        *SMALL[:-1],
        "--config.train.num_epochs=3",
    )
    assert more.returncode == 0, more.stderr[-3000:]
    assert "resuming at step 24 (epoch 3)" in more.stdout and "epoch  3/3" in more.stdout


FOUR_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["mnst_z20"], {}, "unknown experiment 'mnst_z20' (did you mean 'mnist_z20'?)"),
        (["nope"], {}, "bmnist_z20, mnist_mlp_z20, mnist_z2, mnist_z20"),  # lists them
        (["mnist_z20", "--config.model.latnt_dim=5"], {}, "unknown config key 'model.latnt_dim'"),
        (["mnist_z20", "--config.model.latent_dim=0"], {}, "model.latent_dim=0 is invalid"),
        (["mnist_z20", "--config.model.latent_dim=-1"], {}, "expected an integer from 1 to"),
        (["mnist_z20", "--config.data.binarize=maybe"], {}, "one of none, dynamic, static"),
        (
            ["mnist_z20", "--config.model.arch=rnn"],
            {},
            "expected one of conv, ladder, mlp, resnet, two_layer",
        ),
        (["mnist_z20", "--config.data.name=mnistt"], {}, "unknown TFDS dataset 'mnistt'"),
        (["mnist_z20", "--lr=3"], {}, "unrecognized argument '--lr=3'"),
        (["mnist_z20", "--config=experiments/mnist_z20.py"], {}, "not both"),
        (["--config=experiments/nope.py"], {}, "experiments/nope.py does not exist"),
        (
            ["mnist_z20", "--config.train.batch_size=50"],
            FOUR_DEVICES,
            "train.batch_size=50 does not divide by the 4 devices",
        ),
        (["mnist_z20"], {"TFDS_DATA_DIR": "{tmp}/empty"}, "is not prepared in '{tmp}/empty'"),
    ],
)
def test_bad_input_exits_2_with_a_message_and_writes_nothing(tmp_path, args, env, message):
    workdir = tmp_path / "run"
    env = {k: v.format(tmp=tmp_path) for k, v in env.items()}
    out = run_cli("train", *args, "--workdir", str(workdir), env=env)
    assert out.returncode == 2, out.stderr
    assert message.format(tmp=tmp_path) in out.stderr
    assert "Traceback" not in out.stderr
    assert list(tmp_path.iterdir()) == []  # no workdir, nothing in the data dir either


BROKEN_EXPERIMENTS = {
    "syntax": ("def get_config(:\n", "SyntaxError: invalid syntax ({path}, line 1)"),
    "name": (
        "def get_config():\n    return undefined_name\n",
        "NameError: name 'undefined_name' is not defined (File \"{path}\", line 2)",
    ),
    "import": ("import not_a_module\n", "No module named 'not_a_module' (File \"{path}\", line 1)"),
    "type": (
        "from vae_jax.config import base_config\n"
        "def get_config():\n    c = base_config()\n    c.train.num_epochs = '10'\n    return c\n",
        "TypeError: Could not override field 'num_epochs'",
    ),
    "nested": (
        "from vae_jax.config import load_experiment\n"
        "def get_config():\n    return load_experiment('nope')\n",
        "unknown experiment 'nope'; experiments in",
    ),
}


@pytest.mark.parametrize("broken", sorted(BROKEN_EXPERIMENTS))
def test_a_broken_experiment_file_is_one_line_naming_its_line(tmp_path, broken):
    text, message = BROKEN_EXPERIMENTS[broken]
    path = tmp_path / "exp" / f"{broken}.py"
    path.parent.mkdir()
    path.write_text(text)
    out = run_cli("train", f"--config={path}", "--workdir", str(tmp_path / "run"))
    assert out.returncode == 2, out.stderr
    assert message.format(path=path) in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]


def test_make_train_with_unknown_exp_lists_experiments(tmp_path):
    venv = Path(sys.executable).parent.parent
    out = subprocess.run(
        ["make", "-s", "train", "EXP=nope", f"VENV={venv}", f"WORKDIR={tmp_path / 'run'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "unknown experiment 'nope'" in out.stderr and "mnist_z20" in out.stderr
    assert not (tmp_path / "run").exists()


def test_list_experiments():
    out = run_cli("list")
    assert out.returncode == 0
    assert {"mnist_z20", "mnist_mlp_z20"} <= set(out.stdout.split())


def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(tmp_path, mnist_dir):
    workdir = tmp_path / "run"
    # A checkpoint after every step keeps the 24 steps busy for longer than the 1 s below, even
    # on a fast machine with a warm compilation cache (else SIGTERM may come after the end).
    args = ["train", "mnist_z20", "--workdir", str(workdir), *SMALL]
    args.append("--config.checkpoint.every_steps=1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vae_jax", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_line(proc, "vae_jax mnist_z20:")
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    rc, _, err = finish(proc)
    assert rc == 128 + signal.SIGTERM, err[-3000:]
    step = int(re.search(r"stopped by SIGTERM at step (\d+) \(epoch \d+, \d+/12 steps", err)[1])
    assert f"a checkpoint at step {step} is saved" in err
    assert f"Resume with the same command:\n  python -m vae_jax {' '.join(args)}" in err
    assert "Traceback" not in err

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming at step {step}" in again.stdout and "epoch  2/2" in again.stdout
