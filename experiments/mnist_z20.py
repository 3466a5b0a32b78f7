"""The seed experiment: Kevin Frans' conv VAE, z=20, on grayscale MNIST, 10 epochs.

    make train EXP=mnist_z20            # = python -m vae_jax train mnist_z20

Mirrors kvfrans/variational-autoencoder (main.py, ops.py): encoder conv 5x5/2 1->16, leaky
ReLU 0.2, conv 5x5/2 16->32, leaky ReLU, dense heads for the mean and (here) the log-variance;
decoder dense z->7x7x32, ReLU, 5x5/2 transposed conv ->14x14x16, ReLU, 5x5/2 transposed conv
->28x28x1 logits; seed initializers (stddev 0.02); Bernoulli (sigmoid cross-entropy)
reconstruction of grayscale intensities in [0, 1]; batch 100, Adam 1e-3.
Differences from the seed: the stddev head is a log-variance (the seed's raw stddev can be
negative), the 60k TFDS train split (600 steps/epoch; the seed used 55k), and the figure shows
64 test images.

Expected on 2 AMD EPYC cores (AVX2), measured with the command above: 33-40 s per epoch
(1,500-1,850 images/s), 6.5-7.5 min in all. Test -ELBO (nats/image; identical bit for bit
across runs on one machine): 120.82 after epoch 1, 102.23 after epoch 9, 101.74 after epoch 10.
On 2 Intel Xeon cores (AVX-512), 2026-11-25: ~6.6 s per epoch (~9,100 images/s), ~2.5 min in
all with the evaluation; test -ELBO 120.94 / 102.23 / 101.70 after epochs 1 / 9 / 10 (float
sums differ in the last digits between CPUs), IWAE k=100 NLL bound 97.11 +- 0.23 nats.
On 2 AMD EPYC cores (AVX-512), 2026-12-02, with the grayscale layers as one matrix product each
(conv_impl=auto's im2col, which rounds differently from the earlier space_to_depth form; that
form gave exactly the Intel figures above here): ~4.3 s per epoch (12,700-15,600 images/s),
1.5 min in all with the evaluation; test -ELBO 121.13 / 102.34 / 101.87 after epochs 1 / 9 /
10, IWAE k=100 NLL bound 97.24 +- 0.23 nats.
Writes figures/reconstructions.png (epoch 1, epoch 9, originals).

The evaluation after training (IWAE k=100 on all 10k test images, ~3 min): IWAE NLL bound
97.10 +- 0.23 nats, rate 24.83 + distortion 76.91 nats, 20/20 active units. k=5000 on 1000
test images (~12 min): make eval EXP=mnist_z20 ARGS="--config.eval.iwae_k=5000
--config.eval.iwae_test_size=1000".
"""

from vae_jax.config import base_config


def get_config():
    config = base_config()
    config.eval.iwae_test_size = 0  # the IWAE bound (k=100) on all 10k test images
    return config
