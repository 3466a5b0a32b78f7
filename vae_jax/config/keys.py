"""Every config key with its default, its constraint and its meaning (the general ones in
:data:`GENERAL`, a component's next to its code, all of them in :func:`settings`); building
and validating configs.

Every config has exactly the keys of :func:`settings`, so one validator serves all of them: an
unknown key is named with a suggestion and the valid keys, a bad value with what is expected.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import ml_collections

from vae_jax.config.user_files import import_user_models
from vae_jax.core import models, objectives, train_step
from vae_jax.core.settings import (
    BOOL,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    TEXT,
    Setting,
    flatten,
    is_int,
    one_of,
)
from vae_jax.errors import ConfigError

# fmt: off
GENERAL: dict[str, Setting] = {
    "seed": Setting(0, NON_NEGATIVE_INT, "the root of every random stream (init, order, noise)"),
    "model.latent_dim": Setting(20, POSITIVE_INT, "latent dimensions"),
    "model.noise_scale": Setting(1.0, POSITIVE, "z = mean + noise_scale * stddev * eps (1: a VAE)"),
    # The data: a TFDS image dataset with train and test splits, or arrays of your own.
    "data.name": Setting("mnist", TEXT, "a TFDS image dataset, or a path to a .npz of arrays"),
    "data.tfds_data_dir": Setting(
        "", TEXT, "'' means $TFDS_DATA_DIR, else ~/tensorflow_datasets", resumable=True),
    "data.binarize": Setting(
        "none", one_of("none", "dynamic", "static"),
        "none: grayscale in [0, 1]; dynamic: a fresh Bernoulli sample per use (test set once, "
        "fixed key); static: one fixed binarization of both splits"),
    "data.binarize_seed": Setting(0, NON_NEGATIVE_INT, "the key of the fixed binarizations"),
    "data.train_size": Setting(0, NON_NEGATIVE_INT, "0: the whole split; N: its first N images"),
    "data.test_size": Setting(0, NON_NEGATIVE_INT, "0: the whole split; N: its first N images"),
    # Training: Adam on the batch mean of the loss (nats per image); its learning rate and
    # schedule are in vae_jax.core.train_step.SETTINGS.
    "train.batch_size": Setting(100, POSITIVE_INT, "images per step, over all devices"),
    "train.num_epochs": Setting(10, POSITIVE_INT, "epochs; raise it to train a run longer "
                                "(constant schedule)", resumable=True),
    "train.log_every_steps": Setting(50, POSITIVE_INT, "progress-bar updates", resumable=True),
    "train.steps_per_call": Setting(
        1, POSITIVE_INT, "training steps compiled into one call, unrolled (4: XLA:CPU allocates "
        "a step's buffers once per call, 10-13% faster for conv models; bit for bit the same)",
        resumable=True),
    # Evaluation never changes what is trained: every eval key may change on resume.
    "eval.batch_size": Setting(1000, POSITIVE_INT, "test images per chunk", resumable=True),
    "eval.num_samples": Setting(1, POSITIVE_INT, "posterior samples per test image for the -ELBO",
                                resumable=True),
    # A cheap bound after training; paper-grade (k=5000 on all 10k images) is one make eval:
    # make eval EXP=... ARGS="--config.eval.iwae_k=5000 --config.eval.iwae_test_size=0"
    "eval.iwae_k": Setting(100, POSITIVE_INT, "samples per image of the IWAE bound",
                           resumable=True),
    "eval.iwae_test_size": Setting(1000, NON_NEGATIVE_INT, "the IWAE bound on the first N test "
                                   "images (0: all)", resumable=True),
    "eval.iwae_pairs_per_call": Setting(1024, POSITIVE_INT, "at most this many (image, sample) "
                                        "decodes per jitted call: bounds memory", resumable=True),
    "eval.after_training": Setting(True, BOOL, "run the full evaluation (make eval) when "
                                   "training finishes", resumable=True),
    "figures.late_epoch": Setting(9, POSITIVE_INT, "reconstructions.png shows epoch 1 and this "
                                  "one (or the last, if fewer)", resumable=True),
    "checkpoint.max_to_keep": Setting(3, POSITIVE_INT, "checkpoints kept", resumable=True),
    "checkpoint.every_steps": Setting(0, NON_NEGATIVE_INT, "also checkpoint every N steps "
                                      "(0: only after each epoch)", resumable=True),
    "checkpoint.every_seconds": Setting(0.0, NON_NEGATIVE, "also checkpoint every N seconds "
                                        "(0: only after each epoch)", resumable=True),
}
# fmt: on


def settings() -> dict[str, Setting]:
    """Every config key: :data:`GENERAL`, the objective's, the optimizer's and each
    architecture's (those of this package and those in ``experiments/models/``)."""
    import_user_models()
    keys = {**GENERAL, **objectives.SETTINGS, **train_step.SETTINGS}
    keys["model.arch"] = Setting(
        "conv", one_of(*sorted(models.ARCHITECTURES)), "the encoder and decoder (conv: the seed's)"
    )
    keys["model.prior"] = Setting(
        "standard", one_of(*sorted(models.PRIORS)), "p(z) of a one-latent arch (standard: N(0, I))"
    )
    keys["model.posterior"] = Setting(
        "gaussian",
        one_of(*sorted(models.POSTERIORS)),
        "q(z|x) of a one-latent arch: the encoder's Gaussian (gaussian), or a flow after it",
    )
    for table in (models.ARCHITECTURES, models.PRIORS, models.POSTERIORS):
        for component in table.values():
            keys.update({f"model.{k}": s for k, s in component.settings.items()})
    return dict(sorted(keys.items()))


