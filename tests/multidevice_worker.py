"""Run by test_multidevice.py in a subprocess (the device count is fixed at JAX start-up):
train the tiny synthetic config and print JSON with the history, the final parameters' sums and
whether the devices drew different noise, and its eval.json."""

import json
import sys
from pathlib import Path

import jax
import numpy as np
from conftest import small_config, synthetic_dataset

from vae_jax.core.sharding import batch_sharding, make_mesh
from vae_jax.evaluation.trained_run import restore_run
from vae_jax.training.run import train_and_evaluate


def noise_shards_differ() -> bool:
    """Each device's slice of a batch-sharded normal draw differs from every other's."""
    mesh = make_mesh()
    eps = jax.jit(lambda k: jax.random.normal(k, (32, 20)), out_shardings=batch_sharding(mesh))(
        jax.random.key(0)
    )
    shards = [np.asarray(s.data) for s in eps.addressable_shards]
    return (
        all(not np.allclose(a, b) for i, a in enumerate(shards) for b in shards[i + 1 :])
        and len(shards) == jax.device_count()
    )


def main(workdir: str) -> None:
    config = small_config({"train.num_epochs": 3, "eval.after_training": True})
    history = train_and_evaluate(config, workdir, synthetic_dataset())
    params = restore_run(workdir)[1].params
    print(
        json.dumps(
            {
                "devices": jax.device_count(),
                "history": history,
                "param_sums": [
                    float(np.asarray(x, np.float64).sum()) for x in jax.tree.leaves(params)
                ],
                "noise_shards_differ": noise_shards_differ(),
                "eval": json.loads((Path(workdir) / "eval.json").read_text()),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
