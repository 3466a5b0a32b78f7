"""Experiment configs: the schema, discovery of experiment files, overrides and validation.

An experiment is a file ``experiments/<name>.py`` whose ``get_config()`` returns the
``ConfigDict`` of :func:`base_config` with a few fields changed. Every experiment has exactly
the keys of :func:`base_config`, so one validator serves all of them, and a command-line
override ``--config.model.latent_dim=10`` can only set a key that exists, to a value of its type.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from vae_jax.errors import ConfigError

EXPERIMENTS_ENV = "VAE_JAX_EXPERIMENTS_DIR"


def base_config() -> ml_collections.ConfigDict:
    """Every key an experiment has, with the seed experiment's values (see mnist_z20.py)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = ml_collections.ConfigDict(
        {
            # conv: the seed's conv VAE (28x28x1 only); mlp: dense layers of mlp_hidden_dims.
            "arch": "conv",
            "latent_dim": 20,
            "mlp_hidden_dims": (500,),
            "mlp_activation": "relu",
            # p(x|z): bernoulli (sigmoid cross-entropy, the seed) or gaussian with a fixed
            # observation stddev obs_stddev around the decoder mean sigmoid(logits).
            "likelihood": "bernoulli",
            "obs_stddev": 0.1,
            # z = mean + noise_scale * stddev * eps. 1.0 is the standard VAE.
            "noise_scale": 1.0,
            # How the conv arch computes its strided convs (same math, see conv_ops.py):
            # auto = space_to_depth on CPU (several times faster there), native elsewhere.
            "conv_impl": "auto",
        }
    )
    c.data = ml_collections.ConfigDict(
        {
            "name": "mnist",
            # '' means: $TFDS_DATA_DIR, else TFDS's default (~/tensorflow_datasets).
            "tfds_data_dir": "",
            # none: grayscale in [0, 1]; dynamic: fresh Bernoulli sample each time an image
            # is used (test set once, fixed key); static: one fixed binarization of both.
            "binarize": "none",
            "binarize_seed": 0,
            # 0 = the whole split; N = its first N images (for quick runs and tests).
            "train_size": 0,
            "test_size": 0,
        }
    )
    c.train = ml_collections.ConfigDict(
        {"batch_size": 100, "num_epochs": 10, "learning_rate": 1e-3, "log_every_steps": 50}
    )
    c.eval = ml_collections.ConfigDict(
        {
            # The test -ELBO: images per chunk, posterior samples per image.
            "batch_size": 1000,
            "num_samples": 1,
            # The IWAE bound: samples per image, on the first iwae_test_size test images
            # (0 = all), decoding at most iwae_pairs_per_call (image, sample) pairs at once.
            "iwae_k": 5000,
            "iwae_test_size": 0,
            "iwae_pairs_per_call": 1024,
            # Run the full evaluation (eval.json, eval figures) when training finishes.
            "after_training": True,
        }
    )
    # The reconstructions figure compares epoch 1 with this epoch (or the last, if fewer).
    c.figures = ml_collections.ConfigDict({"late_epoch": 9})
    # A checkpoint after every epoch, and also every N steps / N seconds when > 0.
    c.checkpoint = ml_collections.ConfigDict(
        {"max_to_keep": 3, "every_steps": 0, "every_seconds": 0.0}
    )
    return c


CHOICES: dict[str, tuple[str, ...]] = {
    "model.arch": ("conv", "mlp"),
    "model.mlp_activation": ("relu", "tanh"),
    "model.likelihood": ("bernoulli", "gaussian"),
    "model.conv_impl": ("auto", "native", "space_to_depth"),
    "data.binarize": ("none", "dynamic", "static"),
}
POSITIVE_INTS = (
    "model.latent_dim",
    "train.batch_size",
    "train.num_epochs",
    "train.log_every_steps",
    "eval.batch_size",
    "eval.num_samples",
    "eval.iwae_k",
    "eval.iwae_pairs_per_call",
    "figures.late_epoch",
    "checkpoint.max_to_keep",
)
NON_NEGATIVE_INTS = (
    "seed",
    "data.binarize_seed",
    "data.train_size",
    "data.test_size",
    "eval.iwae_test_size",
    "checkpoint.every_steps",
)
MAX_INT = 2**31 - 1  # every integer setting fits in int32 (seeds become JAX keys)
POSITIVE_FLOATS = ("model.noise_scale", "model.obs_stddev", "train.learning_rate")
NON_NEGATIVE_FLOATS = ("checkpoint.every_seconds",)
# Keys that may differ when an existing workdir is resumed (besides every eval.* key, which
# never changes what is trained).
RESUMABLE_PREFIXES = ("eval.",)
RESUMABLE_KEYS = frozenset(
    {
        "train.num_epochs",
        "train.log_every_steps",
        "model.conv_impl",
        "figures.late_epoch",
        "data.tfds_data_dir",
        "checkpoint.max_to_keep",
        "checkpoint.every_steps",
        "checkpoint.every_seconds",
    }
)


