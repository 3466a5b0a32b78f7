"""Stride-2 "SAME" convolutions and transposed convolutions, three ways with the same math.

``native``: ``lax.conv_general_dilated`` / ``lax.conv_transpose``, as ``nn.Conv`` and
``nn.ConvTranspose`` compute them. Best on GPU and TPU.

``space_to_depth`` (the CPU's choice for layers with several channels on the image side): every
input-dilated convolution, which XLA:CPU runs as a
naive loop, is rewritten as a stride-1 "VALID" convolution, which it sends to Eigen. A stride-2
transposed convolution computes its four output phases (sub-pixel convolution) as 4x the
channels with a ``ceil(k/2) x ceil(k/2)`` kernel and interleaves them (depth to space); its
kernel gradient goes through the same form. The input gradient of a strided conv is such a
transposed conv (with the flipped, in/out-swapped kernel) and the input gradient of a transposed
conv is a strided conv, which Eigen handles natively; custom VJPs route them so.
:func:`conv_space_to_depth` (a strided conv over 2x2 blocks) is the same idea for the forward
conv, kept for tests and measurements: on XLA:CPU the native strided conv was as fast.

``im2col``: one matrix product over the image's k x k windows (a strided conv: the windows of
its input times the kernel; a transposed conv: the product first, then its k x k columns added
into the output, col2im); custom VJPs make each gradient a window gather or col2im and one
product. Its intermediate holds k*k values per image-side channel, so it pays only where that
side is thin: a grayscale image (measured in docs/cpu_speed.md).

:func:`resolve` picks one per layer. All take images ``[B, H, W, C]`` (H, W even for the
space-to-depth forms) and kernels ``[k, k, C, O]`` laid out as ``nn.Conv`` /
``nn.ConvTranspose`` (``transpose_kernel=False``) store them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

DIMENSIONS = ("NHWC", "HWIO", "NHWC")
IMPLS = ("auto", "native", "space_to_depth", "im2col")
# auto on CPU: im2col for a layer whose image side (a conv's input, a transposed conv's output)
# has at most this many channels, space_to_depth otherwise.
IM2COL_MAX_CHANNELS = 1


def conv_native(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``nn.Conv(strides=2, padding='SAME')`` without bias."""
    return lax.conv_general_dilated(x, kernel, (2, 2), "SAME", dimension_numbers=DIMENSIONS)


