"""The training loop on a small synthetic dataset: determinism, resume, checkpoints, outputs."""

import json
import logging
import struct

import jax
import numpy as np
import pytest
from conftest import small_config, synthetic_dataset

from vae_jax.config.keys import to_json_dict
from vae_jax.errors import ConfigError
from vae_jax.evaluation.trained_run import restore_run
from vae_jax.outputs.metrics import tensorboard_scalars
from vae_jax.outputs.workdir import read_jsonl
from vae_jax.training.run import train_and_evaluate


def _tensorboard_events(logdir) -> list:
    """Every summary value in the event files, as (tag, step, value), parsed without
    TensorFlow; an image's value is its (height, width)."""
    from tensorboardX.proto.event_pb2 import Event

    out = []
    for path in logdir.glob("events.out.tfevents.*"):
        raw, i = path.read_bytes(), 0
        while i < len(raw):  # TFRecord: u64 length, u32 crc, payload, u32 crc
            (n,) = struct.unpack("<Q", raw[i : i + 8])
            event = Event.FromString(raw[i + 12 : i + 12 + n])
            for v in event.summary.value:
                image = (v.image.height, v.image.width) if v.HasField("image") else None
                out.append((v.tag, event.step, image or v.simple_value))
            i += 12 + n + 4
    return out


def _params(workdir):
    return restore_run(workdir)[1].params


def _assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset()


def test_same_seed_same_params_different_seed_different(tmp_path, data):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train_and_evaluate(
            small_config({"seed": seed, "train.num_epochs": 1}), tmp_path / name, data
        )
    _assert_trees_equal(_params(tmp_path / "a"), _params(tmp_path / "b"))
    a, c = jax.tree.leaves(_params(tmp_path / "a")), jax.tree.leaves(_params(tmp_path / "c"))
    assert all(not np.allclose(x, y) for x, y in zip(a, c, strict=True) if x.size > 1)


def test_resume_after_epoch_k_equals_uninterrupted_run(tmp_path, data):
    """Bit for bit: parameters, optimizer state and per-epoch metrics."""
    full = train_and_evaluate(small_config({"train.num_epochs": 3}), tmp_path / "full", data)
    first = train_and_evaluate(small_config({"train.num_epochs": 1}), tmp_path / "split", data)
    resumed = train_and_evaluate(small_config({"train.num_epochs": 3}), tmp_path / "split", data)
    assert len(first) == 1 and len(resumed) == 3
    _, a, _ = restore_run(tmp_path / "full")
    _, b, _ = restore_run(tmp_path / "split")
    _assert_trees_equal(a, b)
    skip = ("train_seconds", "images_per_sec", "eval_seconds", "compile_seconds", "cpu_seconds")
    skip += ("time",)
    for x, y in zip(full, resumed, strict=True):
        assert {k: v for k, v in x.items() if k not in skip} == {
            k: v for k, v in y.items() if k not in skip
        }
    assert read_jsonl(tmp_path / "split" / "metrics.jsonl") == resumed


def test_finished_run_does_nothing(tmp_path, data, capsys):
    history = train_and_evaluate(small_config({"train.num_epochs": 1}), tmp_path, data)
    mtime = (tmp_path / "metrics.jsonl").stat().st_mtime_ns
    assert train_and_evaluate(small_config({"train.num_epochs": 1}), tmp_path, data) == history
    assert "finished" in capsys.readouterr().out
    assert (tmp_path / "metrics.jsonl").stat().st_mtime_ns == mtime


