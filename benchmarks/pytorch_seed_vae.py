"""The seed conv VAE, the MLP VAE and the ResNet VAE trained in PyTorch eager on CPU: the peer
that ``make bench`` measures beside vae_jax. Same layers, init scale, loss (Bernoulli
cross-entropy summed over pixels + KL, averaged over the batch) and Adam(1e-3) as vae_jax's
mnist_z20 / mnist_mlp_z20 / bmnist_resnet (whose dynamic binarization is drawn here too; its
learning-rate schedule and KL warm-up, a few scalar operations per step, are left out).

PyTorch is not a dependency of vae_jax; `make peer-env` makes `.venv-torch` with it, and
`make bench` then runs this script beside each experiment. By hand:

    .venv-torch/bin/python benchmarks/pytorch_seed_vae.py --batch 100 --json out.json
    .venv-torch/bin/python benchmarks/pytorch_seed_vae.py --model resnet --batch 128 \
        --latent-dim 32 --widths 32 64 --blocks 1 --binarize

Prints images/s (median, min, max over the repetitions) for each model and memory layout.
Data are random uint8 images resident in memory (the speed does not depend on the values), each
step gathers a random batch, converts it to floats in [0, 1] and takes one Adam step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F


class ConvVAE(nn.Module):
    def __init__(self, latent_dim: int = 20):
        super().__init__()
        self.enc1 = nn.Conv2d(1, 16, 5, 2, padding=2)
        self.enc2 = nn.Conv2d(16, 32, 5, 2, padding=2)
        self.mean = nn.Linear(7 * 7 * 32, latent_dim)
        self.logvar = nn.Linear(7 * 7 * 32, latent_dim)
        self.dec = nn.Linear(latent_dim, 7 * 7 * 32)
        # 7->14->28: "SAME" stride-2 transposed convs (padding 2, output_padding 1), no bias.
        self.dec1 = nn.ConvTranspose2d(32, 16, 5, 2, padding=2, output_padding=1, bias=False)
        self.dec2 = nn.ConvTranspose2d(16, 1, 5, 2, padding=2, output_padding=1, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def encode(self, x):
        h = F.leaky_relu(self.enc1(x), 0.2)
        h = F.leaky_relu(self.enc2(h), 0.2).flatten(1)
        return self.mean(h), self.logvar(h)

    def decode(self, z):
        h = F.relu(self.dec(z)).view(-1, 32, 7, 7)
        if self._channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        return self.dec2(F.relu(self.dec1(h)))


class ResBlock(nn.Module):
    """x + conv3x3(elu(conv3x3(elu(x)))), as vae_jax's ResBlock."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.elu(self.conv1(F.elu(x))))


class ResNetVAE(nn.Module):
    """vae_jax's resnet architecture: 5x5 stride-2 convs to widths[0] then widths[1], each
    followed by residual blocks; the decoder mirrors it with 5x5 stride-2 transposed convs."""

    def __init__(self, latent_dim: int = 32, widths=(32, 64), blocks: int = 1):
        super().__init__()
        c1, c2 = widths
        self.down = nn.ModuleList(
            [nn.Conv2d(1, c1, 5, 2, padding=2), nn.Conv2d(c1, c2, 5, 2, padding=2)]
        )
        self.enc_blocks = nn.ModuleList(
            [nn.Sequential(*[ResBlock(c) for _ in range(blocks)]) for c in (c1, c2)]
        )
        self.mean = nn.Linear(7 * 7 * c2, latent_dim)
        self.logvar = nn.Linear(7 * 7 * c2, latent_dim)
        self.dec = nn.Linear(latent_dim, 7 * 7 * c2)
        self.dec_blocks = nn.ModuleList(
            [nn.Sequential(*[ResBlock(c) for _ in range(blocks)]) for c in (c2, c1)]
        )
        self.up = nn.ModuleList(
            [
                nn.ConvTranspose2d(c2, c1, 5, 2, padding=2, output_padding=1, bias=False),
                nn.ConvTranspose2d(c1, 1, 5, 2, padding=2, output_padding=1, bias=False),
            ]
        )
        self.c2 = c2

    def encode(self, x):
        for down, blocks in zip(self.down, self.enc_blocks, strict=True):
            x = blocks(down(x))
        h = F.elu(x).flatten(1)
        return self.mean(h), self.logvar(h)

    def decode(self, z):
        h = self.dec(z).view(-1, self.c2, 7, 7)
        if self._channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        for blocks, up in zip(self.dec_blocks, self.up, strict=True):
            h = up(F.elu(blocks(h)))
        return h


