"""Loading MNIST from the offline TFDS dir, the decoded-array cache, and binarization."""

import gzip
import hashlib
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax.config.keys import base_config
from vae_jax.core import pixels
from vae_jax.data import datasets
from vae_jax.data import images as image_arrays
from vae_jax.errors import DataError

# Label counts of the MNIST database (LeCun et al.), train and test.
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def test_mnist_from_tfds_matches_the_idx_files(mnist_dir):
    """Same images (as a multiset, paired with labels) as the raw IDX files; no TensorFlow."""
    for split, idx_prefix, counts in (
        ("train", "train", TRAIN_COUNTS),
        ("test", "t10k", TEST_COUNTS),
    ):
        images, labels = datasets.load_split("mnist", split, mnist_dir)
        assert images.shape == (len(labels), 28, 28, 1) and images.dtype == np.uint8
        assert labels.dtype == np.int32
        assert np.bincount(labels).tolist() == counts
        idx_dir = Path(mnist_dir).parent / "mnist-idx"
        if not idx_dir.is_dir():
            continue
        idx_images = _read_idx(idx_dir / f"{idx_prefix}-images-idx3-ubyte.gz")
        idx_labels = _read_idx(idx_dir / f"{idx_prefix}-labels-idx1-ubyte.gz")

        def keyed(imgs, labs):
            return sorted(
                hashlib.sha1(i.tobytes()).hexdigest() + str(lab)
                for i, lab in zip(imgs, labs, strict=True)
            )

        assert keyed(images[..., 0], labels) == keyed(idx_images, idx_labels)
    assert "tensorflow" not in sys.modules


def test_cache_is_used_and_damage_is_detected(mnist_dir, monkeypatch, capsys):
    images, labels = datasets.load_split("mnist", "test", mnist_dir)  # decodes, or the cache
    cached = list(datasets.cache_dir().glob("mnist-*-test-*.npz"))
    assert len(cached) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(datasets, "_decode", no_decoding)
    again, _ = datasets.load_split("mnist", "test", mnist_dir)
    np.testing.assert_array_equal(again, images)

    # Corrupt the cached arrays (keep the zip valid): the checksum must catch it.
    with np.load(cached[0]) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["images"] = arrays["images"].copy()
    arrays["images"][0, 0, 0, 0] ^= 1
    np.savez(cached[0], **arrays)
    monkeypatch.undo()
    rebuilt, rebuilt_labels = datasets.load_split("mnist", "test", mnist_dir)
    assert "fails its checksum" in capsys.readouterr().err
    np.testing.assert_array_equal(rebuilt, images)
    np.testing.assert_array_equal(rebuilt_labels, labels)

    cached[0].write_bytes(b"truncated")
    np.testing.assert_array_equal(datasets.load_split("mnist", "test", mnist_dir)[0], images)
    assert "unreadable data cache" in capsys.readouterr().err


def test_unprepared_data_dir_says_how_to_fix_it(tmp_path):
    with pytest.raises(DataError) as e:
        datasets.load_split("mnist", "train", str(tmp_path))
    message = str(e.value)
    assert f"'mnist' is not prepared in '{tmp_path}'" in message
    assert "export TFDS_DATA_DIR=" in message and "python -m vae_jax data mnist" in message
    assert "shared" not in message  # no path of this project's checkout
    assert not any(tmp_path.iterdir())  # nothing written into the data dir


def test_unknown_dataset_and_split(mnist_dir):
    with pytest.raises(DataError, match="unknown TFDS dataset 'mnistt'"):
        datasets.load_split("mnistt", "train", mnist_dir)
    with pytest.raises(DataError, match="has no split 'validation'; it has train, test"):
        datasets.load_split("mnist", "validation", mnist_dir)


def test_subsets_and_static_binarization(mnist_dir):
    config = base_config().data
    config.tfds_data_dir = mnist_dir
    full = datasets.load_dataset(config)
    config.train_size, config.test_size = 1000, 300
    small = datasets.load_dataset(config)
    np.testing.assert_array_equal(small.train_images, full.train_images[:1000])
    np.testing.assert_array_equal(small.test_labels, full.test_labels[:300])

    config.binarize = "static"
    binary = datasets.load_dataset(config)
    assert set(np.unique(binary.train_images)) == {0, 255}
    np.testing.assert_array_equal(binary.train_images, datasets.load_dataset(config).train_images)
    # The fraction of ones matches the mean intensity (a Bernoulli sample of it).
    assert binary.train_images.mean() / 255 == pytest.approx(
        small.train_images.mean() / 255, abs=0.005
    )
    # Image i's bits do not depend on the subset size.
    config.train_size = 500
    np.testing.assert_array_equal(
        datasets.load_dataset(config).train_images, binary.train_images[:500]
    )
    config.binarize_seed = 1
    assert not np.array_equal(datasets.load_dataset(config).train_images, binary.train_images[:500])

    config.binarize_seed, config.binarize = 0, "dynamic"
    dynamic = datasets.load_dataset(config)
    np.testing.assert_array_equal(dynamic.train_images, small.train_images[:500])  # stays grayscale
    np.testing.assert_array_equal(dynamic.test_images, binary.test_images)  # test: fixed bits


