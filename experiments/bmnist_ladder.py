"""A top-down hierarchical ResNet VAE on dynamically binarized MNIST (LVAE / VDVAE style).

    make train EXP=bmnist_ladder
    make eval EXP=bmnist_ladder    # IWAE k=5000 on the first 2,000 test images (~85 min here)
    make eval EXP=bmnist_ladder ARGS="--config.eval.iwae_k=1000"    # ~19 min

A bottom-up ResNet pass (5x5 stride-2 convs to 14x14x32 and 7x7x64, a residual block each), then
top-down from a learned constant: two groups of 7x7x8 latents, up to 14x14, two groups of
14x14x8 (3,920 latent dimensions in 4 layers), each group's prior and posterior diagonal
Gaussians from the shared top-down state. Batch 128, Adam 2e-3 with 500 warm-up steps and a
cosine decay over 26 epochs, the KL weight warmed up over the first 500 steps (a 5,000-step
warm-up cost 20 nats after 3 epochs in a pilot), gradients clipped at norm 200.

Measured on 2 CPU cores (AMD EPYC, AVX-512), 2026-12-02, with today's code: ~500-630 images/s,
26 epochs in 47.3 minutes of the machine's CPU (50.6 min wall). Test -ELBO (nats/image) 106.38
after epoch 1, 91.25 after 10, 87.41 after 26 (rate 34.99 = 12.28 + 8.29 + 4.70 + 9.73 by
group, top first, + distortion 52.41; active units 39/392, 274/392, 1,130/1,568, 1,032/1,568).
IWAE NLL bound, k=1000, on the first 2,000 test images: 83.34 +- 0.44 nats (18 min at ~1,830
samples/s); k=5000 on the same images: 83.18 +- 0.44 nats (84 min at ~1,980 samples/s).

Earlier (2 Intel Xeon cores, AVX-512, before conv_impl=auto computed the grayscale strided convs
as one matrix product each, which rounds differently, and before the ELU kept only its output
for the gradient, which does not): ~460 images/s, 58.2 machine-minutes (63 min wall); test
-ELBO 112.39 / 91.23 / 87.43 after epochs 1 / 10 / 26 (rate 35.00 = 12.29 + 8.29 + 4.74 + 9.67
by group, top first, + distortion 52.43; active units 39/392, 280/392, 1,107/1,568,
1,023/1,568). IWAE NLL bound, k=1000, on the first 2,000 test images: 83.33 +- 0.44 nats (19
min at ~1,760 samples/s), against bmnist_resnet's 84.73 +- 0.46 (k=5000) after the same hour;
the k=5000 bound on these images was not measured (~95 min). Burda et al.'s two-layer IWAE
k=50: 82.90.
"""

from vae_jax.config import base_config


def get_config():
    config = base_config()
    config.model.arch = "ladder"
    config.model.latent_dim = 8  # channels of every latent group
    config.model.ladder_widths = (32, 64)
    config.model.ladder_groups = (2, 2)
    config.model.ladder_blocks = 1
    config.data.binarize = "dynamic"
    config.train.batch_size = 128
    config.train.num_epochs = 26
    config.train.schedule = "cosine"
    config.train.warmup_steps = 500
    config.train.learning_rate = 2e-3
    config.train.grad_clip_norm = 200.0
    config.train.log_every_steps = 100
    config.objective.kl_warmup_steps = 500
    config.checkpoint.max_to_keep = 100  # every epoch's, for the NLL-vs-time curve
    config.eval.iwae_k = 5000
    config.eval.iwae_test_size = 2000
    config.eval.batch_size = 500
    config.eval.after_training = False  # make eval EXP=bmnist_ladder
    return config
