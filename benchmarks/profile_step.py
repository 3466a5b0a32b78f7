"""Where one training step's time goes, op by op: vae_jax's compiled step under
``jax.profiler`` and (``--torch``) the same model in PyTorch eager under ``torch.profiler``.

    .venv/bin/python benchmarks/profile_step.py mnist_z20            # vae_jax
    .venv-torch/bin/python benchmarks/profile_step.py --torch conv   # the PyTorch peer

vae_jax: the real step (``vae_jax.bench``'s trainer) runs ``--steps`` steps under the profiler;
each XLA op's time is summed and grouped by the model part its HLO metadata names (encoder
Conv_0, decoder ConvTranspose_1, ...), forward or backward, and the optimizer. The profiler's
per-op overhead slows the step (compare its images/s with ``make bench``), so read the shares,
not the absolute times. PyTorch: self CPU time per aten op over the same number of steps.
"""

from __future__ import annotations

import argparse
import collections
import glob
import re
import sys
import tempfile
from pathlib import Path


def _op_groups(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> 'forward encoder/Conv_0', 'backward decoder/...', 'optimizer',
    'data and noise', from its metadata."""
    groups = {}
    for name, op_name in re.findall(r"%([\w.\-]+) = .*?op_name=\"([^\"]+)\"", hlo_text):
        layer = re.search(r"(encoder|decoder)/([A-Za-z]+_\d+|\w+)", op_name)
        if "transpose(jvp" in op_name:
            where = "backward"
        elif "jvp(" in op_name:
            where = "forward"
        else:
            groups[name] = "optimizer, data, noise, guards"
            continue
        groups[name] = f"{where} {layer.group(1)}/{layer.group(2)}" if layer else f"{where} loss"
    return groups


def profile_jax(experiment: str, steps: int, overrides: list[str]) -> None:
    import jax
    from jax.profiler import ProfileData

    from vae_jax import bench
    from vae_jax.config.experiments import load_experiment

    config = load_experiment(experiment, overrides)
    batch = config.train.batch_size
    dataset, _ = bench._dataset(config, "auto")
    trainer, state, sums = bench._trainer(config, dataset, 1)
    state, sums, step, _ = bench._run_steps(trainer, state, sums, 0, 50)
    jax.block_until_ready(state)
    with tempfile.TemporaryDirectory() as logdir:
        with jax.profiler.trace(logdir):
            state, sums, step, seconds = bench._run_steps(trainer, state, sums, step, steps)
        data = ProfileData.from_file(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0])
    hlo = trainer.compiled.step.as_text()
    groups, ops = _op_groups(hlo), set(re.findall(r"^\s*(?:ROOT )?%([\w.\-]+) = ", hlo, re.M))
    per_op, per_group = collections.Counter(), collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                if event.name in ops:
                    group = groups.get(event.name, "no metadata: layout copies, gradient convs")
                    per_op[event.name] += event.duration_ns
                    per_group[group] += event.duration_ns
    total = sum(per_group.values())
    print(f"{experiment}, batch {batch}: {steps * batch / seconds:,.0f} images/s under the "
          f"profiler; XLA ops {total / steps / 1e3:,.0f} us per step")  # fmt: skip
    _table("part of the step", per_group, total, steps)
    _table("XLA op (top 15)", collections.Counter(dict(per_op.most_common(15))), total, steps)


def _table(title: str, times: collections.Counter, total: float, steps: int) -> None:
    print(f"\n| {title} | us per step | share |\n|---|---|---|")
    for name, ns in times.most_common():
        print(f"| {name} | {ns / steps / 1e3:,.0f} | {100 * ns / total:.1f}% |")


def profile_torch(model: str, steps: int) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    sys.path.insert(0, str(Path(__file__).parent))
    import pytorch_seed_vae as peer

    resnet = model == "resnet"  # bmnist_resnet's sizes; the others are the seed's
    args = argparse.Namespace(model=model, latent_dim=32 if resnet else 20, hidden=500,
                              widths=[32, 64], blocks=1, binarize=resnet)  # fmt: skip
    net = peer.make_model(args)
    net._channels_last = True
    net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    batch = 128 if model == "resnet" else 100
    images = torch.randint(0, 256, (60000, 1, 28, 28), dtype=torch.uint8)

    def step():
        x = images[torch.randint(0, len(images), (batch,))].float() / 255.0
        x = x.contiguous(memory_format=torch.channels_last)
        x = torch.bernoulli(x) if args.binarize else x
        opt.zero_grad(set_to_none=True)
        peer.loss_fn(net, x).backward()
        opt.step()

    for _ in range(20):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("target", help="an experiment (vae_jax) or conv / mlp / resnet (--torch)")
    p.add_argument("--torch", action="store_true", help="profile the PyTorch peer")
    p.add_argument("--steps", type=int, default=200)
    args, overrides = p.parse_known_args()
    if args.torch:
        profile_torch(args.target, args.steps)
    else:
        profile_jax(args.target, args.steps, overrides)


if __name__ == "__main__":
    main()