def test_dynamic_binarize_is_fresh_per_key_and_unbiased():
    x = jnp.full((64, 28, 28, 1), 0.3)
    a = pixels.dynamic_binarize(jax.random.key(0), x)
    b = pixels.dynamic_binarize(jax.random.key(1), x)
    assert set(np.unique(np.asarray(a)).tolist()) == {0.0, 1.0}
    assert not np.array_equal(a, b)
    assert float(a.mean()) == pytest.approx(0.3, abs=0.01)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d._replace(train_images=d.train_images.astype(np.float32)),
            r"dataset.train_images holds 64 float32 array\(s\) of shape \(28, 28, 1\); "
            r"expected uint8",
        ),
        (
            lambda d: d._replace(test_images=d.test_images[..., 0]),
            r"dataset.test_images holds 32 uint8 array\(s\) of shape \(28, 28\); "
            r"expected uint8 images",
        ),
        (
            lambda d: d._replace(test_images=np.zeros((32, 32, 32, 3), np.uint8)),
            r"train images are \(28, 28, 1\) but test images are \(32, 32, 3\)",
        ),
        (
            lambda d: d._replace(train_labels=d.train_labels[:10]),
            r"dataset.train_labels has shape \(10,\); expected \(64,\)",
        ),
        (
            lambda d: d._replace(train_images=d.train_images[:0], train_labels=d.train_labels[:0]),
            r"holds 0 uint8",
        ),
        (
            lambda d: d._replace(train_images=list(d.train_images)),
            r"is a list; expected a numpy array",
        ),
    ],
)
def test_malformed_custom_datasets_are_named(change, message):
    from conftest import synthetic_dataset

    with pytest.raises(DataError, match=message):
        image_arrays.check_dataset(change(synthetic_dataset(64, 32)), batch_size=32)


def test_custom_dataset_errors_come_before_anything_is_written(tmp_path):
    from conftest import small_config, synthetic_dataset

    from vae_jax.errors import ConfigError, DataError
    from vae_jax.training.run import train_and_evaluate

    bad = synthetic_dataset(64, 32)._replace(train_images=np.zeros((64, 28, 28), np.float64))
    with pytest.raises(DataError, match="expected uint8 images"):
        train_and_evaluate(small_config(), tmp_path / "a", bad)
    odd = synthetic_dataset(64, 32)
    odd = odd._replace(
        train_images=np.zeros((64, 30, 30, 3), np.uint8),
        test_images=np.zeros((32, 30, 30, 3), np.uint8),
    )
    with pytest.raises(ConfigError, match=r"divide by 4; images are \(30, 30, 3\)"):
        train_and_evaluate(small_config(), tmp_path / "b", odd)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Arrays of the user's own


def _npz(path, train, test, **extra):
    np.savez(path, train_images=train, test_images=test, **extra)
    return str(path)


