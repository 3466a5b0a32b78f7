"""A training process for the tests that kill, signal and starve runs (run as a subprocess).

    python tests/train_worker.py WORKDIR [--epochs 3] [--every-steps 0] [--every-seconds 0]
        [--keep 3] [--evaluate]
        [--step-delay S] [--hang-in-save STEP] [--fill-disk-before-save STEP]

Trains the tiny synthetic config (8 steps per epoch) in WORKDIR and exits as the CLI does: 0,
or the error's exit code with its message on stderr. Fault hooks (test code only):
  --step-delay S             print "STEP n" after each step and sleep S seconds, so a test can
                             send a signal at a known step;
  --hang-in-save N           print "MIDSAVE" and hang inside the save of step N, after its files
                             are written and before Orbax commits (renames) it;
  --fill-disk-before-save N  fill the filesystem that holds WORKDIR just before saving step N.
"""

import argparse
import asyncio
import sys
import time
from pathlib import Path

from conftest import small_config, synthetic_dataset
from orbax.checkpoint._src.path import atomicity

from vae_jax.errors import VaeJaxError
from vae_jax.outputs.checkpoints import Checkpointer
from vae_jax.training import loop
from vae_jax.training.run import train_and_evaluate


def _install_hooks(args: argparse.Namespace) -> None:
    if args.step_delay:
        run_steps = loop.run_steps

        def announcing(*args_, pause):
            def announce(step):
                print(f"STEP {step}", flush=True)
                time.sleep(args.step_delay)
                return pause(step)

            return run_steps(*args_, announce)

        loop.run_steps = lambda *a: announcing(*a[:-1], pause=a[-1])

    if args.hang_in_save is not None:
        finalize = atomicity.AtomicRenameTemporaryPath.finalize

        async def hanging_finalize(self):
            if Path(str(self._final_path)).name == str(args.hang_in_save):
                print("MIDSAVE", flush=True)
                await asyncio.sleep(3600)
            return await finalize(self)

        atomicity.AtomicRenameTemporaryPath.finalize = hanging_finalize

    if args.fill_disk_before_save is not None:
        save = Checkpointer.save

        def filling_save(self, step, state, meta):
            if step == args.fill_disk_before_save:
                filler = Path(args.workdir).parent / "filler"
                with open(filler, "wb") as f:
                    try:
                        while True:
                            f.write(b"\0" * (1 << 20))
                            f.flush()
                    except OSError:
                        pass
            return save(self, step, state, meta)

        Checkpointer.save = filling_save


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--every-steps", type=int, default=0)
    parser.add_argument("--every-seconds", type=float, default=0.0)
    parser.add_argument("--keep", type=int, default=3)
    parser.add_argument("--step-delay", type=float, default=0.0)
    parser.add_argument("--hang-in-save", type=int)
    parser.add_argument("--fill-disk-before-save", type=int)
    parser.add_argument("--evaluate", action="store_true", help="eval.after_training on")
    args = parser.parse_args()
    _install_hooks(args)
    config = small_config(
        {
            "train.num_epochs": args.epochs,
            "checkpoint.every_steps": args.every_steps,
            "checkpoint.every_seconds": args.every_seconds,
            "checkpoint.max_to_keep": args.keep,
            "eval.after_training": args.evaluate,
        }
    )
    try:
        train_and_evaluate(config, args.workdir, synthetic_dataset())
    except VaeJaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
