"""The analytic FLOP counts (closed forms, and XLA's own count of the MLP) and a tiny
``python -m vae_jax.bench`` run (its JSON records, no timing assertions)."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from conftest import ROOT

from vae_jax.config import base_config, load_experiment
from vae_jax.core import flops
from vae_jax.core.models import init_params, make_model


def test_seed_conv_flops_closed_form():
    # convs 14x14x16 (5x5x1), 7x7x32 (5x5x16); heads 1568->20 twice; 20->1568; deconvs from
    # 7x7x32 (5x5, 16 out) and 14x14x16 (5x5, 1 out); 2 FLOPs per multiply-add.
    want = 2 * (
        14 * 14 * 16 * 25 + 7 * 7 * 32 * 25 * 16 + 2 * 1568 * 20 + 20 * 1568
        + 7 * 7 * 32 * 25 * 16 + 14 * 14 * 16 * 25
    )  # fmt: skip
    assert flops.forward_flops((28, 28, 1), **base_config().model) == want == 3_010_560
    assert flops.train_flops((28, 28, 1), **base_config().model) == 3 * want


@pytest.mark.parametrize("experiment", ["mnist_mlp_z20", "bmnist_mlp_burda"])
def test_mlp_flops_match_xla_cost_analysis(experiment):
    config = load_experiment(experiment).model
    model = make_model((28, 28, 1), **config)
    params = init_params(model, jax.random.key(0), (28, 28, 1))
    x = jnp.zeros((1, 28, 28, 1))
    cost = jax.jit(lambda p, x: model.apply({"params": p}, x)).lower(params, x).compile()
    analysis = cost.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    # __call__ decodes the mean: XLA drops the unused logvar head.
    want = flops.forward_flops((28, 28, 1), **config) - 2 * config.mlp_hidden_dims[-1] * (
        config.latent_dim
    )
    assert analysis["flops"] == pytest.approx(want, rel=0.02)


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
    assert "| mnist_mlp_z20 |" in proc.stdout
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
    for bad in (["--experiments", "mnst_z20"], ["--config.model.latent_dims=3"]):
        proc = subprocess.run(
            [sys.executable, "-m", "vae_jax.bench", *bad],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2 and "error:" in proc.stderr, proc.stderr
