"""Command line: ``python -m vae_jax train <experiment> [--workdir DIR] [--force]
[--config.KEY=VALUE ...]``.

Exit codes (see :mod:`vae_jax.errors`): 0 done; 2 bad input, nothing written; 1 the run stopped
on an error, the newest valid checkpoint intact; 128 + signal number when SIGTERM/SIGINT stopped
it after saving a checkpoint (rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from vae_jax import config as config_lib
from vae_jax.errors import ConfigError, TrainingInterrupted, VaeJaxError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vae-jax",
        description="Train variational autoencoders; experiments are files in experiments/.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {
        "train": (
            "train an experiment (resumes its workdir)",
            "Override any config key: --config.model.latent_dim=10 --config.train.num_epochs=3",
            "where the run is written",
        ),
        "eval": (
            "evaluate a trained run: eval.json, a table, figures",
            "Override eval settings only, e.g. --config.eval.iwae_k=100",
            "the run to evaluate",
        ),
    }
    for command, (summary, epilog, workdir_help) in commands.items():
        p = sub.add_parser(command, help=summary, epilog=epilog)
        p.add_argument("experiment", help="a name in experiments/ or a path to a .py file")
        p.add_argument("--workdir", help=f"{workdir_help} (default: runs/<experiment>)")
        if command == "train":
            p.add_argument(
                "--force",
                action="store_true",
                help="start anew: move a run already in the workdir aside to <workdir>.old-<time>",
            )
            multi = p.add_argument_group(
                "multi-process (multi-host) runs; see README, 'Multi-host training'"
            )
            multi.add_argument(
                "--distributed",
                action="store_true",
                help="join a multi-process run (JAX cluster auto-detection: SLURM, Open MPI, "
                "TPU pods; or the flags below / $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, "
                "$JAX_PROCESS_ID)",
            )
            multi.add_argument(
                "--coordinator", help="HOST:PORT of process 0 (implies --distributed)"
            )
            multi.add_argument("--num-processes", type=int)
            multi.add_argument("--process-id", type=int)
        else:
            p.add_argument(
                "--step", type=int, help="a checkpoint step (default: the newest valid checkpoint)"
            )
    p = sub.add_parser(
        "sweep",
        help="train every point of a sweep (resumable), then write its summary and plots",
        epilog="Overrides apply to every point, e.g. --config.train.num_epochs=2",
    )
    p.add_argument("sweep", help="a name in experiments/sweeps/ or a path to a .py file")
    p.add_argument("--workdir", help="the sweep's folder (default: runs/sweeps/<sweep>)")
    p.add_argument(
        "--shard",
        default="0/1",
        help="i/n: train every n-th point from the i-th (n machines split a sweep)",
    )
    p.add_argument(
        "--vmap",
        choices=("auto", "on", "off"),
        default="auto",
        help="train points that differ only in seed and noise scale together under jax.vmap "
        "(auto: on GPU/TPU, not on CPU; README, 'Sweeps')",
    )
    sub.add_parser("list", help="list the experiments and sweeps")
    return parser


def _resume_command(argv: Sequence[str]) -> str:
    args = [a for a in argv if a != "--force"]
    return "python -m vae_jax " + shlex.join(args)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = _parser().parse_known_args(argv)
    try:
        if args.command == "list":
            if rest:
                raise ConfigError(f"unrecognized arguments: {' '.join(rest)}")
            from vae_jax.sweeps.grid import available_sweeps

            print("\n".join(config_lib.available_experiments()))
            sweeps = available_sweeps()
            if sweeps:
                print("sweeps: " + ", ".join(sweeps))
            return 0
        if args.command == "sweep":
            from vae_jax.sweeps.runner import run_sweep

            overrides = config_lib.split_override_args(rest)
            run_sweep(args.sweep, overrides, args.shard, args.vmap, args.workdir)
            return 0
        name = args.experiment.removesuffix(".py").rsplit("/", 1)[-1]
        workdir = args.workdir or f"runs/{name}"
        overrides = config_lib.split_override_args(rest)
        if args.command == "eval":
            if not Path(workdir).exists():  # then a wrong name is the likelier mistake
                config_lib.experiment_path(args.experiment)
            from vae_jax.evaluation.run import evaluate_run

            evaluate_run(workdir, overrides, step=args.step)
            return 0
        config = config_lib.apply_overrides(config_lib.load_experiment(args.experiment), overrides)
        from vae_jax.training.run import train_and_evaluate  # imports JAX: after the cheap checks

        if args.distributed or args.coordinator:
            from vae_jax.parallel import initialize_distributed

            initialize_distributed(args.coordinator, args.num_processes, args.process_id)
        train_and_evaluate(config, workdir, name=name, force=args.force)
        return 0
    except KeyboardInterrupt:  # before training started: nothing to save
        print("interrupted before training started; nothing was trained", file=sys.stderr)
        return 130
    except TrainingInterrupted as e:
        print(f"{e}.\nResume with the same command:\n  {_resume_command(argv)}", file=sys.stderr)
        return e.exit_code
    except VaeJaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