def test_outputs_of_a_run(tmp_path, data):
    history = train_and_evaluate(small_config({"train.num_epochs": 3}), tmp_path, data, name="tiny")
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert [r["step"] for r in history] == [8, 16, 24]  # 256 images, batch 32
    assert history[-1]["train_loss_nats"] < history[0]["train_loss_nats"]
    assert history[-1]["test_neg_elbo_nats"] < history[0]["test_neg_elbo_nats"]
    for r in history:
        assert r["test_neg_elbo_nats"] == pytest.approx(r["test_recon_nats"] + r["test_kl_nats"])
        assert r["train_loss_nats"] == pytest.approx(r["train_recon_nats"] + r["train_kl_nats"])
        assert r["images_per_sec"] > 0
    assert read_jsonl(tmp_path / "metrics.jsonl") == history
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model"]["latent_dim"] == 20 and saved["train"]["batch_size"] == 32
    names = {p.name for p in (tmp_path / "figures").iterdir()}
    assert names == {
        "originals.png",
        "reconstructions.png",
        *(f"recon_epoch_{e:02d}.png" for e in (1, 2, 3)),
        *(f"samples_epoch_{e:02d}.png" for e in (1, 2, 3)),
    }
    events = _tensorboard_events(tmp_path / "tensorboard")
    epoch_scalars = {e for e in events if e[0] != "train/loss_running_nats" and e[0] in {
        tag for r in history for tag in tensorboard_scalars(r)}}  # fmt: skip
    assert epoch_scalars == {
        (tag, r["epoch"], float(np.float32(value)))  # TensorBoard stores float32
        for r in history
        for tag, value in tensorboard_scalars(r).items()
    }
    # the running train loss every log_every_steps (4) steps, images of every epoch, hparams
    running = [(step, value) for tag, step, value in events if tag == "train/loss_running_nats"]
    assert [s for s, _ in running] == [4, 12, 20]  # read one log point late: no stall
    assert all(np.isfinite(v) and v > 0 for _, v in running)
    grids = {(tag, step) for tag, step, value in events if isinstance(value, tuple)}
    assert grids == {(t, e) for t in ("reconstructions", "samples") for e in (1, 2, 3)}
    assert list((tmp_path / "tensorboard" / "hparams").glob("events.out.tfevents.*"))
    ckpts = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert ckpts == [8, 16, 24]
    assert not list(tmp_path.rglob("*.tmp"))


def test_test_elbo_is_reproducible_from_the_checkpoint(tmp_path, data):
    """Evaluating the saved parameters again gives the logged test -ELBO exactly."""
    from vae_jax.core import rng
    from vae_jax.evaluation.evaluators import make_test_evaluator

    history = train_and_evaluate(small_config({"train.num_epochs": 1}), tmp_path, data)
    parts, state, _ = restore_run(tmp_path)
    key = rng.stream(state.root, rng.Stream.EVAL)
    evaluate = make_test_evaluator(parts, data.test_images, key)
    assert evaluate(state.params)["neg_elbo"] == history[-1]["test_neg_elbo_nats"]


@pytest.mark.parametrize("binarize", ["dynamic", "static"])
def test_binarized_training(tmp_path, data, binarize):
    history = train_and_evaluate(small_config({"data.binarize": binarize}), tmp_path, data)
    assert np.isfinite(history[-1]["test_neg_elbo_nats"])


def test_reported_test_kl_is_that_of_the_scaled_posterior(tmp_path, data):
    """With noise_scale=2 the logged test KL is KL(N(mean, (2*stddev)^2) || N(0, I)),
    recomputed here in float64 from the saved encoder's outputs."""
    config = small_config({"model.noise_scale": 2.0, "train.num_epochs": 1})
    history = train_and_evaluate(config, tmp_path, data)
    parts, state, _ = restore_run(tmp_path)
    mean, logvar = parts.model.apply(
        {"params": state.params}, data.test_images.astype(np.float32) / 255.0, method="encode"
    )
    mean, var = np.asarray(mean, np.float64), 4.0 * np.exp(np.asarray(logvar, np.float64))
    kl = 0.5 * np.sum(mean**2 + var - np.log(var) - 1.0, axis=-1).mean()
    assert history[0]["test_kl_nats"] == pytest.approx(kl, rel=1e-5)
    seed_kl = 0.5 * np.sum(mean**2 + var / 4 - np.log(var / 4) - 1.0, axis=-1).mean()
    assert kl - seed_kl > 1.0  # the seed's latent term would understate it


