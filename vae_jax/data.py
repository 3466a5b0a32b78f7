"""Image datasets from TFDS, decoded once into a verified uint8 cache; subsets and binarization.

Images are kept as uint8 ``[N, H, W, C]``: grayscale intensities 0..255, or 0/255 once
binarized. The model sees ``x = images / 255`` (floats in [0, 1]), and with dynamic
binarization a fresh Bernoulli(x) sample per training step (see :mod:`vae_jax.core.pixels`).

Data are read with ``tfds.data_source`` from a prepared TFDS data dir (no TensorFlow, no
download). Decoding 60k PNGs takes ~15 s, so the decoded arrays are cached in
``$VAE_JAX_CACHE_DIR`` (default ``~/.cache/vae_jax``) under a name that holds a hash of the
source files, with a checksum that is verified on every load; a stale or damaged cache entry is
rebuilt. Nothing is ever written into the TFDS data dir.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from pathlib import Path
from typing import NamedTuple

import jax
import ml_collections
import numpy as np

from vae_jax.atomic_io import atomic_write
from vae_jax.core import pixels
from vae_jax.errors import DataError

CACHE_ENV = "VAE_JAX_CACHE_DIR"
_DECODE_CHUNK = 5000


class Dataset(NamedTuple):
    """Host arrays of one dataset. Images uint8 [N, H, W, C]; labels int32 [N]."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.train_images.shape[1:])


# ---------------------------------------------------------------------------------------------
# TFDS


def resolve_data_dir(data_config: ml_collections.ConfigDict) -> str:
    """config.data.tfds_data_dir, else $TFDS_DATA_DIR, else TFDS's default."""
    if data_config.tfds_data_dir:
        return os.path.expanduser(data_config.tfds_data_dir)
    if os.environ.get("TFDS_DATA_DIR"):
        return os.path.expanduser(os.environ["TFDS_DATA_DIR"])
    return os.path.expanduser("~/tensorflow_datasets")


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "vae_jax"


def _not_prepared_message(name: str, data_dir: str) -> str:
    return (
        f"TFDS dataset {name!r} is not prepared in {data_dir!r}.\n"
        "Point at a data dir where it is prepared:\n"
        "    export TFDS_DATA_DIR=/path/to/tensorflow_datasets"
        "   (or --config.data.tfds_data_dir=...)\n"
        "  (in this project's checkout: TFDS_DATA_DIR=../shared/data/tensorflow_datasets)\n"
        "or prepare it there (downloads it; installs TensorFlow into .venv-data, not .venv):\n"
        f"    make data DATASET={name} TFDS_DATA_DIR={data_dir}"
    )


def _builder(name: str, data_dir: str):
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"unknown TFDS dataset {name!r} (config data.name)") from None
    if not builder.is_prepared():
        raise DataError(_not_prepared_message(name, data_dir))
    return builder


def _fingerprint(builder, split: str) -> str:
    h = hashlib.sha256(f"{builder.name}:{builder.version}:{split}".encode())
    for path in builder.info.splits[split].filepaths:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def _checksum(images: np.ndarray, labels: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(images).data)
    h.update(np.ascontiguousarray(labels).data)
    return h.hexdigest()


