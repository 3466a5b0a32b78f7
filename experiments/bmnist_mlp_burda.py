"""Burda et al.'s one-stochastic-layer VAE on dynamically binarized MNIST (their Table 1).

    make train EXP=bmnist_mlp_burda

Burda, Grosse & Salakhutdinov (2016), "Importance Weighted Autoencoders": encoder 784-200-200
tanh with dense heads for the mean and log-variance of z (50 dims), decoder 50-200-200 tanh to
784 Bernoulli logits; dynamic binarization of the training set, the test set binarized once.
They report a test NLL (IWAE k=5000) of 86.76 nats for this VAE after 3,280 epochs of Adam
with a decaying learning rate and batch 20. Here: Adam 1e-3 at batch 100 for far fewer epochs,
so expect a few nats more. The evaluation after training is k=5000 on all 10,000 test images.

Expected on 2 CPU cores, measured with the command above while other jobs shared the cores:
~6,600 images/s, 16 min of training for the 100 epochs, then ~15-30 min for the k=5000 bound on
all 10k test images. Test -ELBO (nats/image): 105.12 after epoch 12, 98.00 after epoch 53, 96.44
after epoch 100.
IWAE k=5000 NLL bound on the first 2000 test images: 90.99 +- 0.54 nats (7.6 min, with
--config.eval.iwae_test_size=2000); rate 24.19 + distortion 72.25 nats; 18/50 active units.
"""

from vae_jax.config import base_config


def get_config():
    config = base_config()
    config.model.arch = "mlp"
    config.model.mlp_hidden_dims = (200, 200)
    config.model.mlp_activation = "tanh"
    config.model.latent_dim = 50
    config.data.binarize = "dynamic"
    config.train.num_epochs = 100
    config.train.log_every_steps = 200
    config.eval.batch_size = 1000
    config.eval.iwae_k = 5000
    config.eval.iwae_test_size = 0
    return config