# ---------------------------------------------------------------------------------------------
# Experiments


def experiments_dir() -> Path:
    """``$VAE_JAX_EXPERIMENTS_DIR``, else the ``experiments/`` folder of this checkout."""
    if os.environ.get(EXPERIMENTS_ENV):
        return Path(os.environ[EXPERIMENTS_ENV])
    return Path(__file__).resolve().parent.parent / "experiments"


def python_files(directory: Path) -> list[str]:
    """The names of the ``.py`` files in ``directory`` (not those starting with ``_``)."""
    if not directory.is_dir():
        return []
    return sorted(p.stem for p in directory.glob("*.py") if not p.name.startswith("_"))


def find_python_file(name: str, directory: Path, kind: str) -> Path:
    """``directory/<name>.py``, or ``name`` itself if it is a path to a .py file; else a
    :class:`ConfigError` naming the ``kind``s (experiment, sweep) there."""
    if name.endswith(".py") and Path(name).is_file():
        return Path(name)
    path = directory / f"{name}.py"
    if name and "/" not in name and path.is_file():
        return path
    names = python_files(directory)
    hint = difflib.get_close_matches(name, names, n=1)
    msg = f"unknown {kind} {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
    raise ConfigError(f"{msg}; {kind}s in {directory}: {', '.join(names) or '(none)'}")


def call_in_file(path: Path, function: str, kind: str) -> Any:
    """Import the Python file ``path`` and return ``function()`` of it."""
    spec = importlib.util.spec_from_file_location(f"vae_jax_{kind}_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, function):
        raise ConfigError(f"{kind} file {path} has no {function}() function")
    return getattr(module, function)()


def available_experiments(directory: Path | None = None) -> list[str]:
    return python_files(directory or experiments_dir())


def experiment_path(name: str, directory: Path | None = None) -> Path:
    """The file of experiment ``name`` (a name in ``experiments/`` or a path to a .py file)."""
    return find_python_file(name, directory or experiments_dir(), "experiment")


def load_experiment(name: str) -> ml_collections.ConfigDict:
    """Import ``experiments/<name>.py`` and return its ``get_config()``, validated."""
    path = experiment_path(name)
    config = call_in_file(path, "get_config", "experiment")
    validate(config, source=str(path))
    return config


# ---------------------------------------------------------------------------------------------
# Flat views


def flatten(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    """``{'model.latent_dim': 20, ...}``: every leaf under its dotted key."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def to_json_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as plain JSON types (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, ml_collections.ConfigDict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        return v

    return plain(config)


def may_change_on_resume(key: str) -> bool:
    return key in RESUMABLE_KEYS or key.startswith(RESUMABLE_PREFIXES)


def _flat_json(d: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat_json(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _set(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
    """Set the existing dotted ``key`` of ``config`` (or raise, naming the valid keys)."""
    if key not in flatten(config):
        raise _unknown_key(key, config)
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
        node = node[p]
    node[leaf] = value


def from_json_dict(saved: dict[str, Any]) -> ml_collections.ConfigDict:
    """Inverse of :func:`to_json_dict` (lists back to tuples), validated."""
    config = base_config()
    for key, value in _flat_json(saved):
        _set(config, key, tuple(value) if isinstance(value, list) else value)
    validate(config, source="saved config")
    return config


def diff(saved: dict[str, Any], current: ml_collections.ConfigDict) -> dict[str, tuple]:
    """Keys whose values differ between a saved JSON config and ``current``."""
    old = dict(_flat_json(saved))
    new = dict(_flat_json(to_json_dict(current)))
    return {
        k: (old.get(k, "<missing>"), new.get(k, "<missing>"))
        for k in sorted(set(old) | set(new))
        if old.get(k, "<missing>") != new.get(k, "<missing>")
    }


def check_resumable(
    saved: dict[str, Any], config: ml_collections.ConfigDict, workdir: Path
) -> None:
    """Refuse to resume the run saved in ``workdir`` (its ``config.json``) with ``config`` if
    they differ in a key that may not change on resume."""
    changed = {k: v for k, v in diff(saved, config).items() if not may_change_on_resume(k)}
    if changed:
        lines = "\n".join(
            f"  {k}: {old!r} in the workdir, {new!r} now" for k, (old, new) in changed.items()
        )
        raise ConfigError(
            f"workdir {workdir} holds a run with a different config:\n{lines}\n"
            "Choose another --workdir, start anew there with --force (the old run is moved "
            "aside, not deleted), or change only keys that may change on resume: "
            + ", ".join(sorted(RESUMABLE_KEYS))
            + ", eval.*"
        )


# ---------------------------------------------------------------------------------------------
# Overrides


def split_override_args(args: Sequence[str]) -> list[tuple[str, str]]:
    """``['--config.a.b=1', '--config.c', '2']`` -> ``[('a.b', '1'), ('c', '2')]``."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--config."):
            raise ConfigError(
                f"unrecognized argument {arg!r}; config overrides look like "
                "--config.model.latent_dim=10"
            )
        key, eq, value = arg[len("--config.") :].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise ConfigError(f"override --config.{key} has no value")
            value = args[i + 1]
            i += 1
        out.append((key, value))
        i += 1
    return out


def _parse_value(key: str, raw: str, current: Any) -> Any:
    def fail(kind: str) -> ConfigError:
        return ConfigError(f"--config.{key}={raw!r}: expected {kind}")

    if isinstance(current, bool):
        low = raw.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise fail("true or false")
    if isinstance(current, int):
        try:
            return int(raw)
        except ValueError:
            raise fail("an integer") from None
    if isinstance(current, float):
        try:
            return float(raw)
        except ValueError:
            raise fail("a number") from None
    if isinstance(current, tuple):
        text = raw.strip()
        try:
            value = ast.literal_eval(text if text.startswith(("(", "[")) else f"({text},)")
        except (ValueError, SyntaxError):
            raise fail("a comma-separated list of integers, e.g. 500,500") from None
        value = tuple(value) if isinstance(value, list | tuple) else (value,)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise fail("a comma-separated list of integers, e.g. 500,500")
        return value
    return raw


def _unknown_key(key: str, config: ml_collections.ConfigDict) -> ConfigError:
    keys = sorted(flatten(config))
    hint = difflib.get_close_matches(key, keys, n=1)
    msg = f"unknown config key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
    return ConfigError(f"{msg}; valid keys: {', '.join(keys)}")


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Sequence[tuple[str, str]]
) -> ml_collections.ConfigDict:
    """A copy of ``config`` with ``(dotted_key, raw_string)`` overrides applied and validated."""
    config = ml_collections.ConfigDict(config.to_dict())
    flat = flatten(config)
    for key, raw in overrides:
        if key not in flat:
            raise _unknown_key(key, config)
        _set(config, key, _parse_value(key, raw, flat[key]))
    validate(config, source="command line")
    return config


