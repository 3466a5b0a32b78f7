"""Reading a prepared TFDS split with ``tfds.data_source`` (no TensorFlow, no download),
decoded once into a verified uint8 cache.

Decoding 60k PNGs takes ~15 s, so the decoded arrays are cached in ``$VAE_JAX_CACHE_DIR``
(default ``~/.cache/vae_jax``) under a name that holds a hash of the source files, with a
checksum that is verified on every load; a stale or damaged cache entry is rebuilt. Nothing is
ever written into the TFDS data dir.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sys
from pathlib import Path

import numpy as np

from vae_jax.atomic_io import atomic_write
from vae_jax.data.images import check_fits_in_memory
from vae_jax.data.tfds_prepare import cache_dir, not_prepared_message, prepare_tfds
from vae_jax.errors import DataError

_DECODE_CHUNK = 5000


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
            prepare_tfds(name, data_dir)
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
    """All images (uint8 [N, H, W, C]) and labels (int32 [N]) of a TFDS split; ``prepare``
    prepares the dataset first if it is not (:func:`prepare_tfds`). A damaged data dir
    (garbage metadata, missing or truncated record files) is a :class:`DataError`."""
    try:
        return _load_split(name, split, data_dir, prepare)
    except DataError:
        raise
    except Exception as e:  # TFDS and array_record raise all sorts on damaged files
        text = (str(e).strip().splitlines() or [""])[0][:200]
        raise DataError(
            f"TFDS dataset {name!r} in {data_dir!r} cannot be read ({type(e).__name__}: {text}); "
            f"its files are damaged or incomplete. Prepare it again (python -m vae_jax data "
            f"{name} --data-dir DIR into a fresh dir), or point TFDS_DATA_DIR at a good copy"
        ) from None


def _load_split(
    name: str, split: str, data_dir: str, prepare: bool
) -> tuple[np.ndarray, np.ndarray]:
    builder = _builder(name, data_dir, prepare)
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
        n = builder.info.splits[split].num_examples
        check_fits_in_memory(n * int(np.prod(shape)), f"TFDS dataset {name!r}/{split}")
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
