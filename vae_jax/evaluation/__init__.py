"""Everything done with a trained run: test-set bounds (ELBO, IWAE), latent statistics, and
``make eval``."""
