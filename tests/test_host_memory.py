"""vae_jax keeps the memory an XLA:CPU step frees (vae_jax/host_memory.py): a step after the
first ones touches no fresh page, where glibc's defaults fault thousands of pages per step."""

import subprocess
import sys

import pytest

STEPS = """
import resource, sys
if sys.argv[1] == "keep":
    import vae_jax  # applies host_memory.keep_freed_memory on import
import jax, jax.numpy as jnp
w = jnp.ones((3, 3, 32, 32))
conv = lambda x: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
    dimension_numbers=("NHWC", "HWIO", "NHWC"))
step = jax.jit(jax.grad(lambda x: jnp.tanh(conv(x)).sum()))
x = jnp.ones((64, 28, 28, 32))
for _ in range(3): step(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20): step(x).block_until_ready()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def _faults_per_step(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return float(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_step_reuses_the_memory_the_last_one_freed():
    from vae_jax.host_memory import keep_freed_memory

    assert keep_freed_memory()
    kept, default = _faults_per_step("keep"), _faults_per_step("default")
    assert kept < 50, (kept, default)  # measured: 0 kept, ~4,900 with glibc's defaults
