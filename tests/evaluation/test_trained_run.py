"""vae_jax.load_run: a trained run in a notebook, against what training logged and evaluated."""

import json
import shutil

import jax
import numpy as np
import pytest
from conftest import small_config, synthetic_dataset

import vae_jax
from vae_jax.errors import ConfigError, DataError
from vae_jax.outputs.workdir import read_jsonl


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("api") / "run"
    dataset = synthetic_dataset()
    config = small_config({"eval.after_training": True, "eval.iwae_test_size": 0})
    history = vae_jax.train(config, workdir, dataset=dataset)
    return workdir, dataset, history


def test_load_run_reproduces_what_training_logged(trained):
    workdir, dataset, history = trained
    run = vae_jax.load_run(workdir)
    assert isinstance(run, vae_jax.TrainedRun)
    assert run.step == history[-1]["step"] == 16 and run.image_shape == (28, 28, 1)
    assert run.config.model.latent_dim == 20
    # the run's own test noise: the mean ELBO is minus the logged test -ELBO
    elbo = run.elbo(dataset.test_images)
    assert elbo.shape == (96,)
    assert -elbo.mean() == pytest.approx(history[-1]["test_neg_elbo_nats"], rel=1e-6)
    evaluation = json.loads((workdir / "eval.json").read_text())
    bounds = run.iwae(dataset.test_images)  # eval.iwae_k samples, the run's own noise
    assert -bounds.mean() == pytest.approx(evaluation["iwae_nll_nats"], rel=1e-6)
    assert bounds.mean() > elbo.mean()  # k=8 samples: a tighter bound than the ELBO


def test_encode_decode_reconstruct_sample(trained):
    workdir, dataset, _ = trained
    run = vae_jax.load_run(workdir)
    images = dataset.test_images[:70]  # more than one batch of eval.batch_size (64)
    mean, stddev = run.encode(images)
    assert mean.shape == stddev.shape == (70, 20) and np.all(stddev > 0)
    recon = run.reconstruct(images)
    np.testing.assert_allclose(recon, run.decode(mean), rtol=1e-6)
    assert recon.shape == (70, 28, 28, 1) and recon.min() >= 0.0 and recon.max() <= 1.0
    # images as floats in [0, 1] or without the channel axis: the same numbers
    np.testing.assert_allclose(
        run.encode(images[..., 0].astype(np.float32) / 255)[0], mean, rtol=1e-5
    )
    a, b = run.sample(jax.random.key(1), 5), run.sample(1, 5)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (5, 28, 28, 1) and not np.allclose(a[0], a[1])
    # other noise, other ELBO values
    assert not np.allclose(run.elbo(images, jax.random.key(7)), run.elbo(images))


def test_load_run_errors(trained, tmp_path):
    workdir, *_ = trained
    with pytest.raises(ConfigError, match="there is no run at"):
        vae_jax.load_run(tmp_path / "nothing")
    with pytest.raises(DataError, match=r"images are \(32, 32, 1\); this run takes \(28, 28, 1\)"):
        vae_jax.load_run(workdir).encode(np.zeros((2, 32, 32), np.uint8))


def test_the_checkpoint_is_plain_orbax_with_a_flax_params_tree(trained):
    """README, "The checkpoint format": readable without vae_jax."""
    import orbax.checkpoint as ocp

    workdir, *_ = trained
    manager = ocp.CheckpointManager(
        (workdir / "checkpoints").absolute(),
        options=ocp.CheckpointManagerOptions(read_only=True),
        item_names=("state", "meta"),
    )
    step = manager.latest_step()
    saved = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore())
    )
    manager.close()
    params = saved["state"]["train_state"]["params"]
    assert params["encoder"]["mean"]["kernel"].shape == (1568, 20)
    assert saved["meta"]["step"] == step and saved["meta"]["image_shape"] == [28, 28, 1]
    run = vae_jax.load_run(workdir)
    jax.tree.map(np.testing.assert_array_equal, run.params, params)


def test_the_nll_curve_of_a_run(trained, mnist_dir):
    from vae_jax.evaluation import curve

    workdir, *_ = trained
    assert curve.main([str(workdir), "--k", "4", "--images", "20", "--every", "1",
                       "--reference", "500", "a line"]) == 0  # fmt: skip
    saved = json.loads((workdir / "curve.json").read_text())
    assert [p["epoch"] for p in saved["points"]] == [1, 2]
    minutes = [p["cpu_minutes"] for p in saved["points"]]
    history = read_jsonl(workdir / "metrics.jsonl")
    per_core = np.cumsum([r["cpu_seconds"] / r["cpu_cores"] for r in history]) / 60
    np.testing.assert_allclose(minutes, per_core[:2], rtol=1e-12)
    assert 0 < minutes[0] < minutes[1]
    last = saved["points"][-1]
    run = vae_jax.load_run(workdir, last["step"])
    bounds = run.iwae(vae_jax.load_data(run.config.data).test_images[:20], k=4)
    assert last["iwae_nll"] == pytest.approx(-bounds.mean(), rel=1e-12)
    assert (workdir / "figures" / "nll_vs_cpu_minutes.png").stat().st_size > 10_000


def test_the_nll_curve_needs_kept_checkpoints(tmp_path, trained, capsys):
    from vae_jax.evaluation import curve

    workdir = tmp_path / "run"
    shutil.copytree(trained[0], workdir)
    (workdir / "curve.json").unlink(missing_ok=True)  # another test's
    for step in (workdir / "checkpoints").iterdir():
        shutil.rmtree(step)
    assert curve.main([str(workdir), "--k", "4", "--images", "20"]) == 2
    assert "keeps no checkpoint of a finished epoch" in capsys.readouterr().err
    assert not (workdir / "curve.json").exists()
