"""Run by test_multihost.py as one of several processes (``PROCESS_ID NUM_PROCESSES PORT
WORKDIR``; ``NUM_PROCESSES=0``: a plain single-process run): train the tiny synthetic config and
print JSON with the history and the final parameters' sums."""

import json
import sys

import jax
import numpy as np
from conftest import small_config, synthetic_dataset

from vae_jax import parallel
from vae_jax.evaluation.trained_run import restore_run
from vae_jax.training.run import train_and_evaluate


def main(process_id: int, num_processes: int, port: int, workdir: str) -> None:
    if num_processes:
        parallel.initialize_distributed(f"127.0.0.1:{port}", num_processes, process_id)
    config = small_config({"train.num_epochs": 2})
    history = train_and_evaluate(config, workdir, synthetic_dataset())
    params = restore_run(workdir)[2].params  # every process takes part in the restore
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
        )
    )


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