class MLPVAE(nn.Module):
    def __init__(self, latent_dim: int = 20, hidden: int = 500):
        super().__init__()
        self.enc = nn.Linear(784, hidden)
        self.mean = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)
        self.dec1 = nn.Linear(latent_dim, hidden)
        self.dec2 = nn.Linear(hidden, 784)

    def encode(self, x):
        h = F.relu(self.enc(x.flatten(1)))
        return self.mean(h), self.logvar(h)

    def decode(self, z):
        return self.dec2(F.relu(self.dec1(z))).view(-1, 1, 28, 28)


def loss_fn(model, x):
    mean, logvar = model.encode(x)
    z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
    logits = model.decode(z)
    recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / x.shape[0]
    kl = 0.5 * torch.sum(mean**2 + logvar.exp() - 1.0 - logvar) / x.shape[0]
    return recon + kl


def make_model(args: argparse.Namespace) -> nn.Module:
    if args.model == "conv":
        return ConvVAE(args.latent_dim)
    if args.model == "resnet":
        return ResNetVAE(args.latent_dim, tuple(args.widths), args.blocks)
    return MLPVAE(args.latent_dim, args.hidden)


def bench(args: argparse.Namespace, batch: int, channels_last: bool, steps: int) -> dict:
    torch.manual_seed(0)
    model = make_model(args)
    model._channels_last = channels_last
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.randint(0, 256, (60000, 1, 28, 28), dtype=torch.uint8)

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            idx = torch.randint(0, len(images), (batch,))
            x = (images[idx].float() / 255.0).contiguous(memory_format=fmt)
            if args.binarize:
                x = torch.bernoulli(x)
            opt.zero_grad(set_to_none=True)
            loss_fn(model, x).backward()
            opt.step()
        return n * batch / (time.perf_counter() - start)

    run(max(steps // 5, 5))  # warm-up
    rates = [run(steps) for _ in range(args.reps)]
    return {
        "framework": f"pytorch {torch.__version__} eager",
        "model": args.model,
        "layout": "channels_last" if channels_last else "NCHW",
        "batch_size": batch,
        "threads": torch.get_num_threads(),
        "images_per_sec_median": statistics.median(rates),
        "images_per_sec_min": min(rates),
        "images_per_sec_max": max(rates),
        "steps_per_rep": steps,
        "reps": args.reps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("conv", "mlp", "resnet"), nargs="+",
                        default=["conv", "mlp"])  # fmt: skip
    parser.add_argument("--batch", type=int, nargs="+", default=[100, 512])
    parser.add_argument("--steps", type=int, default=0,
                        help="steps per repetition (default: 10,000 images)")  # fmt: skip
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--latent-dim", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=500, help="mlp: hidden units")
    parser.add_argument("--widths", type=int, nargs=2, default=[32, 64], help="resnet")
    parser.add_argument("--blocks", type=int, default=1, help="resnet: blocks per scale")
    parser.add_argument("--binarize", action="store_true", help="dynamic binarization")
    parser.add_argument("--json", help="write the results here (- : stdout, one line)")
    args = parser.parse_args()
    results = []
    for model in args.model:
        for batch in args.batch:
            for channels_last in (True, False) if model != "mlp" else (False,):
                steps = args.steps or max(10_000 // batch, 10)
                r = bench(argparse.Namespace(**{**vars(args), "model": model}), batch,
                          channels_last, steps)  # fmt: skip
                results.append(r)
                print(
                    f"{model:6s} batch {batch:4d} {r['layout']:13s} "
                    f"{r['images_per_sec_median']:8.0f} img/s "
                    f"(min {r['images_per_sec_min']:.0f}, max {r['images_per_sec_max']:.0f})",
                    flush=True,
                )
    if args.json == "-":
        print("PEER " + json.dumps(results), flush=True)
    elif args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
