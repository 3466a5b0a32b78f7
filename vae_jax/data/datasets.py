"""A dataset as ``config.data`` asks for it: a TFDS image dataset or a ``.npz`` of the user's
own (:mod:`vae_jax.data.images`), binarized or not, its first N images; uint8 throughout.

TFDS data are read with ``tfds.data_source`` from a prepared data dir (no TensorFlow, no
download). Decoding 60k PNGs takes ~15 s, so the decoded arrays are cached in
``$VAE_JAX_CACHE_DIR`` (default ``~/.cache/vae_jax``) under a name that holds a hash of the
source files, with a checksum that is verified on every load; a stale or damaged cache entry is
rebuilt. Nothing is ever written into the TFDS data dir. A dataset missing from TFDS's default
data dir is prepared by itself (:mod:`vae_jax.data.tfds_prepare`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np

from vae_jax.atomic_io import atomic_write
from vae_jax.core import pixels
from vae_jax.data.images import Dataset, as_uint8, check_fits_in_memory, load_arrays
from vae_jax.data.tfds_prepare import not_prepared_message, prepare_tfds
from vae_jax.errors import DataError

CACHE_ENV = "VAE_JAX_CACHE_DIR"
AUTO_PREPARE_ENV = "VAE_JAX_AUTO_PREPARE"
_DECODE_CHUNK = 5000
SPLITS = ("train", "test")  # the two splits a dataset must have


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
        (train_x, train_y), (test_x, test_y) = load_splits(name, SPLITS, data_dir, prepare)
        train_x, test_x = as_uint8(train_x, f"{name}/train"), as_uint8(test_x, f"{name}/test")
    train_x, test_x = binarize(train_x, test_x, data_config.binarize, data_config.binarize_seed)
    n_train = data_config.train_size or len(train_x)
    n_test = data_config.test_size or len(test_x)
    for what, n, have in (("train", n_train, len(train_x)), ("test", n_test, len(test_x))):
        if n > have:
            raise DataError(
                f"data.{what}_size={n} but the {what} split of {where} has {have} images"
            )
    return Dataset(train_x[:n_train], train_y[:n_train], test_x[:n_test], test_y[:n_test])


def binarize(
    train: np.ndarray, test: np.ndarray, mode: str, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The splits as ``data.binarize`` asks (:func:`load_dataset`): ``'static'`` both, ``'dynamic'``
    the test split alone, each one fixed Bernoulli sample (uint8 0/255) keyed by (seed, split)."""

    def sample(images: np.ndarray, split: int) -> np.ndarray:
        key = jax.random.fold_in(jax.random.key(seed), split)
        return np.asarray(pixels.binarize_u8(key, images))

    with jax.default_device(jax.local_devices(backend="cpu")[0]):
        if mode == "static":
            train = sample(train, 0)
        if mode in ("static", "dynamic"):
            test = sample(test, 1)
    return train, test


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


def auto_prepare(data_config: ml_collections.ConfigDict) -> bool:
    """Prepare a missing TFDS dataset by itself only in TFDS's default data dir (nothing else
    was asked for) and unless ``$VAE_JAX_AUTO_PREPARE=0``."""
    default = not data_config.tfds_data_dir and not os.environ.get("TFDS_DATA_DIR")
    return default and os.environ.get(AUTO_PREPARE_ENV, "1") != "0"


# ---------------------------------------------------------------------------------------------
# Reading a prepared TFDS split


@contextlib.contextmanager
def _quiet_absl():
    """TFDS's absl warnings ("Variant folder ... has no dataset_info.json", "OpenCV is not
    installed") are noise here: each case gets its own message."""
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl_logger.setLevel(level)


def _builder(name: str, data_dir: str, prepare: bool = False):
    """The TFDS builder of a prepared dataset; ``prepare`` prepares it first if it is not."""
    import tensorflow_datasets as tfds

    try:
        with _quiet_absl():
            builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(
            f"unknown TFDS dataset {name!r} (config data.name); give a TFDS image dataset "
            "(mnist, fashion_mnist, kmnist, cifar10, binarized_mnist, ...) or a path to a .npz"
        ) from None
    with _quiet_absl():
        if not builder.is_prepared() and prepare:
            prepare_tfds(name, data_dir, cache_dir())
            builder = tfds.builder(name, data_dir=data_dir)
        prepared = builder.is_prepared()
    if not prepared:
        raise DataError(not_prepared_message(name, data_dir))
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
    with _quiet_absl():
        desc = f"decoding {name}/{split} (once; cached afterwards)"
        for start in tqdm(range(0, n, _DECODE_CHUNK), desc=desc, unit="chunk", leave=False):
            for record in source.__getitems__(list(range(start, min(n, start + _DECODE_CHUNK)))):
                images.append(np.asarray(record["image"]))
                labels.append(int(record.get("label", 0)))
    return np.stack(images), np.asarray(labels, np.int32)


def load_split(
    name: str, split: str, data_dir: str, prepare: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """All images (uint8 [N, H, W, C]) and labels (int32 [N]) of a TFDS split."""
    return load_splits(name, (split,), data_dir, prepare)[0]


def load_splits(
    name: str, splits: tuple[str, ...], data_dir: str, prepare: bool = False
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Images and labels of each TFDS split, as :func:`load_split`; ``prepare`` prepares the
    dataset first if it is not (:func:`prepare_tfds`). A damaged data dir (garbage metadata,
    missing or truncated record files) is a :class:`DataError`."""
    try:
        return _load_splits(name, splits, data_dir, prepare)
    except DataError:
        raise
    except Exception as e:  # TFDS and array_record raise all sorts on damaged files
        text = (str(e).strip().splitlines() or [""])[0][:200]
        raise DataError(
            f"TFDS dataset {name!r} in {data_dir!r} cannot be read ({type(e).__name__}: {text}); "
            f"its files are damaged or incomplete. Prepare it again (python -m vae_jax data "
            f"{name} --data-dir DIR into a fresh dir), or point TFDS_DATA_DIR at a good copy"
        ) from None


def _load_splits(
    name: str, splits: tuple[str, ...], data_dir: str, prepare: bool
) -> list[tuple[np.ndarray, np.ndarray]]:
    builder = _builder(name, data_dir, prepare)
    for split in splits:
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
    shape = builder.info.features["image"].shape
    if shape and None not in shape:
        n = sum(builder.info.splits[split].num_examples for split in splits)
        what = f"TFDS dataset {name!r}/{'+'.join(splits)}"
        check_fits_in_memory(n * int(np.prod(shape)), what)
    return [_read_or_decode(builder, name, split, data_dir) for split in splits]


def _read_or_decode(builder, name: str, split: str, data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """A split from the cache, or decoded from the prepared files and then cached."""
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
