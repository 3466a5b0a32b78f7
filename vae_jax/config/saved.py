"""A run's saved config (``config.json``): what it holds, reading it back (keys added to vae_jax
since count as their defaults; keys it lost are damage), and the check before resuming it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import ml_collections

from vae_jax.config.keys import base_config, flatten, settings, to_json_dict, with_values
from vae_jax.errors import ConfigError

KEYS_MARK = "vae_jax_keys"  # in config.json: a digest of the names of the keys it holds
# The keys of every config.json written before the digest existed (vae_jax 0.1).
FIRST_KEYS = frozenset(
    f"{group}.{key}"
    for group, keys in {
        "checkpoint": "every_seconds every_steps max_to_keep",
        "data": "binarize binarize_seed name test_size tfds_data_dir train_size",
        "eval": "after_training batch_size iwae_k iwae_pairs_per_call iwae_test_size num_samples",
        "figures": "late_epoch",
        "model": "arch conv_impl latent_dim likelihood mlp_activation mlp_hidden_dims "
        "noise_scale obs_stddev",
        "train": "batch_size learning_rate log_every_steps num_epochs",
    }.items()
    for key in keys.split()
) | {"seed"}


def _digest(keys) -> str:
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:16]


def to_saved(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What a run's ``config.json`` holds: the config, and a digest of its key names, so that
    keys added to vae_jax later can be told from keys lost from the file."""
    return {**to_json_dict(config), KEYS_MARK: _digest(flatten(config))}


def from_saved(saved: Any, source: str) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
    """The validated config of a run's ``config.json``, and the keys added to vae_jax after
    it was written, with the defaults they count as. A file that lost a key it was written with
    (its digest no longer matches, or a key of vae_jax 0.1 is missing from a file of then) is
    damaged: a :class:`ConfigError`, never a silent default."""
    if not isinstance(saved, dict):
        raise ConfigError(f"{source} holds a {type(saved).__name__}, not a config")
    saved = dict(saved)
    mark = saved.pop(KEYS_MARK, None)
    flat, keys = flatten(saved), settings()
    unknown = sorted(set(flat) - set(keys))
    if unknown:
        raise ConfigError(
            f"{source} holds {', '.join(unknown)}, which vae_jax does not know (a key of a model "
            "file that is gone from experiments/models/, or an edit): remove it, or restore the "
            "model file that declares it"
        )
    if mark is None:
        lost = sorted(FIRST_KEYS - set(flat))
    elif isinstance(mark, str) and mark != _digest(flat):
        lost = sorted(set(keys) - set(flat)) or ["a key"]
    else:
        lost = []
    if lost:
        raise ConfigError(
            f"{source} lacks {', '.join(lost)}, which it was written with: the file is "
            "damaged. Restore it (from config.json of another run of this experiment, or the "
            "experiment file), or start anew with --force"
        )
    added = {k: s.default for k, s in keys.items() if k not in flat}
    return with_values(base_config(), {**flat, **added}, source), added


def say_added(added: dict[str, Any], source: str) -> None:
    """Say (once, where the run is resumed or loaded) which keys count as their defaults."""
    if added:
        listed = ", ".join(f"{k}={v!r}" for k, v in added.items())
        print(f"note: {source} predates {listed}: counted as the default(s), which keep what "
              "such runs did")  # fmt: skip


def diff(saved: dict[str, Any], current: ml_collections.ConfigDict) -> dict[str, tuple]:
    """Keys whose values differ between a saved JSON config and ``current``."""
    old, new = flatten(saved), flatten(to_json_dict(current))
    return {
        k: (old.get(k, "<missing>"), new.get(k, "<missing>"))
        for k in sorted(set(old) | set(new))
        if old.get(k, "<missing>") != new.get(k, "<missing>")
    }


def check_resumable(saved: Any, config: ml_collections.ConfigDict, source: Path) -> None:
    """Refuse to resume the run whose saved config (``saved``, read from ``source``) differs
    from ``config`` in a key that may not change on resume. Keys added to vae_jax after the run
    was saved count as their defaults (said once)."""
    old, added = from_saved(saved, str(source))
    keys = settings()
    fixed = {"train.num_epochs"} if config.train.schedule != "constant" else set()
    changed = trained_differently(old, config)
    if changed:
        lines = "\n".join(
            f"  {k}: {old!r} in the workdir, {new!r} now" for k, (old, new) in changed.items()
        )
        if fixed & set(changed):
            lines += (
                f"\n  (train.num_epochs sets the length of the {config.train.schedule} "
                "learning-rate schedule, so it may not change on resume)"
            )
        resumable = [k for k, s in keys.items() if s.resumable and not k.startswith("eval.")]
        raise ConfigError(
            f"workdir {source.parent} holds a run with a different config:\n{lines}\n"
            "Choose another --workdir, start anew there with --force (the old run is moved "
            "aside, not deleted), or change only keys that may change on resume: "
            + ", ".join(sorted(resumable))
            + ", eval.*"
        )
    say_added(added, str(source))


def trained_differently(
    trained: ml_collections.ConfigDict, config: ml_collections.ConfigDict
) -> dict[str, tuple]:
    """``{key: (trained, now)}``: the keys that may not change on resume in which ``config``
    differs from the config a run was ``trained`` with (``train.num_epochs`` among them when a
    decaying schedule's length hangs on it)."""
    keys = settings()
    fixed = {"train.num_epochs"} if config.train.schedule != "constant" else set()
    return {
        k: v
        for k, v in diff(to_json_dict(trained), config).items()
        if not (k in keys and keys[k].resumable) or k in fixed
    }
