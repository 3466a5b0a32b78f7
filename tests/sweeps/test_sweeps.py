"""Sweeps: grid expansion and names, bad grids, shards, a tiny sweep end to end (resumable,
a rerun trains nothing), and runs trained together under jax.vmap equal runs trained alone."""

import csv
import math
import textwrap

import jax
import numpy as np
import pytest
from conftest import small_config, synthetic_dataset

from vae_jax.errors import ConfigError, NonFiniteError
from vae_jax.evaluation.trained_run import restore_run
from vae_jax.outputs.workdir import read_jsonl
from vae_jax.sweeps import runner as sweep_lib
from vae_jax.sweeps.grid import expand, load_sweep_spec, parse_shard, shard
from vae_jax.training import loop as loop_lib
from vae_jax.training.run import Run, train_and_evaluate, train_together

TINY_OVERRIDES = {
    "data.train_size": 128,
    "data.test_size": 64,
    "train.batch_size": 32,
    "train.num_epochs": 2,
    "train.log_every_steps": 2,
    "eval.batch_size": 64,
    "eval.iwae_k": 4,
    "eval.iwae_test_size": 16,
}


def _write_sweep(tmp_path, grid: dict, overrides: dict | None = None, name: str = "tiny"):
    path = tmp_path / f"{name}.py"
    path.write_text(
        textwrap.dedent(f"""
        def get_sweep():
            return {{"experiment": "mnist_z20", "grid": {grid!r},
                     "overrides": {overrides if overrides is not None else TINY_OVERRIDES!r}}}
        """)
    )
    return str(path)


def test_grid_expands_in_order_with_stable_unique_names(tmp_path):
    spec = {"model.latent_dim": [2, 10], "model.noise_scale": [0.5, 1.0, 2.0]}
    sweep = expand(*load_sweep_spec(_write_sweep(tmp_path, spec)))
    names = [p.name for p in sweep.points]
    assert names == [
        f"latent_dim={z},noise_scale={s},seed=0" for z in (2, 10) for s in (0.5, 1.0, 2.0)
    ]
    for p in sweep.points:
        assert p.config.model.latent_dim == p.values["model.latent_dim"]
        assert p.config.model.noise_scale == p.values["model.noise_scale"]
        assert p.config.data.train_size == 128  # the sweep's overrides reach every point
    # the same file gives the same names; adding a value keeps the old names
    again = expand(*load_sweep_spec(_write_sweep(tmp_path, spec)))
    assert [p.name for p in again.points] == names
    more = {"model.latent_dim": [2, 10, 20], "model.noise_scale": [0.5, 1.0, 2.0], "seed": [0]}
    assert set(names) < {
        p.name for p in expand(*load_sweep_spec(_write_sweep(tmp_path, more))).points
    }


