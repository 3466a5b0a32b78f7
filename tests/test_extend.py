"""A model of the user's own (README, "Your own model"), in one file outside vae_jax/, trains end
to end through make train and is evaluated again later; its own key is validated like any."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT


def readme_block(section: str) -> str:
    """The first ```python block of README section ``section``."""
    text = (ROOT / "README.md").read_text().split(f"## {section}\n", 1)[1]
    return text.split("```python\n", 1)[1].split("```", 1)[0]


EXPERIMENT = '''
"""README's conv_deep on random 8x8 images.

    make train EXP=deep_random     # seconds; test -ELBO about 45 nats
"""
from vae_jax.config.keys import base_config


def get_config():
    config = base_config()
    config.model.arch = "conv_deep"
    config.model.deep_width = 8
    config.model.latent_dim = 3
    config.data.name = {data!r}
    config.train.batch_size = 16
    config.train.num_epochs = 2
    config.eval.iwae_k = 4
    config.eval.batch_size = 32
    return config
'''


def _make(*args: str, env: dict) -> subprocess.CompletedProcess:
    venv = Path(sys.executable).parent.parent
    return subprocess.run(
        ["make", "-s", *args, f"VENV={venv}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_a_model_in_a_file_of_its_own_trains_through_make_train(tmp_path):

    experiments = tmp_path / "experiments"
    (experiments / "models").mkdir(parents=True)
    (experiments / "models" / "conv_deep.py").write_text(readme_block("Your own model"))
    rng = np.random.default_rng(0)
    data = tmp_path / "random.npz"
    np.savez(data, train_images=rng.integers(0, 2, (64, 8, 8), dtype=np.uint8),
             test_images=rng.integers(0, 2, (32, 8, 8), dtype=np.uint8))  # fmt: skip
    (experiments / "deep_random.py").write_text(textwrap.dedent(EXPERIMENT.format(data=str(data))))
    env = {**os.environ, "VAE_JAX_EXPERIMENTS_DIR": str(experiments)}
    workdir = tmp_path / "run"

    out = _make("train", "EXP=deep_random", f"WORKDIR={workdir}", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "epoch  2/2" in out.stdout and (workdir / "eval.json").exists()
    assert '"deep_width": 8' in (workdir / "config.json").read_text()
    again = _make("eval", "EXP=deep_random", f"WORKDIR={workdir}", env=env)  # loads the model
    assert again.returncode == 0, again.stderr[-3000:]

    for arg, message in (
        (
            "--config.model.deep_width=0",
            "model.deep_width=0 is invalid; expected an integer from 1",
        ),
        ("--config.model.deep_widht=3", "did you mean 'model.deep_width'?"),
        (
            "--config.model.arch=deep",
            "model.arch='deep' is invalid; expected one of conv, conv_deep, ladder, mlp, resnet",
        ),
    ):
        bad = _make(
            "train", "EXP=deep_random", f"WORKDIR={tmp_path / 'bad'}", f"ARGS={arg}", env=env
        )
        assert bad.returncode != 0 and message in bad.stderr, bad.stderr
        assert not (tmp_path / "bad").exists()


def readme_blocks(section: str) -> list[str]:
    """Every ```python block of README section ``section``."""
    text = (ROOT / "README.md").read_text().split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]


DEAD_PRIOR = '''
import flax.linen as nn
import jax
import jax.numpy as jnp
from vae_jax.core.latents import standard_log_prob
from vae_jax.core.models import prior


class ForgetfulPrior(nn.Module):
    gaussian = None

    @nn.compact
    def log_prob(self, z, encoder):
        self.param("shift", nn.initializers.zeros_init(), z.shape[-1:])  # made, never used
        return standard_log_prob(z)

    def sample(self, key, n, dim, encoder):
        return jax.random.normal(key, (n, dim))


@prior("forgetful")
def forgetful(latent_dim, image_shape):
    """A prior with a parameter its log-density forgets."""
    return ForgetfulPrior()
'''


def test_the_readme_prior_posterior_and_hierarchy_train_and_load(tmp_path):
    """Each README example file, one new file in experiments/models/, trains through the real
    command, evaluates, and loads back; a parameter no loss reaches is named at the start."""
    from conftest import run_cli

    models = tmp_path / "experiments" / "models"
    models.mkdir(parents=True)
    for block in readme_blocks("Your own prior / posterior / hierarchy"):
        name = block.split("\n", 1)[0].removeprefix("# experiments/models/")
        (models / name).write_text(block)
    (models / "forgetful_prior.py").write_text(DEAD_PRIOR)
    assert sorted(p.name for p in models.iterdir()) == [
        "forgetful_prior.py", "laplace_prior.py", "planar_flow.py", "top_down_mlp.py"]  # fmt: skip
    rng = np.random.default_rng(0)
    data = tmp_path / "random.npz"
    np.savez(data, train_images=rng.integers(0, 2, (64, 8, 8), dtype=np.uint8),
             test_images=rng.integers(0, 2, (32, 8, 8), dtype=np.uint8))  # fmt: skip
    env = {"VAE_JAX_EXPERIMENTS_DIR": str(tmp_path / "experiments"), "TQDM_DISABLE": "1"}
    small = [f"--config.data.name={data}", "--config.train.batch_size=16",
             "--config.train.num_epochs=1", "--config.eval.batch_size=32",
             "--config.eval.iwae_k=4", "--config.model.latent_dim=3"]  # fmt: skip
    cases = {
        "laplace": ["--config.model.arch=mlp", "--config.model.prior=laplace"],
        "planar": ["--config.model.arch=mlp", "--config.model.posterior=planar"],
        "top_down": ["--config.model.arch=top_down_mlp"],
        "forgetful": ["--config.model.arch=mlp", "--config.model.prior=forgetful"],
    }
    for name, args in cases.items():
        run = tmp_path / name
        config = ROOT / "experiments" / "mnist_z20.py"
        out = run_cli("train", f"--config={config}", "--workdir", str(run), *small, *args, env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        warned = [line for line in out.stderr.splitlines() if "got no gradient" in line]
        if name == "forgetful":
            assert len(warned) == 1 and "prior/shift" in warned[0], out.stderr[-3000:]
        else:
            assert warned == [], out.stderr[-3000:]
        result = json.loads((run / "eval.json").read_text())
        assert np.isfinite(result["iwae_nll_nats"]) and "traversals.png" in result["figures"]
        assert result["test_neg_elbo_nats"] == pytest.approx(
            result["distortion_nats"] + result["rate_nats"], rel=1e-5
        )
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, vae_jax; r = vae_jax.load_run(sys.argv[1]); "
         "print(len(r.encode(r.sample(0, 2))), r.decode(r.encode(r.sample(0, 2))[0][0]).shape)",
         str(tmp_path / "top_down")],
        capture_output=True, text=True, env={**os.environ, **env},
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.split() == ["2", "(2,", "8,", "8,", "1)"]
