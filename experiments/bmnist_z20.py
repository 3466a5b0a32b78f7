"""The seed conv VAE (z=20) on dynamically binarized MNIST, for NLLs comparable with papers.

    make train EXP=bmnist_z20
    make eval EXP=bmnist_z20 ARGS="--config.eval.iwae_test_size=0"   # k=5000 on all 10k images

The model and optimizer of mnist_z20 (batch 100, Adam 1e-3); the data as in Burda et al.
(2016): every training image is a fresh Bernoulli sample of its intensities each time it is
used, the test set is binarized once with the fixed key of data.binarize_seed, and the
Bernoulli likelihood is then a normalized likelihood, so -IWAE is an upper bound on the test NLL.
The automatic evaluation after training uses k=5000 on the first 1000 test images (~12 min on
2 CPU cores); the full test set takes ~2.2 h there (minutes on a GPU).

Expected on 2 CPU cores (AVX2), measured with the command above: the same ~1,500-1,850 images/s
as mnist_z20 when alone, so ~20 min of training for the 30 epochs (32 min measured while other
jobs shared the cores), then the evaluation. Test -ELBO (nats/image): 117.11 after epoch 1,
98.47 after epoch 9, 95.31 after epoch 28, still falling by ~0.1 nats per epoch.
After 30 epochs: test -ELBO 95.21, rate 27.28 + distortion 67.93 nats, 20/20 active units;
IWAE k=5000 NLL bound on the first 1000 test images 89.39 +- 0.72 nats (22 min, shared cores).
"""

from vae_jax.config import base_config


def get_config():
    config = base_config()
    config.data.binarize = "dynamic"
    config.train.num_epochs = 30
    config.figures.late_epoch = 9
    config.eval.iwae_k = 5000
    config.eval.iwae_test_size = 1000
    return config
