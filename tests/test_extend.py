"""A model of the user's own (README, "Your own model"), in one file outside vae_jax/, trains end
to end through make train and is evaluated again later; its own key is validated like any."""

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
    import os

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
            "model.arch='deep' is invalid; expected one of conv, mlp, resnet, conv_deep",
        ),
    ):
        bad = _make(
            "train", "EXP=deep_random", f"WORKDIR={tmp_path / 'bad'}", f"ARGS={arg}", env=env
        )
        assert bad.returncode != 0 and message in bad.stderr, bad.stderr
        assert not (tmp_path / "bad").exists()