def test_an_npz_of_rgb_images_trains_the_conv_vae_and_draws_in_colour(tmp_path):
    """A 32x32x3 .npz of random images, by path: the seed's conv VAE (same layers) trains a few
    steps, and the figures are RGB PNGs."""
    from conftest import small_config
    from PIL import Image

    from vae_jax.training.run import train_and_evaluate

    rng = np.random.default_rng(0)
    path = _npz(
        tmp_path / "mine.npz",
        rng.integers(0, 256, (96, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8),
        train_labels=np.arange(96) % 10,
    )
    before = (tmp_path / "mine.npz").read_bytes()
    config = small_config({"data.name": path, "train.num_epochs": 1})
    history = train_and_evaluate(config, tmp_path / "run")
    assert history[0]["step"] == 3 and np.isfinite(history[0]["test_neg_elbo_nats"])
    for name in ("originals.png", "recon_epoch_01.png", "samples_epoch_01.png"):
        with Image.open(tmp_path / "run" / "figures" / name) as im:
            assert im.mode == "RGB" and im.size == (8 * 34 + 2, 8 * 34 + 2)
    with Image.open(tmp_path / "run" / "figures" / "originals.png") as im:
        grid = np.asarray(im)
    first = datasets.load_dataset(config.data).test_images[0]
    np.testing.assert_array_equal(grid[2:34, 2:34], first)  # the image, colours as they were
    assert (tmp_path / "mine.npz").read_bytes() == before  # the user's data is only read


@pytest.mark.parametrize(
    ("images", "expected"),
    [
        (np.array([[[0, 1], [1, 0]]], np.uint8), [[0, 255], [255, 0]]),  # 0/1: binarized data
        (np.array([[[0, 1], [1, 0]]], bool), [[0, 255], [255, 0]]),
        (np.array([[[0.0, 0.5], [1.0, 0.25]]], np.float32), [[0, 128], [255, 64]]),
        (np.array([[[0, 7], [255, 128]]], np.int64), [[0, 7], [255, 128]]),
    ],
)
def test_pixel_ranges_are_detected(images, expected):
    out = image_arrays.as_uint8(images, "test")
    assert out.dtype == np.uint8 and out.shape == (1, 2, 2, 1)
    np.testing.assert_array_equal(out[0, ..., 0], expected)


def test_zero_one_uint8_data_is_not_divided_by_255(tmp_path):
    """binarized_mnist stores 0/1 as uint8: the model must see 0/1, not near-black images."""
    from vae_jax.config.keys import base_config, with_values
    from vae_jax.core.pixels import to_float

    bits = np.random.default_rng(0).integers(0, 2, (50, 8, 8), dtype=np.uint8)
    path = _npz(tmp_path / "bits.npz", bits, bits[:10])
    dataset = datasets.load_dataset(with_values(base_config(), {"data.name": path}, "test").data)
    x = np.asarray(to_float(dataset.train_images))
    assert set(np.unique(x)) == {0.0, 1.0} and x.shape == (50, 8, 8, 1)
    np.testing.assert_array_equal(x[..., 0], bits)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"train_images": np.zeros((4, 8, 8), np.uint8)}, "has no test_images array"),
        (
            {"train_images": np.full((4, 8, 8), 2.0), "test_images": np.zeros((4, 8, 8))},
            "pixel values range from 2 to 2; expected integers 0..255",
        ),
        (
            {"train_images": np.zeros((4, 8, 8, 2)), "test_images": np.zeros((4, 8, 8, 2))},
            "expected [N, H, W] or [N, H, W, C]",
        ),
        (
            {
                "train_images": np.zeros((4, 8, 8)),
                "test_images": np.zeros((4, 8, 8)),
                "train_labels": np.zeros(3),
            },
            "train_labels are float64 of shape (3,)",
        ),
    ],
)
def test_bad_arrays_are_named(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError) as e:
        image_arrays.load_arrays(str(tmp_path / "bad.npz"))
    assert message in str(e.value)


def test_a_dataset_that_cannot_fit_in_memory_is_refused_before_it_is_read(tmp_path, monkeypatch):
    path = _npz(tmp_path / "x.npz", np.zeros((100, 8, 8), np.uint8), np.zeros((10, 8, 8), np.uint8))
    monkeypatch.setattr(image_arrays, "_available_memory_bytes", lambda: 1000)
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("read although too large"))
    with pytest.raises(DataError, match=r"twice over .* 0.0 GiB of memory are available"):
        image_arrays.load_arrays(path)


def test_a_missing_dataset_is_prepared_by_itself_only_in_tfds_default_dir(tmp_path, monkeypatch):
    from vae_jax.config import base_config

    prepared = []
    monkeypatch.setattr(datasets, "prepare_tfds", lambda name, d, cache: prepared.append((name, d)))
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    monkeypatch.delenv(datasets.AUTO_PREPARE_ENV, raising=False)
    config = base_config().data
    assert datasets.auto_prepare(config)  # TFDS's default dir: prepare there
    with pytest.raises(DataError, match="is not prepared"):  # our fake prepared nothing
        datasets.load_split("mnist", "train", str(tmp_path), prepare=True)
    assert prepared == [("mnist", str(tmp_path))]
    monkeypatch.setenv(datasets.AUTO_PREPARE_ENV, "0")
    assert not datasets.auto_prepare(config)
    monkeypatch.delenv(datasets.AUTO_PREPARE_ENV)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))  # the user's own dir: never written
    assert not datasets.auto_prepare(config)
