"""The command line as a user runs it: a smoke run on a subset, and bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

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

    more = run_cli(
        "train", "mnist_z20", "--workdir", str(workdir), *SMALL[:-1], "--config.train.num_epochs=3"
    )
    assert more.returncode == 0, more.stderr[-3000:]
    assert "resuming after epoch 2" in more.stdout and "epoch  3/3" in more.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "mnist_z2O"], "unknown experiment 'mnist_z2O' (did you mean 'mnist_z20'?)"),
        (
            ["train", "mnist_z20", "--config.model.latnt_dim=5"],
            "unknown config key 'model.latnt_dim'",
        ),
        (["train", "mnist_z20", "--config.model.latent_dim=0"], "model.latent_dim=0 is invalid"),
        (["train", "mnist_z20", "--config.model.latent_dim=-1"], "expected an integer >= 1"),
        (["train", "mnist_z20", "--config.data.binarize=maybe"], "one of none, dynamic, static"),
        (["train", "mnist_z20", "--lr=3"], "unrecognized argument '--lr=3'"),
    ],
)
def test_bad_input_exits_2_with_a_message_and_writes_nothing(tmp_path, args, message):
    workdir = tmp_path / "run"
    out = run_cli(*args, "--workdir", str(workdir))
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert not workdir.exists()


def test_unknown_experiment_lists_the_experiments(tmp_path):
    out = run_cli("train", "nope", "--workdir", str(tmp_path / "run"))
    assert out.returncode == 2
    assert "mnist_z20" in out.stderr and "mnist_mlp_z20" in out.stderr


def test_missing_data_exits_2_and_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    out = run_cli(
        "train",
        "mnist_z20",
        "--workdir",
        str(workdir),
        env={"TFDS_DATA_DIR": str(tmp_path / "empty")},
    )
    assert out.returncode == 2
    assert "is not prepared" in out.stderr and "make data" in out.stderr
    assert not workdir.exists() and not (tmp_path / "empty").exists()


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