def conv_transpose_native(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``nn.ConvTranspose(strides=2, padding='SAME')`` without bias."""
    return lax.conv_transpose(x, kernel, (2, 2), "SAME", dimension_numbers=DIMENSIONS)


def _conv_taps(k: int) -> np.ndarray:
    """``taps[u, p]``: the kernel tap a stride-2 conv applies to block offset ``u``, phase
    ``p`` of its (padded) input, or ``k`` (a zero tap) where there is none."""
    taps = np.full(((k + 1) // 2, 2), k)
    for t in range(k):
        taps[t // 2, t % 2] = t
    return taps


def _same_padding(size: int, k: int) -> int:
    """The low padding of a stride-2 SAME conv over ``size`` pixels."""
    return max((-(-size // 2) - 1) * 2 + k - size, 0) // 2


def _transpose_pad(k: int) -> int:
    """``lax.conv_transpose``'s SAME padding for stride 2 and kernel size ``k``."""
    return k - 1 if k < 3 else -(-k // 2)


def _transpose_taps(k: int) -> tuple[np.ndarray, int, int]:
    """``(taps[u, a], lo, hi)`` for output phase ``a`` of a stride-2 SAME transposed conv.

    ``lax.conv_transpose`` computes ``y[o] = sum_t x[(o + t - pad)/2] w[t]`` over the ``t``
    that make the index an integer, with ``pad = ceil(k/2)`` (``k - 1`` for k < 3). For
    ``o = 2r + a`` the input index is ``r + d`` with ``d = (a + t - pad)/2``; with the input
    padded by ``lo`` before and ``hi`` after, window offset ``u = d + lo`` holds tap ``taps[u, a]``.
    """
    pad = _transpose_pad(k)
    pairs = [(a, t, (a + t - pad) // 2) for a in (0, 1) for t in range(k) if (a + t - pad) % 2 == 0]
    d_min, d_max = min(d for *_, d in pairs), max(d for *_, d in pairs)
    taps = np.full((d_max - d_min + 1, 2), k)
    for a, t, d in pairs:
        taps[d - d_min, a] = t
    return taps, -d_min, d_max


def _gather_kernel(kernel: jax.Array, taps: np.ndarray) -> jax.Array:
    """``out[u, v, a, b, c, o] = kernel[taps[u, a], taps[v, b], c, o]`` (zero for tap ``k``)."""
    k = kernel.shape[0]
    padded = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))
    rows = taps[:, None, :, None]  # [u, 1, a, 1]
    cols = taps[None, :, None, :]  # [1, v, 1, b]
    assert kernel.shape[1] == k, "square kernels only"
    return padded[rows, cols]  # [u, v, a, b, C, O]


def conv_space_to_depth(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """:func:`conv_native` as a stride-1 VALID conv over 2x2 blocks of the padded input."""
    b, h, w, c = x.shape
    k, o = kernel.shape[0], kernel.shape[-1]
    taps = _conv_taps(k)
    m = len(taps)
    oh, ow = -(-h // 2), -(-w // 2)
    lo_h, lo_w = _same_padding(h, k), _same_padding(w, k)
    hp, wp = 2 * (oh + m - 1), 2 * (ow + m - 1)
    x = jnp.pad(x, ((0, 0), (lo_h, hp - h - lo_h), (lo_w, wp - w - lo_w), (0, 0)))
    blocks = x.reshape(b, hp // 2, 2, wp // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    blocks = blocks.reshape(b, hp // 2, wp // 2, 4 * c)
    kern = _gather_kernel(kernel, taps).reshape(m, m, 4 * c, o)
    return lax.conv_general_dilated(blocks, kern, (1, 1), "VALID", dimension_numbers=DIMENSIONS)


def conv_transpose_space_to_depth(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """:func:`conv_transpose_native` as a stride-1 VALID conv giving the four output phases as
    channels, interleaved into the 2x larger image (depth to space)."""
    b, h, w, c = x.shape
    o = kernel.shape[-1]
    taps, lo, hi = _transpose_taps(kernel.shape[0])
    m = len(taps)
    kern = _gather_kernel(kernel, taps)  # [u, v, a, b, C, O]
    kern = kern.transpose(0, 1, 4, 2, 3, 5).reshape(m, m, c, 4 * o)
    x = jnp.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
    y = lax.conv_general_dilated(x, kern, (1, 1), "VALID", dimension_numbers=DIMENSIONS)
    y = y.reshape(b, h, w, 2, 2, o).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(b, 2 * h, 2 * w, o)


def _flip_swap(kernel: jax.Array) -> jax.Array:
    """The kernel that maps a conv's output gradient back to its input (spatially flipped,
    in/out swapped): the input gradient of a stride-2 SAME conv with an odd kernel is the
    transposed conv with this kernel, and vice versa."""
    return jnp.flip(kernel, (0, 1)).swapaxes(2, 3)


def _looped_under_vmap(fn: Callable) -> Callable:
    """``fn`` whose ``jax.vmap`` is a loop over the mapped axis (unrolled: the sweep maps a few
    models) instead of JAX's batching rule. A conv with a batched kernel becomes a grouped conv,
    which XLA:CPU runs several times slower than one conv per model."""
    looped = jax.custom_batching.custom_vmap(fn)

    @looped.def_vmap
    def rule(axis_size, in_batched, *args):
        outs = [
            fn(*(a[i] if batched else a for a, batched in zip(args, in_batched, strict=True)))
            for i in range(axis_size)
        ]
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
        return stacked, jax.tree.map(lambda _: True, stacked)

    return looped


def _with_gradients(forward: Callable, input_grad: Callable, doc: str) -> Callable:
    """``forward(x, kernel)`` with a custom VJP: the input gradient is
    ``input_grad(g, flip_swap(kernel))`` and the kernel gradient is the autodiff one of
    ``forward`` (both stride-2 ops here are linear in the kernel). Under ``jax.vmap`` (models
    trained together, see :mod:`vae_jax.sweeps.runner`) both passes loop over the models."""

    def gradients(x, kernel, g):
        dx = input_grad(g, _flip_swap(kernel))
        dk = jax.vjp(lambda k: forward(x, k), kernel)[1](g)[0]
        return dx, dk

    primal, backward = _looped_under_vmap(forward), _looped_under_vmap(gradients)

    @jax.custom_vjp
    def op(x: jax.Array, kernel: jax.Array) -> jax.Array:
        return primal(x, kernel)

    def fwd(x, kernel):
        return primal(x, kernel), (x, kernel)

    def bwd(res, g):
        return backward(*res, g)

    op.defvjp(fwd, bwd)
    op.__doc__ = doc
    return op


conv_fast = _with_gradients(
    conv_native,
    conv_transpose_space_to_depth,
    """:func:`conv_native` whose input gradient (an input-dilated conv) is computed by
    :func:`conv_transpose_space_to_depth`; the forward and the kernel gradient stay native
    (strided, undilated convs are fast on XLA:CPU).""",
)

conv_transpose_fast = _with_gradients(
    conv_transpose_space_to_depth,
    conv_native,
    """:func:`conv_transpose_native` computed by :func:`conv_transpose_space_to_depth`, with
    its input gradient as a native strided conv and its kernel gradient through the
    space-to-depth form (the native one is a slow dilated conv on XLA:CPU).""",
)


Pair = tuple[int, int]  # (height, width) or (low padding along height, along width)


def _windows(x: jax.Array, k: int, lo: Pair, out_hw: Pair) -> jax.Array:
    """``[B, oh, ow, k, k, C]``: ``x[2i + u - lo[0], 2j + v - lo[1]]`` at window ``(i, j)``,
    tap ``(u, v)`` (zero outside the image): the k x k windows of a stride-2 conv."""
    (b, h, w, c), (oh, ow) = x.shape, out_hw
    hi_h, hi_w = max(2 * oh + k - 2 - lo[0] - h, 0), max(2 * ow + k - 2 - lo[1] - w, 0)
    x = jnp.pad(x, ((0, 0), (lo[0], hi_h), (lo[1], hi_w), (0, 0)))
    taps = [x[:, u : u + 2 * oh - 1 : 2, v : v + 2 * ow - 1 : 2] for u, v in np.ndindex(k, k)]
    return jnp.stack(taps, 3).reshape(b, oh, ow, k, k, c)


def _add_windows(cols: jax.Array, lo: Pair, out_hw: Pair) -> jax.Array:
    """The transpose of :func:`_windows`: each window's tap ``(u, v)`` added into the image at
    ``(2i + u - lo[0], 2j + v - lo[1])`` (col2im).

    Tap ``u`` lands on output phase ``(u - lo) % 2``, shifted by ``(u - lo) // 2`` windows: each
    of the four phases is a sum of shifted (padded or cropped) tap images, and the phases
    interleave into the output (depth to space)."""
    b, oh, ow, k, _, c = cols.shape
    half = (-(-out_hw[0] // 2), -(-out_hw[1] // 2))
    phases = [[jnp.zeros((b, *half, c), cols.dtype) for _ in range(2)] for _ in range(2)]
    for u in range(k):
        for v in range(k):
            (su, pu), (sv, pv) = divmod(u - lo[0], 2), divmod(v - lo[1], 2)
            config = [(0, 0, 0), (su, half[0] - oh - su, 0), (sv, half[1] - ow - sv, 0), (0, 0, 0)]
            tap = lax.pad(cols[:, :, :, u, v], jnp.zeros((), cols.dtype), config)
            phases[pu][pv] = phases[pu][pv] + tap
    rows = [jnp.stack(row, 3) for row in phases]  # [B, H/2, W/2, 2 (pv), C]
    out = jnp.stack(rows, 2).reshape(b, 2 * half[0], 2 * half[1], c)  # [B, H/2, 2, W/2, 2, C]
    return out[:, : out_hw[0], : out_hw[1]]


def _matmul(a: jax.Array, b: jax.Array, contract_a: int, contract_b: int) -> jax.Array:
    """``a`` times ``b`` over ``a``'s last ``contract_a`` axes and ``b``'s first
    ``contract_b`` (flattened)."""
    lead, rest = a.shape[: a.ndim - contract_a], b.shape[contract_b:]
    flat = jnp.dot(a.reshape(-1, math.prod(a.shape[len(lead) :])), b.reshape(-1, math.prod(rest)))
    return flat.reshape(*lead, *rest)


def _outer(a: jax.Array, g: jax.Array) -> jax.Array:
    """``sum over b, i, j of a[b, i, j, ...] g[b, i, j, ...]``: a kernel's gradient."""
    flat = jnp.dot(a.reshape(-1, math.prod(a.shape[3:])).T, g.reshape(-1, math.prod(g.shape[3:])))
    return flat.reshape(*a.shape[3:], *g.shape[3:])


@jax.custom_vjp
def conv_im2col(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """:func:`conv_native` as one matrix product of the input's k x k windows with the kernel;
    both gradients are such products too (a window gather or col2im and one product each)."""
    return _conv_im2col_fwd(x, kernel)[0]


def _conv_im2col_fwd(x, kernel):
    k, (_, h, w, _) = kernel.shape[0], x.shape
    lo = (_same_padding(h, k), _same_padding(w, k))
    windows = _windows(x, k, lo, (-(-h // 2), -(-w // 2)))
    return _matmul(windows, kernel, 3, 3), (windows, kernel, (h, w))


def _conv_im2col_bwd(res, g):
    windows, kernel, (h, w) = res
    k = kernel.shape[0]
    cols = _matmul(g, kernel.transpose(3, 0, 1, 2), 1, 1)  # [B, oh, ow, k, k, C]
    lo = (_same_padding(h, k), _same_padding(w, k))
    return _add_windows(cols, lo, (h, w)), _outer(windows, g)


conv_im2col.defvjp(_conv_im2col_fwd, _conv_im2col_bwd)


@jax.custom_vjp
def conv_transpose_col2im(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """:func:`conv_transpose_native` as one matrix product giving each input pixel's k x k
    output columns, added into the 2x larger image (col2im); its gradients are a window gather
    of the output gradient and one product each.

    ``lax.conv_transpose`` sends input pixel ``i`` through tap ``t`` to output
    ``2i + pad - t`` (``pad``: :func:`_transpose_pad`); with the kernel flipped,
    ``s = k - 1 - t``, that is output ``2i + s - lo``, ``lo = k - 1 - pad``: the windows of
    :func:`_windows`."""
    return _conv_transpose_col2im_fwd(x, kernel)[0]


def _transpose_lo(k: int) -> Pair:
    """The low padding of :func:`_windows` for the flipped kernel of a transposed conv."""
    lo = k - 1 - _transpose_pad(k)
    return lo, lo


def _conv_transpose_col2im_fwd(x, kernel):
    flipped = jnp.flip(kernel, (0, 1)).transpose(2, 0, 1, 3)  # [C, k, k, O]
    cols = _matmul(x, flipped, 1, 1)  # [B, h, w, k, k, O]
    out_hw = (2 * x.shape[1], 2 * x.shape[2])
    return _add_windows(cols, _transpose_lo(kernel.shape[0]), out_hw), (x, flipped)


def _conv_transpose_col2im_bwd(res, g):
    x, flipped = res
    k = flipped.shape[1]
    windows = _windows(g, k, _transpose_lo(k), x.shape[1:3])  # [B, h, w, k, k, O]
    dx = _matmul(windows, flipped.transpose(1, 2, 3, 0), 3, 3)
    d_flipped = _outer(x, windows)  # [C, k, k, O]
    return dx, jnp.flip(d_flipped.transpose(1, 2, 0, 3), (0, 1))


conv_transpose_col2im.defvjp(_conv_transpose_col2im_fwd, _conv_transpose_col2im_bwd)


def resolve(impl: str, image_channels: int, platform: str | None = None) -> str:
    """The implementation a stride-2 layer uses: ``impl`` itself, or for ``auto`` ``native``
    off the CPU and, on the CPU, ``im2col`` when the layer's image side has at most
    :data:`IM2COL_MAX_CHANNELS` channels, ``space_to_depth`` otherwise."""
    if impl not in IMPLS:
        raise ValueError(f"conv implementation {impl!r}: use one of {', '.join(IMPLS)}")
    if impl != "auto":
        return impl
    if (platform or jax.default_backend()) != "cpu":
        return "native"
    return "im2col" if image_channels <= IM2COL_MAX_CHANNELS else "space_to_depth"


def conv_fns(impl: str) -> tuple[Callable, Callable]:
    """``(conv, conv_transpose)`` of a resolved implementation name."""
    return {
        "native": (conv_native, conv_transpose_native),
        "space_to_depth": (conv_fast, conv_transpose_fast),
        "im2col": (conv_im2col, conv_transpose_col2im),
    }[impl]
