"""Burda et al.'s one-stochastic-layer VAE on dynamically binarized MNIST, with their schedule
compressed to fit (their Table 1: 86.76 nats after 3,280 passes).

    make train EXP=bmnist_burda_vae

Burda, Grosse & Salakhutdinov (2016): encoder 784-200-200 tanh with dense heads for the mean and
log-variance of z (50 dims), decoder 50-200-200 tanh to 784 Bernoulli logits; batch 20; Adam with
eps 1e-4 and their staircase: 8 stages, stage i lasting 3^i/3280 of the run at 1e-3 * 10^(-i/7)
(here the run is 100 passes instead of 3,280). Evaluated with IWAE k=5000 on all 10k test images.

Expected on 2 CPU cores: ~9,000 images/s at batch 20, ~12 min for the 100 passes, then ~5 min
for the k=5000 bound on 10k test images; the NLL a few nats above the paper's 86.76 nats
(30x fewer passes). Measured: README, "Results".
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
