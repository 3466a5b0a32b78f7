"""The analytic FLOP counts (closed forms, and XLA's own count of the MLP) and a tiny
``python -m vae_jax.bench`` run (its JSON records, no timing assertions)."""

import itertools
import json
import subprocess
import sys

import pytest
from conftest import ROOT

from vae_jax import bench
from vae_jax.config.experiments import load_experiment
from vae_jax.config.keys import base_config
from vae_jax.core import flops
from vae_jax.core.models import make_model


def _stride2_taps(in_hw: int, out_hw: int, k: int, transpose: bool) -> int:
    """Kernel taps that meet a real input pixel (not padding, not a dilation hole), summed
    over the output positions of one axis of a 5x5 stride-2 SAME (transposed) conv."""
    if transpose:
        pad = -(-k // 2)  # lax.conv_transpose's SAME padding for stride 2
        return sum(1 for o in range(out_hw) for t in range(k)
                   if (o + t - pad) % 2 == 0 and 0 <= (o + t - pad) // 2 < in_hw)  # fmt: skip
    lo = max((out_hw - 1) * 2 + k - in_hw, 0) // 2
    return sum(1 for o in range(out_hw) for t in range(k) if 0 <= 2 * o - lo + t < in_hw)


def test_xla_flops_of_the_seed_conv_match_an_independent_count():
    """Multiply-adds counted by hand, tap by tap (padding and dilation holes left out, as XLA
    does), for encoding one image (both heads) and decoding its mean."""

    def conv(i, o, c_in, c_out, transpose=False):
        return _stride2_taps(i, o, 5, transpose) ** 2 * c_in * c_out

    macs = conv(28, 14, 1, 16) + conv(14, 7, 16, 32) + 2 * 1568 * 20  # encoder, both heads
    macs += 20 * 1568 + conv(7, 14, 32, 16, True) + conv(14, 28, 16, 1, True)  # decoder
    model = make_model((28, 28, 1), **{**base_config().model, "conv_impl": "native"})
    counted = flops.forward_flops(model, (28, 28, 1))
    assert 2 * macs == 2_572_608
    assert counted == pytest.approx(2 * macs, rel=0.02)  # + XLA's elementwise ops (~1%)
    assert flops.train_flops(model, (28, 28, 1)) == 3 * counted


@pytest.mark.parametrize("experiment", ["mnist_mlp_z20", "bmnist_mlp_burda"])
def test_xla_flops_of_the_mlps_match_the_closed_form(experiment):
    config = load_experiment(experiment).model
    model = make_model((28, 28, 1), **config)
    widths = [784, *config.mlp_hidden_dims]
    back = [config.latent_dim, *reversed(config.mlp_hidden_dims), 784]
    macs = sum(a * b for a, b in itertools.pairwise(widths)) + 2 * widths[-1] * config.latent_dim
    macs += sum(a * b for a, b in itertools.pairwise(back))
    assert flops.forward_flops(model, (28, 28, 1)) == pytest.approx(2 * macs, rel=0.02)


def test_bench_command_writes_records(tmp_path):
    out = tmp_path / "bench.json"
    args = ["--experiments", "mnist_mlp_z20", "--batch", "64", "--steps", "3", "--reps", "2"]
    args += ["--models", "1", "2"]
    proc = subprocess.run(
        [sys.executable, "-m", "vae_jax.bench", *args, "--data", "synthetic", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| mnist_mlp_z20 | mlp (mlp_hidden_dims=(500,), mlp_activation=relu) |" in proc.stdout
    record, together = json.loads(out.read_text())["records"]
    assert (record["models"], together["models"]) == (1, 2)  # 2 models under jax.vmap
    assert together["final_step_finite"] and together["images_per_sec_median"] > 0
    assert (record["batch_size"], record["steps_per_rep"], record["reps"]) == (64, 3, 2)
    assert record["data"] == "synthetic" and record["final_step_finite"]
    lo, mid, hi = (record[f"images_per_sec_{k}"] for k in ("min", "median", "max"))
    assert 0 < lo <= mid <= hi
    assert record["gflops_per_sec"] == pytest.approx(mid * record["train_mflop_per_image"] / 1e3)
    assert record["start_to_first_step_seconds"] >= record["compile_seconds"] > 0


def test_bench_rejects_unknown_experiment_and_key():
    bad_args = (["--experiments", "mnst_z20"], ["--config.model.latent_dims=3"])
    for bad in (*bad_args, ["--peer", "/no/python"]):
        proc = subprocess.run(
            [sys.executable, "-m", "vae_jax.bench", *bad],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2 and "error:" in proc.stderr, proc.stderr


def test_peer_args_name_the_same_model():
    """The PyTorch peer gets each experiment's architecture and sizes; models it lacks get
    none."""
    assert bench.peer_args("mnist_z20", []) == ["--model", "conv", "--latent-dim", "20"]
    assert bench.peer_args("mnist_mlp_z20", []) == [
        "--model", "mlp", "--hidden", "500", "--latent-dim", "20"
    ]  # fmt: skip
    assert bench.peer_args("bmnist_resnet", []) == [
        "--model", "resnet", "--widths", "32", "64", "--blocks", "1", "--latent-dim", "32",
        "--binarize",
    ]  # fmt: skip
    assert bench.peer_args("mnist_z20", ["--config.model.latent_dim=7"])[-1] == "7"
    assert bench.peer_args("bmnist_ladder", []) is None
    assert bench.peer_args("mnist_z20", ["--config.objective.name=iwae"]) is None


def test_bench_with_a_peer_gives_the_ratio_round_by_round(tmp_path):
    """``--peer``: after each vae_jax measurement the peer runs (here a stand-in that prints
    what benchmarks/pytorch_seed_vae.py prints), and each record holds the faster layout and
    vae_jax's images/s over it."""
    peer = tmp_path / "python"
    layouts = [
        {"framework": "pytorch stand-in", "layout": "channels_last", "images_per_sec_median": 50.0},
        {"framework": "pytorch stand-in", "layout": "NCHW", "images_per_sec_median": 80.0},
    ]
    peer.write_text(f"#!/bin/sh\necho 'PEER {json.dumps(layouts)}'\n")
    peer.chmod(0o755)
    out = tmp_path / "bench.json"
    args = ["--experiments", "mnist_mlp_z20", "--batch", "64", "--steps", "2", "--reps", "1"]
    args += ["--rounds", "2", "--peer", str(peer), "--data", "synthetic", "--json", str(out)]
    proc = subprocess.run([sys.executable, "-m", "vae_jax.bench", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads(out.read_text())["records"]
    assert len(records) == 2  # two rounds: vae_jax, peer, vae_jax, peer
    for r in records:
        assert r["peer"]["layout"] == "NCHW" and len(r["peer"]["layouts"]) == 2
        assert r["vs_peer"] == pytest.approx(r["images_per_sec_median"] / 80.0)
        assert f"| mnist_mlp_z20 | 64 | {r['images_per_sec_median']:,.0f} | 80 (NCHW" in proc.stdout
