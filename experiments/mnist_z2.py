"""The seed conv VAE with a 2-D latent space, for pictures of the learned manifold.

    make train EXP=mnist_z2

mnist_z20 with latent_dim=2 (grayscale MNIST, Bernoulli reconstruction, batch 100, Adam 1e-3,
10 epochs). Besides the usual figures, the evaluation writes figures/manifold.png (decoder
means over a 20x20 grid of the Gaussian's inverse CDF, as Kingma & Welling's figure 4) and
figures/latent_scatter.png (test encodings coloured by digit).

Expected on 2 CPU cores: the speed of mnist_z20 (~7 min for the 10 epochs when alone; 16 min
measured while other jobs shared the cores), then ~3 min of evaluation (IWAE k=100). Measured:
test -ELBO 177.49 nats after epoch 1, 157.35 after epoch 9, 156.88 after epoch 10 (rate 5.48,
distortion 151.40); IWAE k=100 NLL bound 153.42 +- 0.49 nats; 2/2 active units.
"""

from vae_jax.config import base_config


def get_config():
    config = base_config()
    config.model.latent_dim = 2
    config.eval.iwae_test_size = 0  # the IWAE bound (k=100) on all 10k test images
    return config
