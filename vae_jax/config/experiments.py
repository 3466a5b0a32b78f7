"""Experiment files and ``--config.KEY=VALUE`` overrides, read with ``ml_collections.config_flags``.

An experiment is a file ``experiments/<name>.py`` whose ``get_config()`` returns
:func:`~vae_jax.config.keys.base_config` with a few fields changed, as in the flax examples;
``python -m vae_jax train --config=FILE --config.model.latent_dim=10`` works as there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

from vae_jax.config.keys import settings, unknown_key, validate, with_values
from vae_jax.config.user_files import experiments_dir, find_file, one_line, python_files
from vae_jax.core.settings import flatten
from vae_jax.errors import ConfigError


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
            raise unknown_key(key, flat)
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


def apply_eval_overrides(
    config: ml_collections.ConfigDict, overrides: Sequence[str] | Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """``config`` with ``eval.*`` overrides: ``--config.eval.KEY=VALUE`` arguments, or
    ``{"eval.KEY": value}``; other keys are refused (evaluation uses the run's own config)."""
    named = dict(overrides) if isinstance(overrides, Mapping) else None
    for key in named if named is not None else override_keys(overrides):
        if not key.startswith("eval."):
            raise ConfigError(
                f"--config.{key}: evaluation uses the run's own config; only eval.* keys can be "
                "overridden (e.g. --config.eval.iwae_k=100)"
            )
    if named is not None:
        return with_values(config, named, "evaluation settings")
    return override(config, overrides)
