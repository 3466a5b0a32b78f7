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

import contextlib
import hashlib
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import NamedTuple

import jax
import ml_collections
import numpy as np

from vae_jax.atomic_io import atomic_write
from vae_jax.core import pixels
from vae_jax.errors import DataError

CACHE_ENV = "VAE_JAX_CACHE_DIR"
AUTO_PREPARE_ENV = "VAE_JAX_AUTO_PREPARE"
PREPARE_PACKAGES = ("tensorflow-cpu", "tensorflow-datasets", "array-record", "pillow",
                    "importlib_resources")  # fmt: skip
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
        f"TFDS dataset {name!r} is not prepared in {data_dir!r}. Point at a data dir where it "
        "is prepared: export TFDS_DATA_DIR=/path/to/tensorflow_datasets (or "
        f"--config.data.tfds_data_dir=...), or prepare it there: "
        f"python -m vae_jax data {name} --data-dir {data_dir} (downloads it; TFDS needs "
        "TensorFlow for that, which goes into a separate environment, not this one)"
    )


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
        raise DataError(_not_prepared_message(name, data_dir))
    return builder


def auto_prepare(data_config: ml_collections.ConfigDict) -> bool:
    """Prepare a missing TFDS dataset by itself only in TFDS's default data dir (nothing else
    was asked for) and unless ``$VAE_JAX_AUTO_PREPARE=0``."""
    default = not data_config.tfds_data_dir and not os.environ.get("TFDS_DATA_DIR")
    return default and os.environ.get(AUTO_PREPARE_ENV, "1") != "0"


def prepare_tfds(name: str, data_dir: str) -> None:
    """Download and prepare TFDS dataset ``name`` in ``data_dir`` (array_record files).

    TFDS needs TensorFlow to prepare a dataset (not to read it): it is installed into its own
    environment, ``<cache>/tfds-prepare-venv``, and never enters this one. Needs internet."""
    venv = cache_dir() / "tfds-prepare-venv"
    python, ready = venv / "bin" / "python", venv / ".vae_jax-ready"
    print(f"TFDS dataset {name!r} is not prepared in {data_dir!r}: preparing it (once).")
    where = (name, data_dir)
    if not ready.exists():
        _run(
            "creating an environment for TensorFlow",
            [sys.executable, "-m", "venv", str(venv)],
            where,
        )
        install = [str(python), "-m", "pip", "install", "-q", *PREPARE_PACKAGES]
        _run(f"installing TensorFlow there ({venv}, ~2 GB, a few minutes)", install, where)
        ready.touch()
    script = (
        "import sys, tensorflow_datasets as tfds; b = tfds.builder(sys.argv[1], "
        "data_dir=sys.argv[2]); b.download_and_prepare(file_format='array_record')"
    )
    _run(f"downloading and preparing {name}", [str(python), "-c", script, name, data_dir], where)


def _run(what: str, command: list[str], where: tuple[str, str]) -> None:
    print(f"  {what} ...", flush=True)
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
        raise DataError(
            f"could not prepare TFDS dataset {where[0]!r} in {where[1]!r} ({last}); without "
            "internet that is expected. " + _not_prepared_message(*where)
        )


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


# ---------------------------------------------------------------------------------------------
# Subsets and binarization


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


# ---------------------------------------------------------------------------------------------
# Arrays of the user's own


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
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
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


def as_uint8(images: np.ndarray, where: str) -> np.ndarray:
    """Images as uint8 ``[N, H, W, C]``, 0..255: grayscale or color intensities as they are,
    0/1 data (binarized, any dtype) scaled to 0/255, floats in [0, 1] rounded to 1/255 steps.
    Anything else is a :class:`DataError` naming ``where``."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or len(images) == 0 or images.shape[-1] not in (1, 3):
        raise DataError(
            f"{where}: images of shape {images.shape}; expected [N, H, W] or [N, H, W, C] with "
            "N >= 1 and C = 1 (grayscale) or 3 (RGB)"
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
