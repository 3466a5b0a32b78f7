"""The user's own Python files: experiments, sweeps and models found by name under
``experiments/`` (or ``$VAE_JAX_EXPERIMENTS_DIR``), imported with their errors in one line."""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import traceback
from pathlib import Path
from typing import Any

from absl import flags

from vae_jax.errors import ConfigError

EXPERIMENTS_ENV = "VAE_JAX_EXPERIMENTS_DIR"
USER_MODELS = "models"  # experiments/models/*.py: architectures of the user's own


def experiments_dir() -> Path:
    """``$VAE_JAX_EXPERIMENTS_DIR``, else the ``experiments/`` folder of this checkout."""
    if os.environ.get(EXPERIMENTS_ENV):
        return Path(os.environ[EXPERIMENTS_ENV])
    return Path(__file__).resolve().parents[2] / "experiments"


def python_files(directory: Path) -> list[str]:
    """The names of the ``.py`` files in ``directory`` (not those starting with ``_``)."""
    if not directory.is_dir():
        return []
    return sorted(p.stem for p in directory.glob("*.py") if not p.name.startswith("_"))


def find_file(name: str, directory: Path, kind: str) -> Path:
    """``directory/<name>.py``, or ``name`` itself if it is a path to a .py file; else a
    :class:`ConfigError` naming the ``kind``s (experiment, sweep) there."""
    if name.endswith(".py") and Path(name).is_file():
        return Path(name)
    if name.endswith(".py") or "/" in name:
        raise ConfigError(f"{kind} file {name} does not exist (a name in {directory}, or a path)")
    path = directory / f"{name}.py"
    if name and "/" not in name and path.is_file():
        return path
    names = python_files(directory)
    hint = difflib.get_close_matches(name, names, n=1)
    msg = f"unknown {kind} {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
    raise ConfigError(f"{msg}; {kind}s in {directory}: {', '.join(names) or '(none)'}")


_imported: set[Path] = set()


def import_user_models() -> None:
    """Import every ``experiments/models/*.py`` once: each registers its architectures."""
    folder = experiments_dir() / USER_MODELS
    for name in python_files(folder):
        path = (folder / f"{name}.py").resolve()
        if path in _imported:
            continue
        _imported.add(path)
        run_user_file(path, f"vae_jax_user_models.{name}", "the model file")


def run_user_file(path: Path, module_name: str, what: str) -> Any:
    """Import the user's Python file ``path`` as ``module_name``; an error in it (a typo, a
    failing import) is a :class:`ConfigError` in one line that names the file."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"cannot import {what} {path}: {one_line(e)}") from None
    return module


def one_line(e: BaseException) -> str:
    """An error raised while parsing flags or running a user's file (an experiment, a sweep, a
    model), in one line: the innermost exception and the line of the user's file it came from
    (ml_collections quotes the traceback of a failing ``get_config`` in its message)."""
    if isinstance(e, SyntaxError):
        return f"SyntaxError: {e.msg} ({e.filename}, line {e.lineno})"
    here = str(Path(__file__).parents[1])

    def users(file: str) -> bool:
        return "site-packages" not in file and here not in file and not file.startswith("<")

    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):
        where = [line.split(", in ")[0] for line in lines if line.startswith('File "')]
        where = [w for w in where if users(w.split('"')[1])]
        last = re.sub(r"^[\w.]*ConfigError: ", "", lines[-1])
    else:
        frames = traceback.extract_tb(e.__traceback__)
        where = [f'File "{f.filename}", line {f.lineno}' for f in frames if users(f.filename)]
        first = lines[0] if lines else ""
        last = first if isinstance(e, flags.Error | ConfigError) else f"{type(e).__name__}: {first}"
    return last + (f" ({where[-1]})" if where else "")
