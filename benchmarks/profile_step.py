"""Where one training step's time goes, op by op: vae_jax's compiled step under
``jax.profiler`` and (``--torch``) the same model in PyTorch eager under ``torch.profiler``.

    .venv/bin/python benchmarks/profile_step.py mnist_z20            # vae_jax
    .venv-torch/bin/python benchmarks/profile_step.py --torch conv   # the PyTorch peer
    .venv/bin/python benchmarks/profile_step.py --layers resnet       # each conv layer, vae_jax
    .venv-torch/bin/python benchmarks/profile_step.py --layers --torch resnet   # ... PyTorch

vae_jax: the real step (``vae_jax.bench``'s trainer) runs ``--steps`` steps under the profiler;
each XLA op's time is summed and grouped by the model part its HLO metadata names (encoder
Conv_0, decoder ConvTranspose_1, ...), forward or backward, and the optimizer. The profiler's
per-op overhead slows the step (compare its images/s with ``make bench``), so read the shares,
not the absolute times. PyTorch: self CPU time per aten op over the same number of steps.

XLA:CPU's profiler times a convolution that Eigen runs only up to its launch, so the op table
misses the convs; ``--layers conv`` / ``--layers resnet`` times each conv layer of the seed
(batch 100) or of the ResNet VAE (bmnist_resnet's shapes, batch 128) instead, forward and
forward plus backward, as vae_jax computes it (``nn.Conv`` for the 3x3 convs, ``conv_impl=auto``
for the strided ones; 8 copies a compiled call, as in a step) or, with ``--torch``, as the
PyTorch peer does (channels-last, 2 threads).
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


COPIES = 8  # vae_jax: copies of a layer per compiled call (times are per copy)
# The conv layers of the seed (mnist_z20, batch 100) and of bmnist_resnet (batch 128): (name,
# input [H, W, C], out channels, kernel, kind: stride-2 "down" / transposed "up" / stride-1
# "same", input gradient needed, count in one step).
SEED_LAYERS = [
    ("Conv_0 5x5/2 1->16", (28, 28, 1), 16, 5, "down", False, 1),
    ("Conv_1 5x5/2 16->32", (14, 14, 16), 32, 5, "down", True, 1),
    ("ConvTranspose_0 5x5/2T 32->16", (7, 7, 32), 16, 5, "up", True, 1),
    ("ConvTranspose_1 5x5/2T 16->1", (14, 14, 16), 1, 5, "up", True, 1),
]
RESNET_LAYERS = [
    ("Down_0 5x5/2 1->32", (28, 28, 1), 32, 5, "down", False, 1),
    ("Down_1 5x5/2 32->64", (14, 14, 32), 64, 5, "down", True, 1),
    ("Up_0 5x5/2T 64->32", (7, 7, 64), 32, 5, "up", True, 1),
    ("Up_1 5x5/2T 32->1", (14, 14, 32), 1, 5, "up", True, 1),
    ("ResBlock 3x3 32->32 at 14x14", (14, 14, 32), 32, 3, "same", True, 4),
    ("ResBlock 3x3 64->64 at 7x7", (7, 7, 64), 64, 3, "same", True, 4),
]


def _best_ms(fn, reps: int = 7, n: int = 30) -> float:
    """The fastest of ``reps`` means over ``n`` calls of ``fn`` (which blocks), in ms."""
    import time

    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - start) / n * 1e3)
    return min(times)


def _layer_fns_jax(shape, out, k, kind, input_grad, batch):
    """The layer's forward, and its forward and backward, each :data:`COPIES` times (on inputs
    ``x + i``, summed) in one compiled call, as the step runs many layers in one call: one call
    per layer pays XLA:CPU's per-call costs (thread wake-ups, buffers) ~1-2.5 ms more."""
    import flax.linen as nn
    import jax

    from vae_jax.core.models.conv import Stride2Conv
    from vae_jax.parallel import compile_fast

    if kind == "same":
        layer = nn.Conv(out, (k, k), padding="SAME")
    else:
        layer = Stride2Conv(out, kind == "up", "auto", k)
    x = jax.random.normal(jax.random.key(0), (batch, *shape))
    params = layer.init(jax.random.key(1), x)
    g = jax.random.normal(jax.random.key(2), layer.apply(params, x).shape)

    def forward(params, x):
        return sum(layer.apply(params, x + i) for i in range(COPIES))

    def one_backward(params, x):  # the output too, or XLA drops the forward pass
        if input_grad:
            y, vjp = jax.vjp(layer.apply, params, x)
        else:
            y, vjp = jax.vjp(lambda p: layer.apply(p, x), params)
        return y, vjp(g)

    def backward(params, x):
        outs = [one_backward(params, x + i) for i in range(COPIES)]
        return jax.tree.map(lambda *a: sum(a[1:], a[0]), *outs)

    fwd = compile_fast(jax.jit(forward).lower(params, x))
    bwd = compile_fast(jax.jit(backward).lower(params, x))
    return (lambda: jax.block_until_ready(fwd(params, x)),
            lambda: jax.block_until_ready(bwd(params, x)))  # fmt: skip