def test_workdir_with_other_config_is_refused_and_untouched(tmp_path, data):
    train_and_evaluate(small_config({"train.num_epochs": 1}), tmp_path, data)
    before = sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    with pytest.raises(ConfigError, match=r"model.latent_dim: 20 in the workdir, 5 now"):
        train_and_evaluate(small_config({"model.latent_dim": 5}), tmp_path, data)
    assert sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before


def test_restore_run_without_a_run_or_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="holds no vae_jax run"):
        restore_run(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(to_json_dict(small_config())))
    with pytest.raises(ConfigError, match="has no checkpoint yet"):
        restore_run(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_foreign_nonempty_directory_is_refused(tmp_path, data):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds no vae_jax run"):
        train_and_evaluate(small_config(), tmp_path, data)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_no_recompilation_after_the_first_step(tmp_path, data, caplog):
    """Compilations in a 1-epoch run equal those in a 3-epoch run: nothing compiles per epoch."""

    def count(workdir, epochs):
        caplog.clear()
        with jax.log_compiles(), caplog.at_level(logging.WARNING):
            train_and_evaluate(small_config({"train.num_epochs": epochs}), workdir, data)
        return sum("Compiling" in r.getMessage() for r in caplog.records)

    one, three = count(tmp_path / "one", 1), count(tmp_path / "three", 3)
    assert one > 0
    assert three == one


def test_a_run_saved_before_keys_existed_resumes_bit_exactly(tmp_path, data, capsys):
    """A run of vae_jax 0.1 (its config.json without the keys added since, e.g. objective.*,
    train.schedule) counts them as their defaults, says so once, and ends bit for bit where an
    uninterrupted run ends; a changed value of such a key still refuses to resume."""
    from vae_jax.config.keys import unflatten
    from vae_jax.config.saved import FIRST_KEYS
    from vae_jax.core.settings import flatten

    full = train_and_evaluate(small_config({"train.num_epochs": 2}), tmp_path / "full", data)
    train_and_evaluate(small_config({"train.num_epochs": 1}), tmp_path / "old", data)
    saved = json.loads((tmp_path / "old" / "config.json").read_text())
    old = {k: v for k, v in flatten(saved).items() if k in FIRST_KEYS}  # as vae_jax 0.1 wrote it
    old_json = unflatten(old).to_dict()
    (tmp_path / "old" / "config.json").write_text(json.dumps(old_json))

    with pytest.raises(ConfigError, match=r"objective.beta: 1.0 in the workdir, 2.0 now"):
        train_and_evaluate(small_config({"objective.beta": 2.0}), tmp_path / "old", data)
    capsys.readouterr()
    resumed = train_and_evaluate(small_config({"train.num_epochs": 2}), tmp_path / "old", data)
    out = capsys.readouterr().out
    assert out.count("predates ") == 1 and "objective.beta=1.0" in out
    assert [r["test_neg_elbo_nats"] for r in resumed] == [r["test_neg_elbo_nats"] for r in full]
    _assert_trees_equal(_params(tmp_path / "full"), _params(tmp_path / "old"))
    assert json.loads((tmp_path / "old" / "config.json").read_text())["objective"]["beta"] == 1.0

    # a key the file was written with, missing: a damaged file, refused, never a default
    del old_json["data"]["test_size"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(old_json))
    with pytest.raises(ConfigError, match=r"lacks data.test_size, which it was written with"):
        restore_run(tmp_path / "old")
    current = json.loads((tmp_path / "full" / "config.json").read_text())
    del current["objective"]["beta"]  # the digest of its keys no longer matches
    (tmp_path / "full" / "config.json").write_text(json.dumps(current))
    with pytest.raises(ConfigError, match=r"lacks objective.beta, which it was written with"):
        restore_run(tmp_path / "full")


def test_learning_rate_schedules():
    from vae_jax.core.train_step import learning_rate_schedule

    staircase = learning_rate_schedule(3280, 1e-3, "staircase", 0)  # Burda et al.'s, 1 step/pass
    starts = np.cumsum([0] + [3**i for i in range(8)])[:-1]  # stage i starts after 3^0..3^(i-1)
    for i, start in enumerate(starts):
        assert float(staircase(start)) == pytest.approx(1e-3 * 10 ** (-i / 7), rel=1e-5)
    assert float(staircase(3279)) == pytest.approx(1e-3 * 10 ** (-1), rel=1e-5)
    for total in (1, 10, 100, 1000):  # short runs, where early stages are shorter than a step
        short = learning_rate_schedule(total, 1e-3, "staircase", 0)
        assert float(short(total - 1)) == pytest.approx(1e-4, rel=1e-5), total
        rates = [float(short(s)) for s in range(total)]
        assert rates == sorted(rates, reverse=True) and rates[0] <= 1e-3
    cosine = learning_rate_schedule(100, 1e-3, "cosine", 10)
    assert float(cosine(0)) == 0.0 and float(cosine(10)) == pytest.approx(1e-3)
    assert float(cosine(55)) == pytest.approx(0.5e-3, rel=1e-3) and float(cosine(100)) < 1e-9


def test_gradient_clipping_and_skipping():
    """``grad_clip_norm`` scales a gradient above it to that norm before Adam;
    ``grad_skip_norm`` drops an update whose gradient is above it, leaving Adam's moments and
    step count (the schedule's position) as they were, and applies one below it."""
    import jax.numpy as jnp
    import optax

    from vae_jax.core.train_step import make_optimizer

    params, big = {"w": jnp.zeros(4)}, {"w": jnp.array([30.0, 40.0, 0.0, 0.0])}  # norm 50
    adam = {"learning_rate": 1e-3, "schedule": "constant", "warmup_steps": 0, "adam_eps": 1e-4}
    clip = make_optimizer(10, **adam, grad_clip_norm=5.0, grad_skip_norm=0.0)
    _, state = clip.update(big, clip.init(params), params)
    mu = optax.tree_utils.tree_get(state, "mu")  # (1 - b1) * the clipped gradient
    np.testing.assert_allclose(mu["w"], [0.3, 0.4, 0.0, 0.0], rtol=1e-6)

    skip = make_optimizer(10, **adam, grad_clip_norm=0.0, grad_skip_norm=10.0)
    start = skip.init(params)
    updates, skipped = skip.update(big, start, params)
    assert not np.any(updates["w"])
    kept = (start.inner_opt_state, start.gradient_step)  # skip_state records the norm
    for before, after in zip(
        jax.tree.leaves(kept),
        jax.tree.leaves((skipped.inner_opt_state, skipped.gradient_step)),
        strict=True,
    ):
        np.testing.assert_array_equal(before, after)
    small = {"w": jnp.array([0.3, 0.4, 0.0, 0.0])}  # norm 0.5
    updates, taken = skip.update(small, skipped, params)
    assert np.all(np.asarray(updates["w"][:2]) < 0)
    inner = taken.inner_opt_state
    counts = optax.tree_utils.tree_get_all_with_path(inner, "count")  # Adam's, the schedule's
    assert [int(count) for _, count in counts] == [1, 1]
    np.testing.assert_allclose(optax.tree_utils.tree_get(inner, "mu")["w"], [0.03, 0.04, 0, 0])


def test_a_scheduled_run_resumes_bit_exactly(tmp_path, data):
    """The schedule's position is Adam's step count, saved in the checkpoint: resuming at
    step 8 of a staircase run with Adam eps 1e-4 ends where the uninterrupted run ends."""
    import shutil

    config = small_config(
        {"train.num_epochs": 3, "train.schedule": "staircase", "train.adam_eps": 1e-4}
    )
    train_and_evaluate(config, tmp_path / "full", data)
    train_and_evaluate(config, tmp_path / "cut", data)
    for step in ("16", "24"):  # as if the run had stopped after epoch 1
        shutil.rmtree(tmp_path / "cut" / "checkpoints" / step)
    resumed = train_and_evaluate(config, tmp_path / "cut", data)
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    _assert_trees_equal(restore_run(tmp_path / "full")[1], restore_run(tmp_path / "cut")[1])
    constant = small_config({"train.num_epochs": 1})
    train_and_evaluate(constant, tmp_path / "constant", data)
    assert not np.array_equal(  # the schedule and eps did change the training
        jax.tree.leaves(_params(tmp_path / "constant"))[0],
        jax.tree.leaves(_params(tmp_path / "full"))[0],
    )
    longer = small_config(
        {"train.num_epochs": 4, "train.schedule": "staircase", "train.adam_eps": 1e-4}
    )
    before = sorted(p.name for p in (tmp_path / "full" / "checkpoints").iterdir())
    with pytest.raises(ConfigError, match=r"sets the length of the staircase learning-rate"):
        train_and_evaluate(longer, tmp_path / "full", data)
    assert sorted(p.name for p in (tmp_path / "full" / "checkpoints").iterdir()) == before
    train_and_evaluate(small_config({"train.num_epochs": 2}), tmp_path / "constant", data)
    assert [r["epoch"] for r in read_jsonl(tmp_path / "constant" / "metrics.jsonl")] == [1, 2]


def test_several_steps_per_call_compute_what_single_steps_do(tmp_path, data):
    """train.steps_per_call=3 over 8 steps an epoch, log points every 4, a save every 10: calls
    of 3 and of 1 mix, none passes a log point, a save or the epoch's end, and the run is bit
    for bit the one called step by step, also resumed from it."""
    every = {"train.num_epochs": 3, "checkpoint.every_steps": 10, "checkpoint.max_to_keep": 20}
    one = train_and_evaluate(small_config(every), tmp_path / "one", data)
    three = train_and_evaluate(small_config({**every, "train.steps_per_call": 3}),
                               tmp_path / "three", data)  # fmt: skip
    train_and_evaluate(small_config({**every, "train.num_epochs": 1}), tmp_path / "mixed", data)
    train_and_evaluate(small_config({**every, "train.steps_per_call": 3}), tmp_path / "mixed", data)
    _, a, _ = restore_run(tmp_path / "one")
    for other in ("three", "mixed"):
        _assert_trees_equal(a, restore_run(tmp_path / other)[1])
    timing = ("train_seconds", "images_per_sec", "eval_seconds", "compile_seconds", "cpu_seconds")
    for x, y in zip(one, three, strict=True):
        assert {k: v for k, v in x.items() if k not in (*timing, "time")} == {
            k: v for k, v in y.items() if k not in (*timing, "time")
        }

    def running(run):  # the running train loss at the log points
        events = _tensorboard_events(tmp_path / run / "tensorboard")
        return sorted((step, v) for tag, step, v in events if tag == "train/loss_running_nats")

    assert running("one") and running("one") == running("three")
    saved = sorted(int(p.name) for p in (tmp_path / "three" / "checkpoints").iterdir()
                   if p.name.isdigit())  # fmt: skip
    assert saved == [8, 10, 16, 20, 24]


def test_calls_of_several_steps_end_at_every_point_the_loop_looks_at():
    """Epoch ends (8 steps), log points (4), saves (10), the bench's last step (21)."""
    from types import SimpleNamespace

    from vae_jax.training.steps import call_size

    config = small_config({"checkpoint.every_steps": 10, "train.steps_per_call": 3})
    parts = SimpleNamespace(steps_per_epoch=8, config=config)
    step, calls = 0, []
    while step < 21:
        n = call_size(step % 8, step, parts, until=21)
        calls.append(n)
        step += n
    ends = np.cumsum(calls).tolist()
    assert calls.count(3) >= 4 and set(calls) == {1, 3} and ends[-1] == 21
    assert {4, 8, 10, 12, 16, 20} <= set(ends)
