"""Preparing a TFDS dataset that is missing: TFDS needs TensorFlow (and internet) to download
and prepare one, not to read it, so TensorFlow is installed into an environment of its own and
never enters the training one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from vae_jax.errors import DataError

PREPARE_PACKAGES = ("tensorflow-cpu", "tensorflow-datasets", "array-record", "pillow",
                    "importlib_resources")  # fmt: skip


def not_prepared_message(name: str, data_dir: str) -> str:
    return (
        f"TFDS dataset {name!r} is not prepared in {data_dir!r}. Point at a data dir where it "
        "is prepared: export TFDS_DATA_DIR=/path/to/tensorflow_datasets (or "
        f"--config.data.tfds_data_dir=...), or prepare it there: "
        f"python -m vae_jax data {name} --data-dir {data_dir} (downloads it; TFDS needs "
        "TensorFlow for that, which goes into a separate environment, not this one)"
    )


def prepare_tfds(name: str, data_dir: str, cache: Path) -> None:
    """Download and prepare TFDS dataset ``name`` in ``data_dir`` (array_record files).

    TFDS needs TensorFlow to prepare a dataset (not to read it): it is installed into its own
    environment, ``<cache>/tfds-prepare-venv``, and never enters this one. Needs internet."""
    venv = cache / "tfds-prepare-venv"
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
            "internet that is expected. " + not_prepared_message(*where)
        )
