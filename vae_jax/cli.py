"""Command line: ``python -m vae_jax train <experiment> [--workdir DIR] [--config.KEY=VALUE ...]``.

Bad input (unknown experiment, unknown key, invalid value, missing data) prints one clear
message and exits with code 2 before anything is written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vae_jax import config as config_lib
from vae_jax.config import ConfigError
from vae_jax.data import DataError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vae-jax",
        description="Train variational autoencoders; experiments are files in experiments/.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train",
        help="train an experiment (resumes its workdir)",
        epilog="Override any config key: --config.model.latent_dim=10 --config.train.num_epochs=3",
    )
    train.add_argument("experiment", help="a name in experiments/ or a path to a .py file")
    train.add_argument("--workdir", help="where the run is written (default: runs/<experiment>)")
    sub.add_parser("list", help="list the experiments")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, rest = _parser().parse_known_args(argv)
    try:
        if args.command == "list":
            if rest:
                raise ConfigError(f"unrecognized arguments: {' '.join(rest)}")
            print("\n".join(config_lib.available_experiments()))
            return 0
        config = config_lib.apply_overrides(
            config_lib.load_experiment(args.experiment), config_lib.split_override_args(rest)
        )
        name = args.experiment.removesuffix(".py").rsplit("/", 1)[-1]
        workdir = args.workdir or f"runs/{name}"
        from vae_jax.train import train_and_evaluate  # imports JAX: after the cheap checks

        train_and_evaluate(config, workdir, name=name)
        return 0
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
