"""Checkpoints: round trip, verification, and falling back past damaged ones."""

import shutil

import jax
import numpy as np
import pytest
from conftest import small_config, synthetic_dataset

from vae_jax.core.sharding import make_mesh
from vae_jax.errors import CheckpointError
from vae_jax.evaluation.trained_run import restore_run
from vae_jax.outputs.checkpoints import Checkpointer, tree_sha256
from vae_jax.parts import build_parts, checkpoint_shapes
from vae_jax.training.run import train_and_evaluate


def _random_state(seed=0):
    like = checkpoint_shapes(build_parts(small_config(), (28, 28, 1), make_mesh()))
    leaves, treedef = jax.tree.flatten(like)
    rng = np.random.default_rng(seed)
    return like, jax.tree.unflatten(
        treedef,
        [
            jax.device_put(
                rng.integers(0, 2**31, s.shape).astype(s.dtype)
                if np.issubdtype(s.dtype, np.integer)
                else rng.normal(size=s.shape).astype(s.dtype),
                s.sharding,
            )
            for s in leaves
        ],
    )


def _assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_keeps_the_newest_and_verifies(tmp_path):
    like, state = _random_state()
    meta = {"epoch": 3, "image_shape": [28, 28, 1], "history": [{"a": 1.5}]}
    checkpointer = Checkpointer(tmp_path, max_to_keep=2)
    for step in (8, 16, 24):
        checkpointer.save(step, state, {**meta, "step": step})
    assert checkpointer.steps() == [16, 24]
    restored = checkpointer.restore(24, lambda m: like)
    _assert_trees_equal(state, restored.state)
    assert jax.tree.structure(restored.state) == jax.tree.structure(state)
    assert restored.meta == {**meta, "step": 24, "sha256": tree_sha256(state)}
    # Saving again at an existing step replaces it.
    _, other = _random_state(seed=1)
    checkpointer.save(24, other, {**meta, "step": 24})
    _assert_trees_equal(other, checkpointer.restore(24, lambda m: like).state)
    checkpointer.close()


def _largest_file(folder):
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


@pytest.mark.parametrize(
    "damage",
    [
        "truncate_array_file",
        "delete_array_file",
        "flip_array_byte",
        "truncate_meta",
        "delete_step_metadata",
    ],
)
def test_restore_falls_back_past_a_damaged_latest(tmp_path, damage, capsys):
    like, state = _random_state()
    _, newer = _random_state(seed=1)
    checkpointer = Checkpointer(tmp_path, max_to_keep=3)
    checkpointer.save(1, state, {"image_shape": [28, 28, 1]})
    checkpointer.save(2, newer, {"image_shape": [28, 28, 1]})
    step_dir = tmp_path / "2"
    if damage == "truncate_array_file":
        victim = _largest_file(step_dir / "state")
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    elif damage == "delete_array_file":
        _largest_file(step_dir / "state").unlink()
    elif damage == "flip_array_byte":  # silent corruption: only the sha256 can tell
        victim = _largest_file(step_dir / "state")
        raw = bytearray(victim.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        victim.write_bytes(bytes(raw))
    elif damage == "truncate_meta":
        (step_dir / "meta" / "metadata").write_text('{"image_sha')
    elif damage == "delete_step_metadata":
        shutil.rmtree(step_dir / "state")
    checkpointer.close()

    restored = Checkpointer(tmp_path, max_to_keep=3).restore_latest_valid(lambda m: like)
    assert restored is not None and restored.step == 1
    _assert_trees_equal(restored.state, state)
    assert f"checkpoint {step_dir} is damaged" in capsys.readouterr().err


def test_no_valid_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    like, state = _random_state()
    checkpointer = Checkpointer(tmp_path, max_to_keep=3)
    checkpointer.save(5, state, {"image_shape": [28, 28, 1]})
    shutil.rmtree(tmp_path / "5" / "state")
    with pytest.raises(
        CheckpointError, match=r"none of the checkpoints .* \(steps 5\) can be read"
    ):
        checkpointer.restore_latest_valid(lambda m: like)
    assert Checkpointer(tmp_path / "empty", 3).restore_latest_valid(lambda m: like) is None


def test_interrupted_save_leaves_nothing_that_looks_valid(tmp_path):
    """A save killed before Orbax renamed its temporary folder is not a checkpoint."""
    like, state = _random_state()
    checkpointer = Checkpointer(tmp_path, max_to_keep=3)
    checkpointer.save(1, state, {"image_shape": [28, 28, 1]})
    checkpointer.save(2, state, {"image_shape": [28, 28, 1]})
    checkpointer.close()
    (tmp_path / "2").rename(tmp_path / "3.orbax-checkpoint-tmp-1234")  # as a save in flight
    reader = Checkpointer(tmp_path, max_to_keep=3, read_only=True)
    assert reader.steps() == [1]
    reader.close()
    assert (tmp_path / "3.orbax-checkpoint-tmp-1234").exists()  # a reader leaves it alone
    checkpointer = Checkpointer(tmp_path, max_to_keep=3)
    assert checkpointer.steps() == [1]
    assert checkpointer.restore_latest_valid(lambda m: like).step == 1
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("_")) == ["1"]


def test_run_resumes_from_the_newest_valid_checkpoint(tmp_path):
    """Damage the newest checkpoint of a 3-epoch run; extending it to 4 epochs falls back to
    epoch 2 and still ends bit for bit where an uninterrupted 4-epoch run ends."""
    data = synthetic_dataset()
    train_and_evaluate(small_config({"train.num_epochs": 4}), tmp_path / "full", data)
    train_and_evaluate(small_config({"train.num_epochs": 3}), tmp_path / "run", data)
    _largest_file(tmp_path / "run" / "checkpoints" / "24" / "state").unlink()
    history = train_and_evaluate(small_config({"train.num_epochs": 4}), tmp_path / "run", data)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    _assert_trees_equal(restore_run(tmp_path / "full")[1], restore_run(tmp_path / "run")[1])


def test_a_reader_retries_a_checkpoint_rotated_away_while_it_reads(tmp_path, monkeypatch, capsys):
    """Evaluation beside training with max_to_keep=1: the checkpoint being read is deleted when
    the next one is saved. The reader starts over from the newest, quietly, instead of calling
    a healthy run unreadable."""
    like, state = _random_state()
    _, newer = _random_state(seed=1)
    writer = Checkpointer(tmp_path, max_to_keep=1)
    writer.save(1, state, {"image_shape": [28, 28, 1]})
    restore = Checkpointer.restore
    rotated = []

    def racing_restore(self, step, like_for):
        if not rotated:  # the run saves step 2 and deletes step 1 as we start reading it
            writer.save(2, newer, {"image_shape": [28, 28, 1]})
            rotated.append(step)
        return restore(self, step, like_for)

    reader = Checkpointer(tmp_path, max_to_keep=1, read_only=True)
    monkeypatch.setattr(Checkpointer, "restore", racing_restore)
    restored = reader.restore_latest_valid(lambda m: like)
    assert rotated == [1] and restored.step == 2
    _assert_trees_equal(restored.state, newer)
    assert "damaged" not in capsys.readouterr().err
    reader.close()
    writer.close()
