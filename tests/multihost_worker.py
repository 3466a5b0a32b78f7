"""Run by test_multihost.py as one of several processes:

    python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT WORKDIR
        [--epochs 2] [--every-seconds S] [--step-delay S] [--keep 3]

(``NUM_PROCESSES=0``: a plain single-process run). Trains the tiny synthetic config (8 steps
per epoch) and prints JSON with the history and the final parameters' sums; exits as the CLI
does when stopped (128 + signal). ``--step-delay S``: print "STEP n" after each step and sleep
S seconds, so that a test can signal at a known step.
"""

import argparse
import json
import sys
import time

import jax
import numpy as np
from conftest import small_config, synthetic_dataset

from vae_jax import parallel
from vae_jax.errors import VaeJaxError
from vae_jax.evaluation.trained_run import restore_run
from vae_jax.training import loop
from vae_jax.training.run import train_and_evaluate


def _announce_steps(delay: float) -> None:
    run_steps = loop.run_steps

    def announcing(*args, pause):
        def announce(step):
            print(f"STEP {step}", flush=True)
            time.sleep(delay)
            return pause(step)

        return run_steps(*args, announce)

    loop.run_steps = lambda *a: announcing(*a[:-1], pause=a[-1])


def main() -> int:
    parser = argparse.ArgumentParser()
    for name in ("process_id", "num_processes", "port"):
        parser.add_argument(name, type=int)
    parser.add_argument("workdir")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--every-seconds", type=float, default=0.0)
    parser.add_argument("--step-delay", type=float, default=0.0)
    parser.add_argument("--keep", type=int, default=3)
    args = parser.parse_args()
    if args.num_processes:
        parallel.initialize_distributed(
            f"127.0.0.1:{args.port}", args.num_processes, args.process_id
        )
    if args.step_delay:
        _announce_steps(args.step_delay)
    config = small_config(
        {
            "train.num_epochs": args.epochs,
            "checkpoint.every_seconds": args.every_seconds,
            "checkpoint.max_to_keep": args.keep,
        }
    )
    try:
        history = train_and_evaluate(config, args.workdir, synthetic_dataset())
    except VaeJaxError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    params = restore_run(args.workdir)[1].params  # every process takes part in the restore
    print(
        json.dumps(
            {
                "process": jax.process_index(),
                "processes": jax.process_count(),
                "devices": jax.device_count(),
                "history": history,
                "param_sums": [
                    float(np.asarray(x, np.float64).sum()) for x in jax.tree.leaves(params)
                ],
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
