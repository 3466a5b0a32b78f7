"""Experiment discovery, command-line overrides (ml_collections.config_flags) and validation."""

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vae_jax.config import keys as config_keys
from vae_jax.config.experiments import (
    available_experiments,
    experiment_path,
    load_experiment,
    override,
    override_keys,
)
from vae_jax.config.keys import base_config, to_json_dict, validate
from vae_jax.config.saved import diff, from_saved, to_saved
from vae_jax.core.settings import flatten
from vae_jax.errors import ConfigError


def test_every_experiment_loads_and_validates():
    names = available_experiments()
    assert {"mnist_z20", "mnist_mlp_z20"} <= set(names)
    for name in names:
        config = load_experiment(name)
        validate(config)


def test_every_experiment_docstring_has_command_time_and_metrics():
    for name in available_experiments():
        text = experiment_path(name).read_text()
        doc = text.split('"""')[1]
        assert f"make train EXP={name}" in doc, name
        assert "min" in doc and "nats" in doc, name


def test_mnist_z20_is_the_seed_setup():
    c = load_experiment("mnist_z20")
    assert (c.model.arch, c.model.latent_dim, c.model.likelihood, c.model.noise_scale) == (
        "conv",
        20,
        "bernoulli",
        1.0,
    )
    assert (c.train.batch_size, c.train.learning_rate, c.train.num_epochs) == (100, 1e-3, 10)
    assert c.data.binarize == "none"


def test_an_experiment_by_name_or_by_path_is_the_same_config():
    path = experiment_path("mnist_z20")
    assert load_experiment(str(path)) == load_experiment("mnist_z20")


def test_unknown_experiment_lists_the_available_ones():
    with pytest.raises(ConfigError, match=r"unknown experiment 'mnist_z2O'.*mnist_z20"):
        load_experiment("mnist_z2O")


def test_override_keys_both_forms():
    assert override_keys(["--config.model.latent_dim=10", "--config.seed", "3"]) == [
        "model.latent_dim",
        "seed",
    ]
    for bad in (["--lr=3"], ["3"], ["--config.seed=1", "3"]):
        with pytest.raises(ConfigError, match="unrecognized argument"):
            override_keys(bad)


def test_overrides_are_typed_by_the_default():
    c = override(
        base_config(),
        [
            "--config.model.latent_dim=10",
            "--config.model.noise_scale=2",
            "--config.train.learning_rate",
            "3e-4",
            "--config.model.mlp_hidden_dims=200,200",
            "--config.data.binarize=dynamic",
            "--config.model.arch=mlp",
            "--config.eval.after_training=false",
        ],
    )
    assert c.model.latent_dim == 10 and isinstance(c.model.latent_dim, int)
    assert c.model.noise_scale == 2.0 and isinstance(c.model.noise_scale, float)
    assert c.train.learning_rate == 3e-4
    assert c.model.mlp_hidden_dims == (200, 200)
    assert c.eval.after_training is False
    assert override(
        base_config(), ["--config.model.mlp_hidden_dims=[300]"]
    ).model.mlp_hidden_dims == (300,)
    assert base_config().model.latent_dim == 20  # the input is not modified


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "model.latnt_dim",
            "10",
            r"unknown config key 'model.latnt_dim' "
            r"\(did you mean 'model.latent_dim'\?\).*valid keys",
        ),
        ("model.latent_dim", "0", r"model.latent_dim=0 is invalid; expected an integer from 1 "),
        ("model.latent_dim", "-3", r"expected an integer from 1 to 2147483647"),
        ("seed", str(2**40), r"seed=1099511627776 is invalid; expected an integer from 0 to"),
        ("checkpoint.every_seconds", "-1", r"expected a finite number >= 0"),
        ("model.latent_dim", "2.5", r"model.latent_dim='2.5' is invalid; expected an integer"),
        ("model.noise_scale", "0", r"expected a finite number > 0"),
        ("model.noise_scale", "nan", r"expected a finite number > 0"),
        ("model.noise_scale", "abc", r"model.noise_scale='abc' is invalid; expected a finite"),
        ("model.arch", "rnn", r"expected one of conv, ladder, mlp, resnet, two_layer"),
        ("model.likelihood", "poisson", r"expected one of bernoulli, gaussian"),
        ("data.binarize", "yes", r"expected one of none, dynamic, static"),
        ("eval.after_training", "maybe", r"expected true or false"),
        ("model.mlp_hidden_dims", "500,-1", r"non-empty list of positive integers"),
        ("model.mlp_hidden_dims", "a,b", r"non-empty list of positive integers"),
        ("data.train_size", "50", r"smaller than train.batch_size=100"),
        ("model", "3", r"unknown config key 'model'"),
    ],
)
def test_bad_overrides_name_the_problem(key, value, message):
    with pytest.raises(ConfigError, match=message):
        override(base_config(), [f"--config.{key}={value}"])


def test_every_setting_has_a_valid_default_and_a_doc():
    validate(base_config())
    for key, setting in config_keys.settings().items():
        assert setting.check.accepts(setting.default) and setting.doc, key


def test_diff_ignores_nothing_but_reports_changes():
    saved = to_json_dict(base_config())
    changed = override(
        base_config(), ["--config.model.latent_dim=5", "--config.train.num_epochs=3"]
    )
    assert diff(saved, changed) == {
        "model.latent_dim": (20, 5),
        "train.num_epochs": (10, 3),
    }


KEYS = sorted(flatten(base_config()))
VALUES = st.one_of(
    st.text(max_size=12),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(
        ["true", "false", "none", "dynamic", "mlp", "1e400", "-0", "500,500", "[]", "()"]
    ),
)


@settings(max_examples=400, deadline=None)
@given(
    overrides=st.lists(
        st.tuples(st.one_of(st.sampled_from(KEYS), st.text(max_size=20)), VALUES), max_size=4
    )
)
def test_random_overrides_apply_or_fail_clearly(overrides):
    """Any keys and values: a validated config, or a ConfigError; never another exception."""
    try:
        config = override(base_config(), [f"--config.{k}={v}" for k, v in overrides])
    except ConfigError as e:
        assert str(e)
        return
    validate(config)
    assert from_saved(to_saved(config), "test")[0] == config


@settings(max_examples=200, deadline=None)
@given(
    args=st.lists(
        st.one_of(
            st.text(max_size=30),
            st.sampled_from(["--config.seed", "--config.model.arch=conv", "--config."]),
        ),
        max_size=5,
    )
)
def test_random_command_lines_apply_or_fail_clearly(args):
    with contextlib.suppress(ConfigError):
        override(base_config(), args)


def test_a_broken_model_file_is_one_line(tmp_path, monkeypatch):

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "typo.py").write_text("from vae_jax.core.models import architectur\n")
    monkeypatch.setenv("VAE_JAX_EXPERIMENTS_DIR", str(tmp_path))
    with pytest.raises(ConfigError) as e:
        config_keys.settings()
    message = str(e.value)
    assert message.startswith(f"cannot import the model file {tmp_path / 'models' / 'typo.py'}: ")
    assert "ImportError: cannot import name 'architectur'" in message and "\n" not in message