def base_config() -> ml_collections.ConfigDict:
    """Every key with its default: the seed experiment (see experiments/mnist_z20.py)."""
    return unflatten({key: s.default for key, s in settings().items()})


def unflatten(flat: dict[str, Any]) -> ml_collections.ConfigDict:
    """Inverse of :func:`flatten`."""
    config = ml_collections.ConfigDict()
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            if p not in node:
                node[p] = ml_collections.ConfigDict()
            node = node[p]
        node[leaf] = value
    return config


def to_json_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as plain JSON types (tuples become lists)."""
    return _plain(config)


def _plain(v: Any) -> Any:
    if isinstance(v, ml_collections.ConfigDict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    return v


def with_values(
    config: ml_collections.ConfigDict, values: dict[str, Any], source: str
) -> ml_collections.ConfigDict:
    """A validated copy of ``config`` with typed ``{dotted_key: value}`` set (a sweep's grid
    points and overrides, tests); an unknown key or a bad value is a :class:`ConfigError`."""
    flat = flatten(config)
    for key, value in values.items():
        if key not in flat:
            raise ConfigError(f"{source}: {unknown_key(key, flat)}")
        if isinstance(flat[key], float) and is_int(value):
            value = float(value)
        elif isinstance(flat[key], tuple) and isinstance(value, list):
            value = tuple(value)
        flat[key] = value
    result = unflatten(flat)
    validate(result, source)
    return result


def unknown_key(key: str, known: Sequence[str]) -> ConfigError:
    keys = sorted(known)
    hint = difflib.get_close_matches(key, keys, n=1)
    msg = f"unknown config key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
    return ConfigError(f"{msg}; valid keys: {', '.join(keys)}")


def validate(config: ml_collections.ConfigDict, source: str = "config") -> None:
    """Raise :class:`ConfigError` naming the key and the valid values, for the first problem."""
    flat, keys = flatten(config), settings()
    for key in flat:
        if key not in keys:
            raise ConfigError(f"{source}: {unknown_key(key, keys)}")
    missing = sorted(set(keys) - set(flat))
    if missing:
        raise ConfigError(f"{source}: missing config keys: {', '.join(missing)}")
    for key, setting in keys.items():
        if not setting.check.accepts(flat[key]):
            raise ConfigError(
                f"{source}: {key}={flat[key]!r} is invalid; expected {setting.check.expected}"
            )
    train_size, batch = flat["data.train_size"], flat["train.batch_size"]
    if 0 < train_size < batch:
        raise ConfigError(
            f"{source}: data.train_size={train_size} is smaller than "
            f"train.batch_size={batch}; an epoch would have no steps"
        )
