"""Latent size x noise scale on the seed experiment (mnist_z20: conv VAE, grayscale MNIST,
Bernoulli likelihood, 10 epochs): 5 latent sizes x 3 noise scales, one seed.

    make sweep SWEEP=latent_noise      # = python -m vae_jax sweep latent_noise

Writes runs/sweeps/latent_noise/<point>/ (one run each, as make train writes it) and, in
runs/sweeps/latent_noise/, summary.csv, summary.md, elbo_vs_latent.png, rate_distortion.png and
reconstructions_epoch_01.png / _09.png. Rerunning skips finished points and resumes the others.
Add seeds with a "seed" entry in the grid, e.g. [0, 1, 2] (error bars in elbo_vs_latent.png).

The IWAE bound (k=100) runs on the first 2,000 test images to keep the sweep short; the test
-ELBO uses all 10,000.

Expected on 2 CPU cores (Intel Xeon, AVX-512; 2026-11-23): 24.7 min in all, 65-115 s of
training and ~20 s of evaluation per point (sequential: --vmap auto does not vmap on CPU).
Test -ELBO (nats/image) for noise scale 0.5 / 1 / 2: z=2 156.69 / 156.88 / 156.44, z=5
126.40 / 124.62 / 125.33, z=10 106.05 / 106.99 / 107.08, z=20 103.03 / 101.70 / 105.45, z=50
112.44 / 102.17 / 129.10 (README, "Sweeps", for IWAE, rate, distortion, active units).
"""


def get_sweep():
    return {
        "experiment": "mnist_z20",
        "grid": {
            "model.latent_dim": [2, 5, 10, 20, 50],
            "model.noise_scale": [0.5, 1.0, 2.0],
            "seed": [0],
        },
        "overrides": {"eval.iwae_test_size": 2000},
    }
