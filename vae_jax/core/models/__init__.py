"""Models, pure Flax modules, found by name: the registries (:mod:`.registry`), the one-latent
:class:`VAE` (:mod:`.vae`), the encoders and decoders of the seed (:mod:`.conv`), of the MLPs
(:mod:`.mlp`) and of the ResNet (:mod:`.resnet`), two learned priors (:mod:`.mog_prior`,
:mod:`.vamp_prior`), a flow posterior (:mod:`.iaf`) and two hierarchies (:mod:`.two_layer`,
:mod:`.ladder`). Importing this package registers all of them."""

from vae_jax.core.models import iaf, ladder, mog_prior, two_layer, vamp_prior  # noqa: F401
from vae_jax.core.models.conv import ConvDecoder, ConvEncoder, Stride2Conv
from vae_jax.core.models.mlp import MLPDecoder, MLPEncoder
from vae_jax.core.models.registry import (
    ARCHITECTURES,
    POSTERIORS,
    PRIORS,
    architecture,
    init_params,
    make_model,
    posterior,
    prior,
)
from vae_jax.core.models.resnet import ResBlock
from vae_jax.core.models.vae import VAE, StandardNormal

__all__ = [
    "ARCHITECTURES", "POSTERIORS", "PRIORS", "VAE", "ConvDecoder", "ConvEncoder", "MLPDecoder",
    "MLPEncoder", "ResBlock", "StandardNormal", "Stride2Conv", "architecture", "init_params",
    "make_model", "posterior", "prior",
]  # fmt: skip
