"""The seed conv VAE (and the MLP VAE) trained in PyTorch eager on CPU: the reference figure
for ``make bench``. Same layers, init scale, loss (Bernoulli cross-entropy summed over pixels +
KL, averaged over the batch) and Adam(1e-3) as vae_jax's mnist_z20 / mnist_mlp_z20.

PyTorch is not a dependency of vae_jax; run this in any environment that has it:

    python -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch numpy
    /tmp/torchenv/bin/python benchmarks/pytorch_seed_vae.py --batch 100 --json out.json

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


def bench(arch: str, batch: int, channels_last: bool, steps: int, reps: int) -> dict:
    torch.manual_seed(0)
    model = ConvVAE() if arch == "conv" else MLPVAE()
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
            opt.zero_grad(set_to_none=True)
            loss_fn(model, x).backward()
            opt.step()
        return n * batch / (time.perf_counter() - start)

    run(max(steps // 5, 5))  # warm-up
    rates = [run(steps) for _ in range(reps)]
    return {
        "framework": f"pytorch {torch.__version__} eager",
        "model": arch,
        "layout": "channels_last" if channels_last else "NCHW",
        "batch_size": batch,
        "threads": torch.get_num_threads(),
        "images_per_sec_median": statistics.median(rates),
        "images_per_sec_min": min(rates),
        "images_per_sec_max": max(rates),
        "steps_per_rep": steps,
        "reps": reps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[100, 512])
    parser.add_argument("--steps", type=int, default=100, help="steps per repetition")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    results = []
    for arch, layouts in (("conv", (True, False)), ("mlp", (False,))):
        for batch in args.batch:
            for channels_last in layouts:
                steps = max(args.steps * 100 // batch, 10)
                r = bench(arch, batch, channels_last, steps, args.reps)
                results.append(r)
                print(
                    f"{arch:4s} batch {batch:4d} {r['layout']:13s} "
                    f"{r['images_per_sec_median']:8.0f} img/s "
                    f"(min {r['images_per_sec_min']:.0f}, max {r['images_per_sec_max']:.0f})",
                    flush=True,
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