def with_values(
    config: ml_collections.ConfigDict, values: dict[str, Any], source: str
) -> ml_collections.ConfigDict:
    """A copy of ``config`` with typed ``{dotted_key: value}`` set and validated (a sweep's
    grid points); an unknown key or a bad value raises :class:`ConfigError` naming ``source``."""
    config = ml_collections.ConfigDict(config.to_dict())
    flat = flatten(config)
    for key, value in values.items():
        if key not in flat:
            raise ConfigError(f"{source}: {_unknown_key(key, config)}")
        if isinstance(flat[key], float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        try:
            _set(config, key, value)
        except TypeError:
            raise ConfigError(
                f"{source}: {key}={value!r} is invalid; expected {type(flat[key]).__name__}"
            ) from None
    validate(config, source=source)
    return config


# ---------------------------------------------------------------------------------------------
# Validation


def validate(config: ml_collections.ConfigDict, source: str = "config") -> None:
    """Raise :class:`ConfigError` naming the key and the valid values, for the first problem."""
    flat = flatten(config)
    schema = flatten(base_config())
    for key in flat:
        if key not in schema:
            raise ConfigError(f"{source}: {_unknown_key(key, base_config())}")
    missing = sorted(set(schema) - set(flat))
    if missing:
        raise ConfigError(f"{source}: missing config keys: {', '.join(missing)}")

    def bad(key: str, expected: str) -> ConfigError:
        return ConfigError(f"{source}: {key}={flat[key]!r} is invalid; expected {expected}")

    for key, default in schema.items():
        value = flat[key]
        if isinstance(default, bool) != isinstance(value, bool):
            raise bad(key, type(default).__name__)
        if isinstance(default, str) and not isinstance(value, str):
            raise bad(key, "a string")
    for key, choices in CHOICES.items():
        if flat[key] not in choices:
            raise bad(key, "one of " + ", ".join(choices))
    for key in POSITIVE_INTS + NON_NEGATIVE_INTS:
        value, low = flat[key], (1 if key in POSITIVE_INTS else 0)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_INT:
            raise bad(key, f"an integer from {low} to {MAX_INT}")
    for key in POSITIVE_FLOATS + NON_NEGATIVE_FLOATS:
        value, positive = flat[key], key in POSITIVE_FLOATS
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
            or (positive and value == 0)
        ):
            raise bad(key, "a finite number > 0" if positive else "a finite number >= 0")
    dims = flat["model.mlp_hidden_dims"]
    if not (
        isinstance(dims, tuple | list)
        and dims
        and all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= MAX_INT for d in dims)
    ):
        raise bad("model.mlp_hidden_dims", "a non-empty list of positive integers, e.g. 500,500")
    train_size, batch = flat["data.train_size"], flat["train.batch_size"]
    if 0 < train_size < batch:
        raise ConfigError(
            f"{source}: data.train_size={train_size} is smaller than "
            f"train.batch_size={batch}; an epoch would have no steps"
        )
