"""A top-down hierarchical ResNet VAE on dynamically binarized MNIST (LVAE / VDVAE style).

    make train EXP=bmnist_ladder
    make eval EXP=bmnist_ladder    # IWAE k=5000 on the first 2,000 test images (~80 min here)
    make eval EXP=bmnist_ladder ARGS="--config.eval.iwae_k=1000"    # ~19 min

A bottom-up ResNet pass (5x5 stride-2 convs to 14x14x32 and 7x7x64, a residual block each), then
top-down from a learned constant: two groups of 7x7x8 latents, up to 14x14, two groups of
14x14x8 (3,920 latent dimensions in 4 layers), each group's prior and posterior diagonal
Gaussians from the shared top-down state. Batch 128, Adam 2e-3 with 500 warm-up steps and a
cosine decay over 32 epochs, the KL weight warmed up over the first 500 steps (a 5,000-step
warm-up cost 20 nats after 3 epochs in a pilot), gradients clipped at norm 200.

Measured on 2 CPU cores (AMD EPYC, AVX-512), 2026-12-03: ~500-660 images/s, 32 epochs in 57.8
minutes of the machine's CPU (62.9 min wall; 23% of that CPU time in the kernel, mostly page
faults of memory freed and mapped again each step). Since then four steps share a call
(`train.steps_per_call`) and one allocation: the same numbers bit for bit, ~11% faster
(docs/cpu_speed.md).
Test -ELBO (nats/image) 106.38 after epoch 1, 91.35 after 10, 86.96 after 32 (rate 34.70 = 12.24 +
8.14 + 4.65 + 9.66 by group, top first, + distortion 52.26; active units 39/392, 272/392,
1,163/1,568, 1,069/1,568). IWAE NLL bound, k=5000, on the first 2,000 test images:
**82.84 +- 0.44 nats** (78 min at ~2,140 samples/s), against Burda et al.'s two-layer IWAE
k=50, 82.90.

Earlier, with 26 epochs (same machine, 2026-12-02): 47.3 machine-minutes, test -ELBO 87.41,
IWAE k=1000 83.34 +- 0.44 and k=5000 83.18 +- 0.44 on the same 2,000 images. On 2 Intel Xeon
cores (before conv_impl=auto computed the grayscale strided convs as one matrix product each,
which rounds differently): 26 epochs in 58.2 machine-minutes, test -ELBO 87.43, IWAE k=1000
83.33 +- 0.44.
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
    config.train.num_epochs = 32
    config.train.schedule = "cosine"
    config.train.warmup_steps = 500
    config.train.learning_rate = 2e-3
    config.train.grad_clip_norm = 200.0
    config.train.log_every_steps = 100
    config.train.steps_per_call = 4  # one buffer allocation per 4 steps: same numbers, faster
    config.objective.kl_warmup_steps = 500
    config.checkpoint.max_to_keep = 100  # every epoch's, for the NLL-vs-time curve
    config.eval.iwae_k = 5000
    config.eval.iwae_test_size = 2000
    config.eval.batch_size = 500
    config.eval.after_training = False  # make eval EXP=bmnist_ladder
    return config
