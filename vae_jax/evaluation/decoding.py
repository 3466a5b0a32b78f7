"""A trained model's views for pictures and notebooks, each jitted once: decoder means of
top-layer latents, reconstructions, each layer's posterior, samples of the model's own prior.
Decoder means are pixel intensities in (0, 1), ``[N, H, W, C]``."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax

from vae_jax.core.latents import Gaussian, zero_noise
from vae_jax.core.objectives import decoder_mean, run_model
from vae_jax.core.pixels import to_float


def decoder_means(model: nn.Module) -> Callable[[dict, jax.Array], jax.Array]:
    """``(params, z) ->`` p(x | z)'s means for top-layer latents ``z [N, *top shape]`` (the
    lower layers of a hierarchy at their prior means)."""
    return jax.jit(lambda p, z: decoder_mean(model.apply({"params": p}, z, method="decode_top")))


def reconstructions(model: nn.Module) -> Callable[[dict, jax.Array], jax.Array]:
    """``(params, images_u8) ->`` p(x | z)'s means at each image's noise-free posterior: every
    layer at its mean (a flow applied to it)."""

    @jax.jit
    def reconstruct(params, images_u8):
        return decoder_mean(run_model(model, params, to_float(images_u8), zero_noise, 1.0).logits)

    return reconstruct


def posteriors(model: nn.Module) -> Callable[[dict, jax.Array], tuple[Gaussian, ...]]:
    """``(params, x) ->`` each layer's q(z|x) along the noise-free path (top first; before
    noise_scale) of float images ``x`` in [0, 1]."""
    return jax.jit(lambda p, x: model.apply({"params": p}, x, method="posterior"))


def prior_samples(model: nn.Module, n: int) -> Callable[[dict, jax.Array], jax.Array]:
    """``(params, key) ->`` the means of p(x | z) at ``n`` latents drawn from the model's own
    prior (a hierarchy's top-down); the same key draws the same latents at every epoch."""

    def sample(params, key):
        _, logits = model.apply({"params": params}, key, n, method="sample_prior")
        return decoder_mean(logits)

    return jax.jit(sample)


def component_samples(model: nn.Module, per_component: int) -> Callable | None:
    """For a mixture prior (one with ``sample_components``): ``(params, key) ->`` p(x | z)'s
    means at ``per_component`` latents of each component, ``[K, per_component, H, W, C]``;
    None for other priors."""
    if not hasattr(getattr(model, "prior", None), "sample_components"):
        return None

    def draw(module: nn.Module, key: jax.Array) -> jax.Array:
        z = module.prior.sample_components(key, per_component, module.encoder)
        means = decoder_mean(module.decoder(z.reshape(-1, z.shape[-1])))
        return means.reshape(z.shape[0], per_component, *means.shape[1:])

    return jax.jit(lambda params, key: model.apply({"params": params}, key, method=draw))
