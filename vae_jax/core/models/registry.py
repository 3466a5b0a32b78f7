"""The registries that ``model.arch``, ``model.prior`` and ``model.posterior`` name, and
:func:`make_model`, which builds the model a config describes.

Each entry is a function registered with its own config keys (``model.<key>``), each with its
default, constraint and meaning; a file in ``experiments/models/`` can register one without
touching this package (README, "Your own model", "Your own prior / posterior / hierarchy"):

- ``@architecture(name, keys)``: ``build(image_shape, latent_dim, **keys) -> model``: a
  :class:`~vae_jax.core.models.vae.VAE` (one latent; any prior and posterior fit it) or a model
  of its own hierarchy (the interface of :mod:`vae_jax.core.latents`);
- ``@prior(name, keys)``: ``build(latent_dim, image_shape, **keys) -> module`` with
  ``log_prob(z, encoder)``, ``sample(key, n, dim, encoder)`` and ``gaussian`` (the prior as a
  Gaussian where KL(q || p) has a closed form, else None); a prior that calls ``encoder`` (the
  VampPrior) shares q's parameters, which ``build_parts`` finds and refuses DReG for;
- ``@posterior(name, keys)``: ``build(latent_dim, **keys) -> module or None``, a flow
  ``(z, context) -> (z, log_det)`` after the Gaussian (None: q stays the Gaussian); log q is
  known only at the flow's own samples, so DReG (log q at given latents) is refused with one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax.core.models.vae import VAE
from vae_jax.core.settings import Setting


class Component(NamedTuple):
    build: Callable[..., Any]
    settings: dict[str, Setting]  # its own keys, model.<key> in the config
    doc: str


ARCHITECTURES: dict[str, Component] = {}
PRIORS: dict[str, Component] = {}
POSTERIORS: dict[str, Component] = {}
_TABLES = {"arch": ARCHITECTURES, "prior": PRIORS, "posterior": POSTERIORS}


def _same(a: Setting, b: Setting) -> bool:
    """Two declarations of one key agree (their checks are equal by what they accept)."""
    return (a.default, a.check.expected, a.doc, a.resumable) == (
        b.default, b.check.expected, b.doc, b.resumable)  # fmt: skip


def _registrar(kind: str) -> Callable:
    table = _TABLES[kind]

    def register(name: str, settings: dict[str, Setting] | None = None) -> Callable:
        def add(build: Callable) -> Callable:
            def origin(fn: Callable) -> str:
                return f"{fn.__module__}.{fn.__qualname__}"

            if name in table and origin(table[name].build) != origin(build):
                raise ValueError(
                    f"model.{kind}={name!r} is already registered by "
                    f"{origin(table[name].build)}; give {origin(build)} another name"
                )
            for key, setting in (settings or {}).items():
                for other_kind, other_table in _TABLES.items():
                    for other_name, other in other_table.items():
                        same_entry = (other_kind, other_name) == (kind, name)
                        theirs = other.settings.get(key)
                        if theirs and not same_entry and not _same(theirs, setting):
                            raise ValueError(
                                f"model.{key} is declared by model.{other_kind}={other_name!r} "
                                f"with another default or meaning; give {name!r}'s key another "
                                "name"
                            )
            table[name] = Component(build, dict(settings or {}), inspect.getdoc(build) or "")
            return build

        return add

    return register


architecture = _registrar("arch")
prior = _registrar("prior")
posterior = _registrar("posterior")


def _own(component: Component, settings: dict) -> dict:
    return {k: settings[k] for k in component.settings}


def make_model(
    image_shape: Sequence[int],
    arch: str,
    latent_dim: int,
    prior: str = "standard",
    posterior: str = "gaussian",
    **settings,
) -> nn.Module:
    """The model of architecture ``arch`` for images of ``image_shape`` (H, W, C), with the
    prior and the posterior named. ``settings``: the keys of ``config.model``; each component
    takes its own and leaves the others. ``ValueError`` for what cannot be built."""
    image_shape = tuple(image_shape)
    spec = ARCHITECTURES[arch]
    model = spec.build(image_shape, latent_dim, **_own(spec, settings))
    if isinstance(model, VAE):
        p, q = PRIORS[prior], POSTERIORS[posterior]
        return model.clone(
            latent_dim=latent_dim,
            prior=p.build(latent_dim, image_shape, **_own(p, settings)),
            flow=q.build(latent_dim, **_own(q, settings)),
        )
    if (prior, posterior) != ("standard", "gaussian"):
        one_latent = [
            name
            for name, other in ARCHITECTURES.items()
            if _builds_vae(other, image_shape, latent_dim, settings)
        ]
        raise ValueError(
            f"model.arch={arch!r} has a hierarchy of its own priors and posteriors: it takes "
            f"model.prior='standard' and model.posterior='gaussian' (got {prior!r}, "
            f"{posterior!r}); a learned prior or a flow fits the one-latent architectures: "
            + ", ".join(one_latent)
        )
    return model


def _builds_vae(component: Component, image_shape: tuple, latent_dim: int, settings) -> bool:
    """Whether an architecture builds a one-latent VAE (building a module computes nothing)."""
    try:
        built = component.build(image_shape, latent_dim, **_own(component, settings))
    except (ValueError, KeyError):
        return False
    return isinstance(built, VAE)


def init_params(model: nn.Module, key: jax.Array, image_shape: Sequence[int]) -> dict:
    """Parameters of ``model`` from ``key`` (a batch of one zero image traces every layer)."""
    return model.init(key, jnp.zeros((1, *image_shape), jnp.float32))["params"]


@prior("standard")
def standard_prior(latent_dim: int, image_shape: tuple[int, ...]) -> nn.Module:
    """N(0, I), the seed's: its KL in closed form."""
    from vae_jax.core.models.vae import StandardNormal

    return StandardNormal()


@posterior("gaussian")
def gaussian_posterior(latent_dim: int) -> None:
    """The encoder's diagonal Gaussian itself, the seed's."""
    return None
