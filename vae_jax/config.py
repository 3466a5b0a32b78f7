"""Experiment configs: every key with its default, its constraint and its meaning (the general
ones in :data:`GENERAL`, a component's next to its code, all of them in :func:`settings`);
loading experiment files and ``--config.KEY=VALUE`` overrides with ``ml_collections.config_flags``;
validation; the diff against a saved run's config.

An experiment is a file ``experiments/<name>.py`` whose ``get_config()`` returns
:func:`base_config` with a few fields changed, as in the flax examples. Every config has exactly
the keys of :func:`settings`, so one validator serves all of them: an unknown key is named with
a suggestion and the valid keys, a bad value with what is expected.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import os
import re
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

from vae_jax.core import models, objectives, train_step
from vae_jax.core.settings import (
    BOOL,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    TEXT,
    Setting,
    is_int,
    one_of,
)
from vae_jax.errors import ConfigError

EXPERIMENTS_ENV = "VAE_JAX_EXPERIMENTS_DIR"

# fmt: off
GENERAL: dict[str, Setting] = {
    "seed": Setting(0, NON_NEGATIVE_INT, "the root of every random stream (init, order, noise)"),
    "model.latent_dim": Setting(20, POSITIVE_INT, "latent dimensions"),
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
USER_MODELS = "models"  # experiments/models/*.py: architectures of the user's own


def settings() -> dict[str, Setting]:
    """Every config key: :data:`GENERAL`, the objective's and each architecture's (those of
    this package and those in ``experiments/models/``)."""
    _import_user_models()
    keys = {**GENERAL, **objectives.SETTINGS, **train_step.SETTINGS}
    keys["model.arch"] = Setting(
        "conv", one_of(*models.ARCHITECTURES), "the encoder and decoder (conv: the seed's)"
    )
    for arch in models.ARCHITECTURES.values():
        keys.update({f"model.{k}": s for k, s in arch.settings.items()})
    return dict(sorted(keys.items()))


_imported: set[Path] = set()


def _import_user_models() -> None:
    """Import every ``experiments/models/*.py`` once: each registers its architectures."""
    folder = experiments_dir() / USER_MODELS
    for name in python_files(folder):
        path = (folder / f"{name}.py").resolve()
        if path in _imported:
            continue
        _imported.add(path)
        run_user_file(path, f"vae_jax_user_models.{name}", "the model file")


def run_user_file(path: Path, module_name: str, what: str) -> Any:
    """Import the user's Python file ``path`` as ``module_name``; an error in it (a typo, a
    failing import) is a :class:`ConfigError` in one line that names the file."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"cannot import {what} {path}: {one_line(e)}") from None
    return module


def base_config() -> ml_collections.ConfigDict:
    """Every key with its default: the seed experiment (see experiments/mnist_z20.py)."""
    return unflatten({key: s.default for key, s in settings().items()})


# ---------------------------------------------------------------------------------------------
# Flat views


def flatten(config: ml_collections.ConfigDict | dict, prefix: str = "") -> dict[str, Any]:
    """``{'model.latent_dim': 20, ...}``: every leaf under its dotted key."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict | dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


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


def values(config: ml_collections.ConfigDict, keys: dict[str, Setting]) -> dict[str, Any]:
    """A component's settings as keyword arguments: ``{'beta': 1.0, ...}`` for the keys
    (``objective.beta``, ...) it declares."""
    flat = flatten(config)
    return {key.rsplit(".", 1)[-1]: flat[key] for key in keys}


def to_json_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as plain JSON types (tuples become lists)."""
    return _plain(config)


def _plain(v: Any) -> Any:
    if isinstance(v, ml_collections.ConfigDict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    return v


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


# ---------------------------------------------------------------------------------------------
# Experiment files and overrides


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


def find_file(name: str, directory: Path, kind: str) -> Path:
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


def available_experiments(directory: Path | None = None) -> list[str]:
    return python_files(directory or experiments_dir())


def experiment_path(name: str, directory: Path | None = None) -> Path:
    """The file of experiment ``name`` (a name in ``experiments/`` or a path to a .py file)."""
    return find_file(name, directory or experiments_dir(), "experiment")


def load_experiment(name: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The ``get_config()`` of experiment ``name`` (loaded by ``config_flags``, as
    ``--config=experiments/<name>.py``), validated, with ``overrides`` applied
    (``['--config.model.latent_dim=10', ...]``)."""
    path = experiment_path(name)
    config = _parse([f"--config={path}"], str(path), file=True)
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(
            f"{path}: get_config() returned a {type(config).__name__}, not a ConfigDict"
        )
    validate(config, source=str(path))
    return override(config, overrides)


def override_keys(args: Sequence[str]) -> list[str]:
    """The keys that ``--config.KEY=VALUE`` (or ``--config.KEY VALUE``) arguments set; any
    other argument that starts with ``-`` is a :class:`ConfigError`."""
    keys = []
    for i, arg in enumerate(args):
        match = re.match(r"^--?(?:no)?config\.([^=]*)", arg)
        if match:
            keys.append(match[1])
        elif arg.startswith("-") or i == 0 or "=" in args[i - 1] or not args[i - 1].startswith("-"):
            raise ConfigError(
                f"unrecognized argument {arg!r}; config overrides look like "
                "--config.model.latent_dim=10"
            )
    return keys


def override(
    config: ml_collections.ConfigDict, args: Sequence[str], source: str = "command line"
) -> ml_collections.ConfigDict:
    """A validated copy of ``config`` with ``--config.KEY=VALUE`` ``args`` applied by
    ``ml_collections.config_flags`` (values typed by the key's current value)."""
    if not args:
        return config
    flat = flatten(config)
    for key in override_keys(args):
        if key not in flat:
            raise _unknown_key(key, flat)
    result = _parse(args, source, config=ml_collections.ConfigDict(config.to_dict()))
    validate(result, source)
    return result


def _parse(
    args: Sequence[str],
    source: str,
    file: bool = False,
    config: ml_collections.ConfigDict | None = None,
) -> Any:
    """Parse ``args`` with ``config_flags``' ``--config`` flag in a fresh absl flag set: a config
    file (``file``: ``args`` start with ``--config=FILE``) or ``config`` itself."""
    values = flags.FlagValues()
    argv = ["vae-jax", *args]
    if file:
        config_flags.DEFINE_config_file(
            "config", flag_values=values, sys_argv=argv, lock_config=False
        )
    else:
        config_flags.DEFINE_config_dict(
            "config", config, flag_values=values, sys_argv=argv, lock_config=False
        )
    try:
        rest = values(argv)
        config = values["config"].value
        config.get("seed")  # a file that failed to load raises here
    except flags.IllegalFlagValueError as e:
        match = re.match(r"flag --config\.([^=]+)=(.*?): ", str(e))
        if match and match[1] in (keys := settings()):
            expected = keys[match[1]].check.expected
            raise ConfigError(
                f"{source}: {match[1]}={match[2]!r} is invalid; expected {expected}"
            ) from None
        raise ConfigError(f"{source}: {one_line(e)}") from None
    except Exception as e:  # an experiment file that does not run: its error, in one line
        raise ConfigError(f"{source}: {one_line(e)}") from None
    if rest[1:]:
        raise ConfigError(f"unrecognized arguments: {' '.join(rest[1:])}")
    return config


def one_line(e: BaseException) -> str:
    """An error raised while parsing flags or running a user's file (an experiment, a sweep, a
    model), in one line: the innermost exception and the line of the user's file it came from
    (ml_collections quotes the traceback of a failing ``get_config`` in its message)."""
    if isinstance(e, SyntaxError):
        return f"SyntaxError: {e.msg} ({e.filename}, line {e.lineno})"
    here = str(Path(__file__).parent)

    def users(file: str) -> bool:
        return "site-packages" not in file and here not in file and not file.startswith("<")

    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):
        where = [line.split(", in ")[0] for line in lines if line.startswith('File "')]
        where = [w for w in where if users(w.split('"')[1])]
        last = re.sub(r"^[\w.]*ConfigError: ", "", lines[-1])
    else:
        frames = traceback.extract_tb(e.__traceback__)
        where = [f'File "{f.filename}", line {f.lineno}' for f in frames if users(f.filename)]
        first = lines[0] if lines else ""
        last = first if isinstance(e, flags.Error | ConfigError) else f"{type(e).__name__}: {first}"
    return last + (f" ({where[-1]})" if where else "")


def with_values(
    config: ml_collections.ConfigDict, values: dict[str, Any], source: str
) -> ml_collections.ConfigDict:
    """A validated copy of ``config`` with typed ``{dotted_key: value}`` set (a sweep's grid
    points and overrides, tests); an unknown key or a bad value is a :class:`ConfigError`."""
    flat = flatten(config)
    for key, value in values.items():
        if key not in flat:
            raise ConfigError(f"{source}: {_unknown_key(key, flat)}")
        if isinstance(flat[key], float) and is_int(value):
            value = float(value)
        elif isinstance(flat[key], tuple) and isinstance(value, list):
            value = tuple(value)
        flat[key] = value
    result = unflatten(flat)
    validate(result, source)
    return result


# ---------------------------------------------------------------------------------------------
# Validation


def _unknown_key(key: str, known: Sequence[str]) -> ConfigError:
    keys = sorted(known)
    hint = difflib.get_close_matches(key, keys, n=1)
    msg = f"unknown config key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
    return ConfigError(f"{msg}; valid keys: {', '.join(keys)}")


def validate(config: ml_collections.ConfigDict, source: str = "config") -> None:
    """Raise :class:`ConfigError` naming the key and the valid values, for the first problem."""
    flat, keys = flatten(config), settings()
    for key in flat:
        if key not in keys:
            raise ConfigError(f"{source}: {_unknown_key(key, keys)}")
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


# ---------------------------------------------------------------------------------------------
# Resuming a run


def _flat_json(d: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat_json(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def diff(saved: dict[str, Any], current: ml_collections.ConfigDict) -> dict[str, tuple]:
    """Keys whose values differ between a saved JSON config and ``current``."""
    old = dict(_flat_json(saved))
    new = dict(_flat_json(to_json_dict(current)))
    return {
        k: (old.get(k, "<missing>"), new.get(k, "<missing>"))
        for k in sorted(set(old) | set(new))
        if old.get(k, "<missing>") != new.get(k, "<missing>")
    }


def check_resumable(saved: Any, config: ml_collections.ConfigDict, workdir: Path) -> None:
    """Refuse to resume the run saved in ``workdir`` (its ``config.json``) with ``config`` if
    they differ in a key that may not change on resume. Keys added to vae_jax after the run was
    saved count as their defaults (said once)."""
    source = f"{workdir / 'config.json'}"
    old, added = from_saved(saved, source)
    keys = settings()
    fixed = {"train.num_epochs"} if config.train.schedule != "constant" else set()
    changed = {
        k: v
        for k, v in diff(to_json_dict(old), config).items()
        if not (k in keys and keys[k].resumable) or k in fixed
    }
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
            f"workdir {workdir} holds a run with a different config:\n{lines}\n"
            "Choose another --workdir, start anew there with --force (the old run is moved "
            "aside, not deleted), or change only keys that may change on resume: "
            + ", ".join(sorted(resumable))
            + ", eval.*"
        )
    say_added(added, source)
