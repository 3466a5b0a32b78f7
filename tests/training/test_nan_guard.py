"""A NaN in the loss stops the run at that step, names its batch, and saves nothing after it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_cli, small_config, synthetic_dataset

from vae_jax.core import pixels, rng
from vae_jax.core.train_step import epoch_permutation
from vae_jax.errors import NonFiniteError
from vae_jax.evaluation.trained_run import restore_run
from vae_jax.outputs.checkpoints import Checkpointer
from vae_jax.training.run import train_and_evaluate

POISON = 13  # a pixel value the synthetic images (0 or 255) never have


def test_poisoned_batch_stops_the_run_before_any_bad_save(tmp_path, monkeypatch):
    data = synthetic_dataset()
    config = small_config({"checkpoint.every_steps": 2})
    perm = np.asarray(epoch_permutation(rng.root_key(config.seed), 0, len(data.train_images)))
    poisoned = int(perm[5 * config.train.batch_size + 7])  # in the batch of step 5
    data.train_images[poisoned, 0, 0, 0] = POISON
    to_float = pixels.to_float

    def poisoning_to_float(images):
        bad = jnp.any(images == POISON, axis=(1, 2, 3), keepdims=True)
        return jnp.where(bad, jnp.nan, to_float(images))

    monkeypatch.setattr(pixels, "to_float", poisoning_to_float)
    with pytest.raises(NonFiniteError) as e:
        train_and_evaluate(config, tmp_path, data)
    message = str(e.value)
    assert "non-finite loss or gradient at step 5 (epoch 1, batch 6 of 8)" in message
    assert f" {poisoned}," in message or f"[{poisoned}," in message
    assert "The newest checkpoint (step 4) predates it" in message
    assert "train.learning_rate" in message
    assert Checkpointer(tmp_path / "checkpoints", 3).steps() == [2, 4]
    state = restore_run(tmp_path)[1]
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))


def test_exploding_learning_rate_exits_1_with_advice(tmp_path, mnist_dir):
    workdir = tmp_path / "run"
    out = run_cli(
        "train",
        "mnist_mlp_z20",
        "--workdir",
        str(workdir),
        "--config.train.learning_rate=1e30",
        "--config.data.train_size=512",
        "--config.data.test_size=256",
        "--config.checkpoint.every_steps=1",
    )
    assert out.returncode == 1, out.stderr[-3000:]
    assert "error: non-finite loss or gradient at step" in out.stderr
    assert "a lower train.learning_rate (now 1e+30)" in out.stderr
    assert "Traceback" not in out.stderr
