"""The command line: parse, make one call into the library, map errors to exit codes.

    python -m vae_jax train mnist_z20 [--workdir DIR] [--force] [--config.KEY=VALUE ...]
    python -m vae_jax train --config=experiments/mnist_z20.py --config.model.latent_dim=10
    python -m vae_jax eval mnist_z20 [--workdir DIR] [--step N] [--config.eval.KEY=VALUE ...]
    python -m vae_jax sweep latent_noise [--shard i/n] [--vmap auto|on|off] [--config...]
    python -m vae_jax list
    python -m vae_jax data fashion_mnist [--data-dir DIR]

Exit codes (see :mod:`vae_jax.errors`): 0 done; 2 bad input, nothing written; 1 the run stopped
on an error, the newest valid checkpoint intact; 128 + signal number when SIGTERM/SIGINT stopped
it after saving a checkpoint (rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from vae_jax.config.experiments import available_experiments, experiment_path, load_experiment
from vae_jax.config.keys import base_config, settings
from vae_jax.errors import ConfigError, TrainingInterrupted, VaeJaxError

OVERRIDES = "Override any config key: --config.model.latent_dim=10 --config.train.num_epochs=3"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vae-jax",
        description="Train variational autoencoders; experiments are files in experiments/.",
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train", help="train an experiment (resumes its workdir)", epilog=OVERRIDES
    )
    train.add_argument("experiment", nargs="?", help="a name in experiments/ (or --config=FILE)")
    train.add_argument("--workdir", help="where the run is written (default: runs/<experiment>)")
    train.add_argument(
        "--force",
        action="store_true",
        help="start anew: move a run already in the workdir aside to <workdir>.old-<time>",
    )
    _multi_process_flags(train)
    evaluate = sub.add_parser(
        "eval",
        help="evaluate a trained run: eval.json, a table, figures",
        epilog="Override eval settings only, e.g. --config.eval.iwae_k=100",
    )
    evaluate.add_argument("experiment", nargs="?", help="its name, for the default workdir")
    evaluate.add_argument("--workdir", help="the run to evaluate (default: runs/<experiment>)")
    evaluate.add_argument("--step", type=int, help="a checkpoint step (default: the newest)")
    sweep = sub.add_parser(
        "sweep",
        help="train every point of a sweep (resumable), then write its summary and plots",
        epilog="Overrides apply to every point, e.g. --config.train.num_epochs=2",
    )
    sweep.add_argument("sweep", help="a name in experiments/sweeps/ or a path to a .py file")
    sweep.add_argument("--workdir", help="the sweep's folder (default: runs/sweeps/<sweep>)")
    sweep.add_argument("--shard", default="0/1", help="i/n: every n-th point from the i-th")
    sweep.add_argument(
        "--vmap",
        choices=("auto", "on", "off"),
        default="auto",
        help="train points that differ only in seed and noise scale together under jax.vmap "
        "(auto: on GPU/TPU, not on CPU; README, 'Sweeps')",
    )
    listing = sub.add_parser("list", help="list the experiments and sweeps (or the config keys)")
    listing.add_argument(
        "--keys", action="store_true", help="every config key: default, allowed values, meaning"
    )
    data = sub.add_parser(
        "data",
        help="download and prepare a TFDS dataset (TensorFlow goes into its own environment)",
    )
    data.add_argument("dataset", help="a TFDS dataset name, e.g. mnist, fashion_mnist, cifar10")
    data.add_argument("--data-dir", help="the TFDS data dir (default: $TFDS_DATA_DIR, else "
                      "~/tensorflow_datasets)")  # fmt: skip
    return parser


def _multi_process_flags(p: argparse.ArgumentParser) -> None:
    multi = p.add_argument_group("multi-process (multi-host) runs; see README, 'Multi-host'")
    multi.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-process run (JAX cluster auto-detection: SLURM, Open MPI, TPU pods; "
        "or the flags below / $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID)",
    )
    multi.add_argument("--coordinator", help="HOST:PORT of process 0 (implies --distributed)")
    multi.add_argument("--num-processes", type=int)
    multi.add_argument("--process-id", type=int)
    multi.add_argument(
        "--peer-timeout",
        type=int,
        default=300,
        help="seconds to wait for every process to join (default 300)",
    )


def _config_file(rest: list[str]) -> tuple[str | None, list[str]]:
    """``--config=FILE`` (or ``--config FILE``) taken out of the remaining arguments."""
    for i, arg in enumerate(rest):
        if arg.startswith("--config="):
            return arg.removeprefix("--config="), rest[:i] + rest[i + 1 :]
        if arg == "--config" and i + 1 < len(rest):
            return rest[i + 1], rest[:i] + rest[i + 2 :]
    return None, rest


def _experiment(args: argparse.Namespace, rest: list[str]) -> tuple[str, list[str]]:
    """The experiment (a name or a file) and the overrides."""
    path, overrides = _config_file(rest)
    if (path is None) == (args.experiment is None):
        raise ConfigError("give an experiment: a name in experiments/ or --config=FILE, not both")
    return path or args.experiment, overrides


def _name(experiment: str) -> str:
    return experiment.removesuffix(".py").rsplit("/", 1)[-1]


def _workdir(args: argparse.Namespace) -> str | None:
    if args.workdir is not None and not args.workdir.strip():
        raise ConfigError(
            "--workdir is empty; give a folder, or leave it out for runs/<experiment>"
        )
    return args.workdir


def _train(args: argparse.Namespace, rest: list[str]) -> None:
    experiment, overrides = _experiment(args, rest)
    workdir = _workdir(args)
    config = load_experiment(experiment, overrides)
    multi = args.distributed or args.coordinator
    if not multi and (args.num_processes is not None or args.process_id is not None):
        raise ConfigError(
            "--num-processes/--process-id join a multi-process run only with --coordinator "
            "HOST:PORT (or --distributed); without it each process would train alone"
        )
    from vae_jax import parallel  # imports JAX: after the cheap checks
    from vae_jax.training.run import train_and_evaluate

    if multi:
        parallel.check_distributed_args(args.coordinator, args.num_processes, args.process_id)
        parallel.initialize_distributed(
            args.coordinator, args.num_processes, args.process_id, args.peer_timeout
        )
    name = _name(experiment)
    train_and_evaluate(config, workdir or f"runs/{name}", name=name, force=args.force)


def _eval(args: argparse.Namespace, rest: list[str]) -> None:
    if args.experiment is None and args.workdir is None:
        raise ConfigError("give the run to evaluate: an experiment name or --workdir")
    workdir = _workdir(args) or f"runs/{_name(args.experiment)}"
    if args.experiment and not Path(workdir).exists():  # then a wrong name is likelier
        experiment_path(args.experiment)
    if args.experiment and args.workdir:
        _note_if_trained_otherwise(args.experiment, Path(workdir))
    from vae_jax.evaluation.run import evaluate_workdir

    evaluate_workdir(workdir, rest, step=args.step)


def _note_if_trained_otherwise(experiment: str, workdir: Path) -> None:
    """Say so when the run in ``workdir`` was not trained with ``experiment`` as its file is
    now (the evaluation then uses the run's own config, as always)."""
    from vae_jax.config.saved import from_saved, trained_differently
    from vae_jax.outputs.workdir import Workdir

    run = Workdir(workdir)
    try:
        trained, _ = from_saved(run.saved_config(), str(run.config_path))
    except VaeJaxError:  # no run there, or a damaged config.json: the evaluation says so
        return
    changed = trained_differently(trained, load_experiment(experiment))
    if changed:
        key, (was, now) = next(iter(changed.items()))
        more = f", and {len(changed) - 1} more key(s)" if len(changed) > 1 else ""
        print(
            f"note: the run in {workdir} was not trained with experiment {experiment} as its "
            f"file is now ({key}: {was!r} in the run, {now!r} in the file{more}); it is "
            "evaluated with its own config (give its own experiment, or --workdir alone)"
        )


def _sweep(args: argparse.Namespace, rest: list[str]) -> None:
    from vae_jax.sweeps.runner import run_sweep

    run_sweep(args.sweep, rest, args.shard, args.vmap, args.workdir)


def _list(args: argparse.Namespace, rest: list[str]) -> None:
    if rest:
        raise ConfigError(f"unrecognized arguments: {' '.join(rest)}")
    if args.keys:
        print("| key | default | allowed | meaning |\n|---|---|---|---|")
        for key, s in settings().items():
            print(f"| `{key}` | {s.default!r} | {s.check.expected} | {s.doc} |")
        return
    from vae_jax.sweeps.grid import available_sweeps

    print("\n".join(available_experiments()))
    sweeps = available_sweeps()
    if sweeps:
        print("sweeps: " + ", ".join(sweeps))


def _data(args: argparse.Namespace, rest: list[str]) -> None:
    if rest:
        raise ConfigError(f"unrecognized arguments: {' '.join(rest)}")
    from vae_jax.data.datasets import cache_dir, resolve_data_dir
    from vae_jax.data.tfds_prepare import prepare_tfds

    data_dir = args.data_dir or resolve_data_dir(base_config().data)
    prepare_tfds(args.dataset, data_dir, cache_dir())
    print(f"prepared {args.dataset} in {data_dir}; export TFDS_DATA_DIR={data_dir}")


COMMANDS = {"train": _train, "eval": _eval, "sweep": _sweep, "list": _list, "data": _data}


class _Terminated(BaseException):
    """SIGTERM before the training loop listens for it (it then saves a checkpoint). A
    BaseException, as KeyboardInterrupt is, so that no ``except Exception`` swallows it."""


def _terminated(signum, frame) -> None:
    raise _Terminated


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = _parser().parse_known_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)
    try:
        COMMANDS[args.command](args, rest)
        return 0
    except (KeyboardInterrupt, _Terminated) as e:  # outside the loop: nothing to save
        name = "SIGTERM" if isinstance(e, _Terminated) else "SIGINT"
        print(f"stopped by {name} outside training; nothing more was trained or saved "
              "(the newest checkpoint, if any, is intact)", file=sys.stderr)  # fmt: skip
        return 128 + (signal.SIGTERM if isinstance(e, _Terminated) else signal.SIGINT)
    except TrainingInterrupted as e:
        resume = "python -m vae_jax " + shlex.join(a for a in argv if a != "--force")
        print(f"{e}.\nResume with the same command:\n  {resume}", file=sys.stderr)
        return e.exit_code
    except VaeJaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
