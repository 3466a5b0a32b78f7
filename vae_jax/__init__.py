"""vae_jax: variational autoencoders in JAX/Flax (Kingma & Welling 2014; Frans 2016).

From Python (README, "Use from Python")::

    import vae_jax

    config = vae_jax.get_config("mnist_z20")      # an experiment's name, or a path to one
    history = vae_jax.train(config, "runs/z20")   # resumes; evaluates when done
    run = vae_jax.load_run("runs/z20")            # .encode, .decode, .sample, .elbo, .iwae
    vae_jax.evaluate("runs/z20", iwae_k=5000)     # eval.json, figures

The names are imported on first use, so ``import vae_jax`` is cheap.
"""

import importlib

__version__ = "0.2.0"
_EXPORTS = {
    "get_config": ("vae_jax.config.experiments", "load_experiment"),
    "train": ("vae_jax.training.run", "train_and_evaluate"),
    "evaluate": ("vae_jax.evaluation.run", "evaluate"),
    "load_run": ("vae_jax.evaluation.trained_run", "load_run"),
    "TrainedRun": ("vae_jax.evaluation.trained_run", "TrainedRun"),
    "load_data": ("vae_jax.data.datasets", "load_dataset"),
    "Dataset": ("vae_jax.data.images", "Dataset"),
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vae_jax' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    return getattr(importlib.import_module(module), attribute)


def __dir__() -> list[str]:
    return sorted(__all__)
