"""bmnist_burda_vae trained with the IWAE objective, k=5 samples (Burda et al. 2016, Table 1:
85.54 nats after 3,280 passes).

    make train EXP=bmnist_burda_iwae_k5

The same network, data, batch and compressed schedule as bmnist_burda_vae (100 passes); the
training loss is minus the 5-sample importance-weighted bound. Evaluated with IWAE k=5000 on all
10k test images.

Expected on 2 CPU cores: ~2.5x the time of bmnist_burda_vae (five decodes per image), ~30 min,
then ~5 min for the k=5000 bound; about a nat below bmnist_burda_vae, as in the paper (85.54 vs
86.76 nats). Measured: README, "Results".
"""

from vae_jax.config import load_experiment


def get_config():
    config = load_experiment("bmnist_burda_vae")
    config.objective.name = "iwae"
    config.objective.k = 5
    return config