def _read_cache(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            images, labels, checksum = f["images"], f["labels"], str(f["checksum"])
    except FileNotFoundError:
        return None
    except Exception as e:  # a truncated or foreign file
        print(f"warning: unreadable data cache {path} ({e}); rebuilding it", file=sys.stderr)
        return None
    if _checksum(images, labels) != checksum:
        print(f"warning: data cache {path} fails its checksum; rebuilding it", file=sys.stderr)
        return None
    return images, labels


def _decode(name: str, split: str, data_dir: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow_datasets as tfds
    from tqdm import tqdm

    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    images, labels = [], []
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # "OpenCV is not installed" is noise here
    try:
        desc = f"decoding {name}/{split} (once; cached afterwards)"
        for start in tqdm(range(0, n, _DECODE_CHUNK), desc=desc, unit="chunk", leave=False):
            for record in source.__getitems__(list(range(start, min(n, start + _DECODE_CHUNK)))):
                images.append(np.asarray(record["image"]))
                labels.append(int(record.get("label", 0)))
    finally:
        absl_logger.setLevel(level)
    return np.stack(images), np.asarray(labels, np.int32)


def load_split(name: str, split: str, data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """All images (uint8 [N, H, W, C]) and labels (int32 [N]) of a prepared TFDS split."""
    builder = _builder(name, data_dir)
    if split not in builder.info.splits:
        raise DataError(
            f"TFDS dataset {name!r} in {data_dir!r} has no split {split!r}; "
            f"it has {', '.join(builder.info.splits)}"
        )
    if "image" not in builder.info.features:
        raise DataError(
            f"TFDS dataset {name!r} in {data_dir!r} has no 'image' feature (it has "
            f"{', '.join(builder.info.features)}); expected an image dataset like mnist"
        )
    key = _fingerprint(builder, split)[:20]
    path = cache_dir() / f"{name}-{builder.version}-{split}-{key}.npz"
    cached = _read_cache(path)
    if cached is not None:
        return cached
    images, labels = _decode(name, split, data_dir, builder.info.splits[split].num_examples)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise DataError(
            f"TFDS dataset {name!r} in {data_dir!r}: images are {images.dtype} of shape "
            f"{images.shape[1:]}; expected uint8 images of shape (H, W, C)"
        )
    try:
        checksum = _checksum(images, labels)
        atomic_write(path, lambda f: np.savez(f, images=images, labels=labels, checksum=checksum))
    except OSError as e:
        print(f"warning: could not write data cache {path} ({e})", file=sys.stderr)
    return images, labels


# ---------------------------------------------------------------------------------------------
# Subsets and binarization


def static_binarize(images: np.ndarray, seed: int, split: str) -> np.ndarray:
    """One fixed Bernoulli sample of ``images`` (uint8 0/255), keyed by (seed, split)."""
    key = jax.random.fold_in(jax.random.key(seed), 0 if split == "train" else 1)
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
        return np.asarray(pixels.binarize_u8(key, images))


def load_dataset(data_config: ml_collections.ConfigDict) -> Dataset:
    """Train and test splits as ``config.data`` asks: subset, binarized or not.

    - ``binarize='none'``: grayscale intensities.
    - ``'static'``: train and test binarized once with keys from ``binarize_seed``.
    - ``'dynamic'``: train stays grayscale here and is binarized afresh at every step by the
      train step; test is binarized once with the fixed key of ``binarize_seed``.

    Binarization is applied to the whole split before taking the ``train_size``/``test_size``
    prefix, so image i gets the same bits whatever the subset size.
    """
    data_dir = resolve_data_dir(data_config)
    name = data_config.name
    train_x, train_y = load_split(name, "train", data_dir)
    test_x, test_y = load_split(name, "test", data_dir)
    if data_config.binarize == "static":
        train_x = static_binarize(train_x, data_config.binarize_seed, "train")
    if data_config.binarize in ("static", "dynamic"):
        test_x = static_binarize(test_x, data_config.binarize_seed, "test")
    n_train = data_config.train_size or len(train_x)
    n_test = data_config.test_size or len(test_x)
    for what, n, have in (("train", n_train, len(train_x)), ("test", n_test, len(test_x))):
        if n > have:
            raise DataError(
                f"data.{what}_size={n} but {name!r}/{what} in {data_dir!r} has {have} images"
            )
    return Dataset(train_x[:n_train], train_y[:n_train], test_x[:n_test], test_y[:n_test])


def check_dataset(dataset: Dataset, batch_size: int) -> None:
    """Raise :class:`DataError` unless ``dataset`` holds what training expects: uint8 images
    of one shape (H, W, C) in both splits, one int label per image, a full batch to train on."""
    parts = {
        "train_images": dataset.train_images,
        "test_images": dataset.test_images,
        "train_labels": dataset.train_labels,
        "test_labels": dataset.test_labels,
    }
    for key, array in parts.items():
        if not isinstance(array, np.ndarray):
            raise DataError(f"dataset.{key} is a {type(array).__name__}; expected a numpy array")
    for key in ("train_images", "test_images"):
        images = parts[key]
        if images.ndim != 4 or images.dtype != np.uint8 or len(images) == 0:
            raise DataError(
                f"dataset.{key} holds {len(images)} {images.dtype} array(s) of shape "
                f"{images.shape[1:]}; expected uint8 images [N >= 1, H, W, C] (0..255; 0/255 "
                "when binarized)"
            )
    if dataset.train_images.shape[1:] != dataset.test_images.shape[1:]:
        raise DataError(
            f"train images are {dataset.train_images.shape[1:]} but test images are "
            f"{dataset.test_images.shape[1:]}; expected one shape"
        )
    for split in ("train", "test"):
        images, labels = parts[f"{split}_images"], parts[f"{split}_labels"]
        if labels.shape != (len(images),):
            raise DataError(
                f"dataset.{split}_labels has shape {labels.shape}; expected ({len(images)},)"
            )
    if len(dataset.train_images) < batch_size:
        raise DataError(
            f"{len(dataset.train_images)} training images are fewer than one batch "
            f"(train.batch_size={batch_size})"
        )