def _layer_fns_torch(shape, out, k, kind, input_grad, batch):
    import torch

    h, w, c = shape
    if kind == "same":
        layer = torch.nn.Conv2d(c, out, k, padding=k // 2)
    elif kind == "down":
        layer = torch.nn.Conv2d(c, out, k, 2, padding=k // 2)
    else:
        layer = torch.nn.ConvTranspose2d(c, out, k, 2, k // 2, output_padding=1, bias=False)
    layer = layer.to(memory_format=torch.channels_last)
    x = torch.randn(batch, c, h, w).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(input_grad)
    g = torch.randn_like(layer(x)).contiguous(memory_format=torch.channels_last)

    def forward():
        with torch.no_grad():
            layer(x)

    def backward():
        layer.zero_grad(set_to_none=True)
        layer(x).backward(g)

    return forward, backward


def profile_layers(model: str, use_torch: bool) -> None:
    models = {"conv": (SEED_LAYERS, 100), "resnet": (RESNET_LAYERS, 128)}
    if model not in models:
        raise SystemExit(f"--layers knows the conv layers of: {', '.join(models)}")
    if use_torch:
        import torch

        torch.set_num_threads(2)
    (layers, batch), fns = models[model], _layer_fns_torch if use_torch else _layer_fns_jax
    per = 1 if use_torch else COPIES
    print(f"{'PyTorch (channels-last)' if use_torch else f'vae_jax ({per} copies a call)'}, "
          f"batch {batch}, ms per layer (fastest of 7 means of 30 calls)\n")  # fmt: skip
    print("| layer | forward | forward + backward | in one step (x count) |\n|---|---|---|---|")
    total = 0.0
    for name, shape, out, k, kind, input_grad, count in layers:
        forward, backward = fns(shape, out, k, kind, input_grad, batch)
        f, b = _best_ms(forward) / per, _best_ms(backward) / per
        total += count * b
        print(f"| {name} | {f:.2f} | {b:.2f} | {count * b:.1f} (x{count}) |")
    print(f"| all conv layers of one step | | | {total:.1f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    targets = "an experiment (vae_jax); conv / mlp / resnet (--torch); conv / resnet (--layers)"
    p.add_argument("target", help=targets)
    p.add_argument("--torch", action="store_true", help="profile the PyTorch peer")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--layers", action="store_true", help="time each conv layer (conv, resnet)")
    args, overrides = p.parse_known_args()
    if args.layers:
        profile_layers(args.target, args.torch)
    elif args.torch:
        profile_torch(args.target, args.steps)
    else:
        profile_jax(args.target, args.steps, overrides)


if __name__ == "__main__":
    main()
