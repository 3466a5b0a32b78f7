"""The MLP VAE of the Flax and PyTorch examples (784-500-20, ReLU), on grayscale MNIST.

    make train EXP=mnist_mlp_z20

Encoder: dense 500, ReLU, dense heads for the mean and log-variance (z=20); decoder: dense 500,
ReLU, dense 784 logits (flax/examples/vae). Trained like the PyTorch example: Bernoulli
(sigmoid cross-entropy) reconstruction of grayscale intensities, batch 128, Adam 1e-3, 10
epochs; its losses are summed over pixels and averaged over the batch as ours are, so its
printed "Average loss" is comparable with our train loss.

Expected on 2 CPU cores, measured with the command above: ~6 s per epoch (~10,000 images/s),
~1.3 min in all. Test -ELBO (nats/image): 119.20 after epoch 1, 105.63 after epoch 9, 105.33
after epoch 10.
"""

from vae_jax.config import base_config


def get_config():
    config = base_config()
    config.model.arch = "mlp"
    config.model.mlp_hidden_dims = (500,)
    config.model.mlp_activation = "relu"
    config.train.batch_size = 128
    config.eval.batch_size = 1024
    config.eval.iwae_test_size = 0  # the IWAE bound (k=100) on all 10k test images
    return config
