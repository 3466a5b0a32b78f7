"""A dataset as ``config.data`` asks for it: a TFDS image dataset or a ``.npz`` of the user's
own, binarized or not, its first N images; uint8 throughout (:mod:`vae_jax.data.images`)."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from vae_jax.core import pixels
from vae_jax.data.images import Dataset, as_uint8, load_arrays
from vae_jax.data.tfds_prepare import auto_prepare, resolve_data_dir
from vae_jax.data.tfds_reader import load_split
from vae_jax.errors import DataError


def static_binarize(images: np.ndarray, seed: int, split: str) -> np.ndarray:
    """One fixed Bernoulli sample of ``images`` (uint8 0/255), keyed by (seed, split)."""
    key = jax.random.fold_in(jax.random.key(seed), 0 if split == "train" else 1)
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
        return np.asarray(pixels.binarize_u8(key, images))


def load_dataset(data_config: ml_collections.ConfigDict) -> Dataset:
    """Train and test splits as ``config.data`` asks: subset, binarized or not.

    ``data.name``: a TFDS image dataset with train and test splits, or a path to a ``.npz``
    file of the user's own (:func:`load_arrays`). Images become uint8 (:func:`as_uint8`).

    - ``binarize='none'``: the intensities as they are (grayscale, or 0/1 data).
    - ``'static'``: train and test binarized once with keys from ``binarize_seed``.
    - ``'dynamic'``: train stays grayscale here and is binarized afresh at every step by the
      train step; test is binarized once with the fixed key of ``binarize_seed``.

    Binarization is applied to the whole split before taking the ``train_size``/``test_size``
    prefix, so image i gets the same bits whatever the subset size.
    """
    name = data_config.name
    if name.endswith(".npz"):
        where = name
        train_x, train_y, test_x, test_y = load_arrays(name)
    else:
        data_dir, prepare = resolve_data_dir(data_config), auto_prepare(data_config)
        where = f"{name!r} in {data_dir!r}"
        train_x, train_y = load_split(name, "train", data_dir, prepare)
        test_x, test_y = load_split(name, "test", data_dir, prepare)
        train_x, test_x = as_uint8(train_x, f"{name}/train"), as_uint8(test_x, f"{name}/test")
    if data_config.binarize == "static":
        train_x = static_binarize(train_x, data_config.binarize_seed, "train")
    if data_config.binarize in ("static", "dynamic"):
        test_x = static_binarize(test_x, data_config.binarize_seed, "test")
    n_train = data_config.train_size or len(train_x)
    n_test = data_config.test_size or len(test_x)
    for what, n, have in (("train", n_train, len(train_x)), ("test", n_test, len(test_x))):
        if n > have:
            raise DataError(
                f"data.{what}_size={n} but the {what} split of {where} has {have} images"
            )
    return Dataset(train_x[:n_train], train_y[:n_train], test_x[:n_test], test_y[:n_test])
