"""One CPU device vs. four forced CPU devices: the same loss curve and the same evaluation
(IWAE noise is a function of image and sample, not of the device) within float tolerance."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TESTS, worker_env


def _run(devices: int, workdir: Path) -> dict:
    env = worker_env(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
    )
    out = subprocess.run(
        [sys.executable, str(TESTS / "multidevice_worker.py"), str(workdir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_one_vs_four_devices(tmp_path):
    one, four = _run(1, tmp_path / "one"), _run(4, tmp_path / "four")
    assert (one["devices"], four["devices"]) == (1, 4)
    assert four["noise_shards_differ"]
    for key in ("train_loss_nats", "train_recon_nats", "train_kl_nats", "test_neg_elbo_nats"):
        a = [r[key] for r in one["history"]]
        b = [r[key] for r in four["history"]]
        np.testing.assert_allclose(b, a, rtol=1e-5, err_msg=key)
    np.testing.assert_allclose(four["param_sums"], one["param_sums"], rtol=1e-4, atol=1e-4)
    assert four["history"][0]["devices"] == 4
    for key in ("test_neg_elbo_nats", "rate_nats", "iwae_nll_nats", "recon_mse_per_pixel_64"):
        np.testing.assert_allclose(four["eval"][key], one["eval"][key], rtol=1e-4, err_msg=key)
    assert four["eval"]["active_units"] == one["eval"]["active_units"]
