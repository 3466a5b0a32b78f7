"""A run's working directory: what it holds, and the checks made before writing into it.

Layout: ``config.json`` (the resolved config), ``metrics.jsonl``, ``tensorboard/``,
``checkpoints/`` (Orbax), ``figures/`` (PNGs).
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_collections

from vae_jax import config as config_lib
from vae_jax.atomic_io import write_json
from vae_jax.config import ConfigError
from vae_jax.reporting import is_writer


class Workdir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.config_path = self.path / "config.json"
        self.checkpoints = self.path / "checkpoints"
        self.figures = self.path / "figures"

    def saved_config(self) -> dict | None:
        if not self.config_path.exists():
            return None
        return json.loads(self.config_path.read_text())

    def check(self, config: ml_collections.ConfigDict) -> None:
        """Refuse a path that is not a workdir, or a workdir of a run with another config."""
        if not self.path.exists():
            return
        if not self.path.is_dir():
            raise ConfigError(f"workdir {self.path} exists and is not a directory")
        saved = self.saved_config()
        if saved is None:
            if any(self.path.iterdir()):
                raise ConfigError(
                    f"workdir {self.path} is not empty and holds no vae_jax run "
                    "(no config.json); choose another --workdir"
                )
            return
        changed = {
            k: v
            for k, v in config_lib.diff(saved, config).items()
            if k not in config_lib.RESUMABLE_KEYS
        }
        if changed:
            lines = "\n".join(
                f"  {k}: {old!r} in the workdir, {new!r} now" for k, (old, new) in changed.items()
            )
            raise ConfigError(
                f"workdir {self.path} holds a run with a different config:\n{lines}\n"
                "Choose another --workdir, or change only keys that may change on resume: "
                + ", ".join(sorted(config_lib.RESUMABLE_KEYS))
            )

    def create(self, config: ml_collections.ConfigDict) -> None:
        """Make the folders and write config.json (the resolved config)."""
        if not is_writer():
            return
        self.figures.mkdir(parents=True, exist_ok=True)
        write_json(self.config_path, config_lib.to_json_dict(config))
