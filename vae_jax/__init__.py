"""vae_jax: variational autoencoders in JAX/Flax (Kingma & Welling 2014; Frans 2016)."""

__version__ = "0.1.0"
