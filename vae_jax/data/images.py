"""uint8 image arrays: the :class:`Dataset`, ``.npz`` files of the user's own, pixel ranges,
and the checks made before anything is trained on them.

Images are kept as uint8 ``[N, H, W, C]``: grayscale intensities 0..255, or 0/255 once
binarized. The model sees ``x = images / 255`` (floats in [0, 1]), and with dynamic
binarization a fresh Bernoulli(x) sample per training step (see :mod:`vae_jax.core.pixels`).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from vae_jax.errors import DataError


class Dataset(NamedTuple):
    """Host arrays of one dataset. Images uint8 [N, H, W, C]; labels int32 [N]."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.train_images.shape[1:])


def load_arrays(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(train_images, train_labels, test_images, test_labels)`` of a ``.npz`` file holding
    ``train_images`` and ``test_images`` ([N, H, W] or [N, H, W, C]; uint8 0..255 or 0/1, or
    floats in [0, 1]) and optionally ``train_labels`` and ``test_labels`` (ints, one per image;
    zeros if absent). The file is only read."""
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise DataError(f"data.name={path!r}: no such .npz file")
    try:
        with zipfile.ZipFile(path) as z:
            names = {Path(n).stem for n in z.namelist()}
            sizes = [
                _npy_nbytes(z, f"{k}.npy") for k in ("train_images", "test_images") if k in names
            ]
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    missing = {"train_images", "test_images"} - names
    if missing:
        raise DataError(
            f"{path} has no {' or '.join(sorted(missing))} array (it has "
            f"{', '.join(sorted(names)) or 'none'}); expected train_images, test_images and "
            "optionally train_labels, test_labels"
        )
    check_fits_in_memory(sum(sizes), path)
    arrays = {}
    with np.load(path, allow_pickle=False) as f:
        for key in f.files:
            try:
                arrays[key] = f[key]
            except ValueError:  # numpy will not unpickle: an array of Python objects
                raise DataError(
                    f"{path}: {key} is an array of Python objects; save numeric arrays (uint8, "
                    "or floats in [0, 1]), e.g. np.stack(images).astype(np.uint8)"
                ) from None
    out = []
    for split in ("train", "test"):
        images = as_uint8(arrays[f"{split}_images"], f"{path}: {split}_images")
        labels = arrays.get(f"{split}_labels", np.zeros(len(images), np.int32))
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(
                f"{path}: {split}_labels are {labels.dtype} of shape {labels.shape}; expected "
                f"one integer per image, shape ({len(images)},)"
            )
        out += [images, labels.astype(np.int32)]
    return out[0], out[1], out[2], out[3]


def _npy_nbytes(z: zipfile.ZipFile, member: str) -> int:
    """The size of an array in a .npz, from its header alone."""
    with z.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    return int(np.prod(shape)) * np.dtype(dtype).itemsize


_KINDS = {"c": "complex numbers", "U": "strings", "S": "bytes", "O": "Python objects",
          "M": "dates", "m": "time spans", "V": "records"}  # fmt: skip


def as_uint8(images: np.ndarray, where: str) -> np.ndarray:
    """Images as uint8 ``[N, H, W, C]``, 0..255: grayscale or color intensities as they are,
    0/1 data (binarized, any dtype) scaled to 0/255, floats in [0, 1] rounded to 1/255 steps.
    Anything else is a :class:`DataError` naming ``where``."""
    images = np.asarray(images)
    if images.dtype.kind not in "biuf":  # bool, int, uint, float
        raise DataError(
            f"{where}: images are {images.dtype} ({_KINDS.get(images.dtype.kind, 'not numbers')}); "
            "expected integers 0..255 (or 0/1), or floats in [0, 1]"
        )
    shape = images.shape
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or min(images.shape, default=0) == 0 or images.shape[-1] not in (1, 3):
        raise DataError(
            f"{where}: images of shape {shape}; expected [N, H, W] or [N, H, W, C] with "
            "N, H, W >= 1 and C = 1 (grayscale) or 3 (RGB)"
        )
    if images.dtype == np.bool_:
        return images.astype(np.uint8) * 255
    low, high = (float(images.min()), float(images.max())) if images.size else (0.0, 0.0)
    integer = np.issubdtype(images.dtype, np.integer)
    if not (np.isfinite(low) and np.isfinite(high)) or low < 0 or high > (255 if integer else 1):
        raise DataError(
            f"{where}: pixel values range from {low:g} to {high:g}; expected integers 0..255 "
            "(or 0/1) or floats in [0, 1]"
        )
    if integer:
        return images.astype(np.uint8) * (255 if high <= 1 else 1)
    return np.round(images.astype(np.float64) * 255).astype(np.uint8)


def check_fits_in_memory(nbytes: int, where: str) -> None:
    """Refuse a dataset whose uint8 images (held twice: on the host and on the device) would
    not fit in this machine's available memory."""
    available = _available_memory_bytes()
    if available is not None and 2 * nbytes > available:
        raise DataError(
            f"{where}: its images need {nbytes / 2**30:.1f} GiB as uint8, twice over (host and "
            f"device), but {available / 2**30:.1f} GiB of memory are available. Use "
            "data.train_size / data.test_size, or a smaller dataset"
        )


def _available_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


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


def check_image_shape(shape: tuple[int, ...], trained_on: tuple[int, ...], what: str) -> None:
    """Refuse images of ``shape`` (H, W, C) where ``what`` (a run) was trained on others."""
    if tuple(shape) != tuple(trained_on):
        raise DataError(
            f"images are {tuple(shape)}; {what} takes {tuple(trained_on)}, the shape it was "
            "trained on"
        )
