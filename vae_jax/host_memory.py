"""glibc's allocator set to keep the memory a step frees, for the step after it to reuse.

XLA:CPU allocates each step's buffers anew and frees them at its end. With glibc's defaults,
large blocks are unmapped or trimmed away on free and mapped again, page by page, on the next
step: measured on the ResNet VAE's training step (``python -m vae_jax.bench --experiments
bmnist_resnet``), ~19,000 page faults per step and a sixth of the CPU time in the kernel. One
arena, a high mmap threshold and no trimming make the process keep its peak memory instead
(docs/cpu_speed.md). Numbers do not change: this moves where buffers live, not what is computed.
"""

from __future__ import annotations

import ctypes
import sys

# mallopt's parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -2, -3, -8
SETTINGS = {
    M_ARENA_MAX: 1,  # one heap for every thread, so a block freed by one is reused by all
    M_MMAP_THRESHOLD: 1 << 30,  # blocks up to 1 GiB come from the heap, not fresh mappings
    M_TRIM_THRESHOLD: 1 << 30,  # free memory at the heap's top stays mapped
    M_TOP_PAD: 1 << 28,  # the heap grows 256 MiB at a time
}


def keep_freed_memory() -> bool:
    """Apply :data:`SETTINGS` to this process's glibc allocator (call before JAX starts its
    threads); False, changing nothing, where the C library is not glibc (macOS, musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only; musl has mallopt as a no-op
    except (OSError, AttributeError):
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in SETTINGS.items())
