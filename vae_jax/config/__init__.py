"""Configs: every key and its validation (:mod:`.keys`), experiment files and overrides
(:mod:`.experiments`), the user's files (:mod:`.user_files`), a run's saved config
(:mod:`.saved`). Experiment files import ``base_config`` from here."""

from vae_jax.config.experiments import load_experiment
from vae_jax.config.keys import base_config

__all__ = ["base_config", "load_experiment"]