def test_the_shipped_sweep_is_the_issue_grid():
    sweep = expand(*load_sweep_spec("latent_noise"))
    assert len(sweep.points) == 15 and sweep.experiment == "mnist_z20"
    assert {p.config.model.latent_dim for p in sweep.points} == {2, 5, 10, 20, 50}
    assert {p.config.model.noise_scale for p in sweep.points} == {0.5, 1.0, 2.0}


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"model.latent_dimm": [2]}, "unknown config key 'model.latent_dimm' (did you mean"),
        ({"model.latent_dim": []}, "must be a non-empty list"),
        ({"model.latent_dim": 5}, "must be a non-empty list"),
        ({}, "the grid is empty"),
        ({"model.latent_dim": [2, 2]}, "repeats a value"),
        ({"model.latent_dim": [0]}, "model.latent_dim=0 is invalid"),
        ({"model.arch": ["conv", "rnn"]}, "one of conv, ladder, mlp, resnet, two_layer"),
    ],
)
def test_bad_grid_fails_at_once_and_writes_nothing(tmp_path, grid, message):
    path = _write_sweep(tmp_path, grid)
    root = tmp_path / "sweep_out"
    with pytest.raises(ConfigError, match=None) as e:
        sweep_lib.run_sweep(path, root=root)
    assert message in str(e.value)
    assert not root.exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("def get_sweep(:\n", "cannot import the sweep file .*SyntaxError: invalid syntax"),
        ("def get_sweep():\n    return grid\n", r"get_sweep\(\) failed: NameError: name 'grid'"),
        ("def get_sweep():\n    return {'grid': [1]}\n", "'grid' must be a dict"),
        (
            "def get_sweep():\n    return {'grid': {'seed': [0]}, 'overrides': 3}\n",
            "'overrides' must be a dict",
        ),
    ],
)
def test_a_broken_sweep_file_is_a_config_error(tmp_path, text, message):
    path = tmp_path / "broken.py"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        sweep_lib.run_sweep(str(path), root=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_other_bad_input(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown sweep 'latent_nois'.*latent_noise"):
        sweep_lib.run_sweep("latent_nois", root=tmp_path / "x")
    with pytest.raises(ConfigError, match="grid key"):
        sweep_lib.run_sweep("latent_noise", ["--config.model.latent_dim=3"], root=tmp_path / "x")
    for bad in ("2/2", "1", "a/b", "0/0"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad)
    assert not (tmp_path / "x").exists()


def test_shards_cover_the_grid_exactly_once():
    points = expand(*load_sweep_spec("latent_noise")).points
    for n in (1, 2, 4, 15, 20):
        parts = [shard(points, i, n) for i in range(n)]
        names = [p.name for part in parts for p in part]
        assert sorted(names) == sorted(p.name for p in points)


def test_tiny_sweep_end_to_end_in_two_shards_then_nothing_to_do(tmp_path, monkeypatch, capsys):
    grid = {"model.latent_dim": [2, 3], "model.noise_scale": [0.5, 1.0]}
    path = _write_sweep(
        tmp_path, {**grid, "seed": [0]}, {**TINY_OVERRIDES, "eval.after_training": True}
    )
    root = tmp_path / "out"
    data = synthetic_dataset(128, 64)
    loads = []

    def load(cfg):
        loads.append(cfg.name)
        return data

    trained = []
    real = loop_lib.train
    monkeypatch.setattr(
        loop_lib,
        "train",
        lambda parts, members, *a: (
            trained.extend(m.name for m in members) or real(parts, members, *a)
        ),
    )
    sweep_lib.run_sweep(path, shard="0/2", vmap="on", root=root, load_data=load)
    first = list(trained)
    sweep_lib.run_sweep(path, shard="1/2", vmap="on", root=root, load_data=load)
    names = [f"latent_dim={z},noise_scale={s},seed=0" for z in (2, 3) for s in (0.5, 1.0)]
    assert sorted(trained) == sorted(names)  # every point trained exactly once
    assert first == names[0::2]
    assert len(loads) == 2  # the data are loaded once per process
    for name in names:
        assert len(read_jsonl(root / name / "metrics.jsonl")) == 2
        assert (root / name / "eval.json").exists()
    rows = list(csv.DictReader((root / "summary.csv").open()))
    assert [r["point"] for r in rows] == names
    assert all(np.isfinite(float(r["test_neg_elbo_nats"])) for r in rows)
    assert all(np.isfinite(float(r["iwae_nll_nats"])) for r in rows)
    pngs = ("elbo_vs_latent_dim.png", "rate_distortion.png", "reconstructions_epoch_01.png")
    for png in (*pngs, "reconstructions_epoch_02.png"):
        assert (root / png).stat().st_size > 1000
    summary_md = (root / "summary.md").read_text()
    assert summary_md.count("| latent_dim=") == 4

    trained.clear()
    capsys.readouterr()
    sweep_lib.run_sweep(path, vmap="on", root=root, load_data=load)
    assert trained == []  # the rerun trains nothing
    assert "4 finished, 0 to train" in capsys.readouterr().out


@pytest.mark.parametrize("arch", ["conv", "mlp"])
def test_runs_trained_together_equal_runs_trained_alone(tmp_path, arch):
    """Two noise scales and two seeds under jax.vmap vs. each run alone with the same key."""
    data = synthetic_dataset(128, 64)
    configs = []
    for seed, scale in ((0, 0.5), (1, 2.0)):
        c = small_config({"model.arch": arch, "model.noise_scale": scale, "seed": seed})
        c.train.num_epochs = 1
        configs.append(c)
    together = [Run(c, tmp_path / f"together{i}", f"p{i}") for i, c in enumerate(configs)]
    assert train_together(together, data) is not None
    for i, c in enumerate(configs):
        alone = tmp_path / f"alone{i}"
        train_and_evaluate(c, alone, dataset=data)
        _, state_v, meta_v = restore_run(tmp_path / f"together{i}")
        _, state_a, meta_a = restore_run(alone)
        assert int(state_v.step) == int(state_a.step) == 4
        for v, a in zip(
            jax.tree.leaves(state_v.params), jax.tree.leaves(state_a.params), strict=True
        ):
            np.testing.assert_allclose(np.asarray(v), np.asarray(a), rtol=1e-4, atol=1e-6)
        hv, ha = meta_v["history"][-1], meta_a["history"][-1]
        for key in ("train_loss_nats", "test_neg_elbo_nats", "test_kl_nats"):
            assert hv[key] == pytest.approx(ha[key], rel=1e-5)
        assert hv["models_together"] == 2
    # the two runs did differ (different seeds and noise scales)
    a0 = restore_run(tmp_path / "together0")[1].params
    a1 = restore_run(tmp_path / "together1")[1].params
    assert not np.allclose(jax.tree.leaves(a0)[0], jax.tree.leaves(a1)[0])


def test_group_at_different_steps_is_trained_one_by_one(tmp_path):
    data = synthetic_dataset(128, 64)
    c0 = small_config({"seed": 0})
    c1 = small_config({"seed": 1})
    c0.train.num_epochs = c1.train.num_epochs = 1
    train_and_evaluate(c0, tmp_path / "a", dataset=data)  # one run is ahead
    assert train_together([Run(c0, tmp_path / "a"), Run(c1, tmp_path / "b")], data) is None
    assert not (tmp_path / "b").exists()  # nothing written for the other


def test_vmap_auto_follows_the_measurement():
    assert not sweep_lib.vmap_pays_off("cpu")
    assert sweep_lib.vmap_pays_off("gpu") and sweep_lib.vmap_pays_off("tpu")


@pytest.mark.slow
def test_non_finite_point_fails_alone_and_the_sweep_says_so(tmp_path, capsys):
    """A NaN inside a vmapped group: the group is retrained one by one, the bad points are
    named, the others finish, and the command ends with an error."""
    grid = {"model.noise_scale": [0.5, 1.0], "train.learning_rate": [1e-3, 1e30]}
    path = _write_sweep(tmp_path, grid)
    root = tmp_path / "out"
    with pytest.raises(
        NonFiniteError,
        match=r"noise_scale=0.5,learning_rate=1e\+30,seed=0, noise_scale=1.0,learning_rate=1e\+30",
    ):
        sweep_lib.run_sweep(path, vmap="on", root=root, load_data=lambda c: synthetic_dataset())
    out = capsys.readouterr().out
    assert "Retraining these points one by one" in out
    rows = list(csv.DictReader((root / "summary.csv").open()))
    assert [r["point"] for r in rows] == [
        "noise_scale=0.5,learning_rate=0.001,seed=0",
        "noise_scale=1.0,learning_rate=0.001,seed=0",
    ]


def _fake_point(root, point, elbo: float) -> None:
    """A finished point's files as training writes them (metrics.jsonl, eval.json), with a
    made-up test -ELBO."""
    import json

    from vae_jax.outputs.plots import make_grid, recon_path, save_png

    run = root / point.name
    (run / "figures").mkdir(parents=True)
    record = {
        "epoch": 1, "step": 4, "test_neg_elbo_nats": elbo, "test_recon_nats": elbo - 10,
        "test_kl_nats": 10.0, "train_seconds": 1.0, "eval_seconds": 0.1,
        "compile_seconds": 0.5, "images_per_sec": 100.0, "models_together": 1,
    }  # fmt: skip
    (run / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    (run / "eval.json").write_text(json.dumps({"step": 4, "test_neg_elbo_nats": elbo}))
    grid = make_grid(np.full((64, 28, 28), elbo % 1.0))
    save_png(recon_path(run / "figures", 1), grid)
    save_png(run / "figures" / "originals.png", grid)


def test_the_summary_follows_the_grid_keys_and_averages_only_seeds(tmp_path):
    """A 3-key grid (beta x latent size x noise scale) with 2 seeds: a column per key (beta's
    too), a line per value of the second key, a panel per value of the third, and two betas
    are never averaged together (only seeds are)."""
    from vae_jax.sweeps import summary

    grid = {
        "objective.beta": [1.0, 4.0],
        "model.latent_dim": [2, 5],
        "model.noise_scale": [0.5, 1.0],
        "seed": [0, 1],
    }
    sweep = expand(*load_sweep_spec(_write_sweep(tmp_path, grid, {"train.num_epochs": 1})))
    root = tmp_path / "out"

    def elbo(v):  # far apart by beta, 1 nat apart by seed
        return 100 * (v["objective.beta"] == 4.0) + v["model.latent_dim"] + v["seed"]

    for p in sweep.points:
        _fake_point(root, p, elbo(p.values) + 0.25 * p.values["model.noise_scale"])
    summary.write_summary(root, sweep)
    rows = list(csv.DictReader((root / "summary.csv").open()))
    assert list(rows[0])[:5] == ["point", "beta", "latent_dim", "noise_scale", "seed"]
    assert len(rows) == 16
    layout = summary.Layout.of(sweep)
    assert (layout.x, layout.line, layout.panels) == (
        "objective.beta", "model.latent_dim", ["model.noise_scale"]
    )  # fmt: skip
    series = summary.elbo_series(summary.collect(root, sweep), layout)
    assert set(series) == {(0.5,), (1.0,)}  # a panel per noise scale
    for (scale,), lines in series.items():
        assert set(lines) == {2, 5}  # a line per latent size
        for z, points in lines.items():
            assert [x for x, *_ in points] == [1.0, 4.0]
            for beta, mean, std, seeds in points:
                assert seeds == 2  # only the seeds were averaged
                want = 100 * (beta == 4.0) + z + 0.5 + 0.25 * scale
                assert mean == pytest.approx(want) and std == pytest.approx(np.std([0, 1], ddof=1))
    for png in ("elbo_vs_beta.png", "rate_distortion.png", "reconstructions_epoch_01.png"):
        assert (root / png).stat().st_size > 10_000, png


def test_the_summary_takes_eval_json_only_of_the_last_step(tmp_path):
    """A point trained further after it was evaluated: its stale eval.json (step 2, not 4) is
    not its result; the last epoch's logged numbers are."""
    import json

    from vae_jax.sweeps import summary

    sweep = expand(
        *load_sweep_spec(_write_sweep(tmp_path, {"seed": [0, 1]}, {"train.num_epochs": 1}))
    )
    root = tmp_path / "out"
    for p in sweep.points:
        _fake_point(root, p, 90.0)
    stale = root / sweep.points[1].name / "eval.json"
    stale.write_text(json.dumps({"step": 2, "test_neg_elbo_nats": 120.0, "iwae_nll_nats": 110.0}))
    rows = summary.collect(root, sweep)
    assert [r["test_neg_elbo_nats"] for r in rows] == [90.0, 90.0]
    assert math.isnan(rows[1]["iwae_nll_nats"])
