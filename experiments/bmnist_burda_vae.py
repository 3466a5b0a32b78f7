"""Burda et al.'s one-stochastic-layer VAE on dynamically binarized MNIST, with their schedule
compressed to fit (their Table 1: 86.76 nats after 3,280 passes).

    make train EXP=bmnist_burda_vae

Burda, Grosse & Salakhutdinov (2016): encoder 784-200-200 tanh with dense heads for the mean and
log-variance of z (50 dims), decoder 50-200-200 tanh to 784 Bernoulli logits; batch 20; Adam with
eps 1e-4 and their staircase: 8 stages, stage i lasting 3^i/3280 of the run at 1e-3 * 10^(-i/7)
(here the run is 100 passes instead of 3,280). Evaluated with IWAE k=5000 on all 10k test images.

Measured on 2 CPU cores (Intel Xeon, AVX-512), 2026-11-25, with the command above: ~11,600
images/s at batch 20, 9.4 min of wall time for the 100 passes (7.6 minutes of the machine's
CPU), then 3.1 min for the k=5000 bound on all 10k test images. Test -ELBO (nats/image) 143.12
after pass 1, 98.76 after 50, 96.50 after 100 (rate 24.70 + distortion 71.80; 22/50 active
units). IWAE k=5000 NLL bound on all 10,000 test images: 91.90 +- 0.25 nats, 5.1 nats above
the paper's 86.76. Compressed 33-fold, the staircase spends its last two thirds at lr 1e-4, so
100 passes of it end ~0.9 nats behind bmnist_mlp_burda's constant 1e-3 (90.99 +- 0.54 on 2k
images): the schedule is made for 3,280 passes.
"""

from vae_jax.config import load_experiment


def get_config():
    config = load_experiment("bmnist_mlp_burda")  # the network and the data
    config.train.batch_size = 20
    config.train.num_epochs = 100
    config.train.schedule = "staircase"
    config.train.adam_eps = 1e-4
    config.train.log_every_steps = 500
    return config
