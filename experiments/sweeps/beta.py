"""The KL weight beta on the seed experiment (mnist_z20: conv VAE, grayscale MNIST, 10 epochs):
beta in {0.25, 0.5, 1, 2, 4}, one seed.

    make sweep SWEEP=beta      # = python -m vae_jax sweep beta

Writes runs/sweeps/beta/<point>/ and, in runs/sweeps/beta/, summary.csv, summary.md,
elbo_vs_beta.png, rate_distortion.png (the trade-off beta moves along) and the reconstruction
grids. The test -ELBO is the beta=1 bound for every point (the true ELBO), so it is comparable.

Measured on 2 CPU cores (Intel Xeon, AVX-512), 2026-11-25: 7.0 min in all (65 s of training at
~9,200 images/s and ~14 s of evaluation per point). Nats per test image (test -ELBO on all 10k,
IWAE k=100 on the first 1,000; rate = KL, distortion = reconstruction):

    beta         0.25    0.5      1      2      4
    test -ELBO  110.59  104.81  101.70  105.14  116.65
    IWAE NLL    105.83  100.50   97.06   97.52  104.33
    rate         43.61   34.59   24.98   16.37   10.12
    distortion   66.98   70.22   76.72   88.77  106.53

beta = 1 (the ELBO itself) gives the best bound; beta < 1 buys reconstruction with rate, beta > 1
the opposite (at 4, 5 of the 20 units are inactive).
"""


def get_sweep():
    return {
        "experiment": "mnist_z20",
        "grid": {"objective.beta": [0.25, 0.5, 1.0, 2.0, 4.0], "seed": [0]},
        "overrides": {"eval.iwae_test_size": 1000},
    }
