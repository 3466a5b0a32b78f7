"""The KL weight beta on the seed experiment (mnist_z20: conv VAE, grayscale MNIST, 10 epochs):
beta in {0.25, 0.5, 1, 2, 4}, one seed.

    make sweep SWEEP=beta      # = python -m vae_jax sweep beta

Writes runs/sweeps/beta/<point>/ and, in runs/sweeps/beta/, summary.csv, summary.md,
elbo_vs_beta.png, rate_distortion.png (the trade-off beta moves along) and the reconstruction
grids. The test -ELBO is the beta=1 bound for every point (the true ELBO), so it is comparable.

Expected on 2 CPU cores: ~2 min of training and ~30 s of evaluation per point, ~15 min in all.
Measured: README, "Results".
"""


def get_sweep():
    return {
        "experiment": "mnist_z20",
        "grid": {"objective.beta": [0.25, 0.5, 1.0, 2.0, 4.0], "seed": [0]},
        "overrides": {"eval.iwae_test_size": 1000},
    }
