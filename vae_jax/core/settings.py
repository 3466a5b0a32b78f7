"""What a config key is: its default, the constraint on its values and its meaning.

The general keys are declared in :mod:`vae_jax.config`; a component declares its own next to
its code (an architecture in :func:`vae_jax.core.models.architecture`, the objective in
:data:`vae_jax.core.objectives.SETTINGS`), and receives their values as keyword arguments.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

MAX_INT = 2**31 - 1  # every integer setting fits in int32 (seeds become JAX keys)


class Check(NamedTuple):
    expected: str  # what a valid value is, for the error message
    accepts: Callable[[Any], bool]


class Setting(NamedTuple):
    """A new key's default must keep what runs saved before it existed doing what they did:
    such a run counts the key as its default when it resumes or is evaluated."""

    default: Any
    check: Check
    doc: str
    resumable: bool = False  # may differ when an existing run is resumed


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def ints_from(low: int) -> Check:
    return Check(f"an integer from {low} to {MAX_INT}", lambda v: is_int(v) and low <= v <= MAX_INT)


def _numbers(positive: bool) -> Check:
    def accepts(v: Any) -> bool:
        ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        return ok and (v > 0 if positive else v >= 0)

    return Check("a finite number > 0" if positive else "a finite number >= 0", accepts)


def one_of(*choices: str) -> Check:
    return Check("one of " + ", ".join(choices), lambda v: isinstance(v, str) and v in choices)


def _positive_ints(v: Any) -> bool:
    return isinstance(v, tuple) and bool(v) and all(is_int(d) and 0 < d <= MAX_INT for d in v)


POSITIVE_INT, NON_NEGATIVE_INT = ints_from(1), ints_from(0)
POSITIVE, NON_NEGATIVE = _numbers(True), _numbers(False)
BOOL = Check("true or false", lambda v: isinstance(v, bool))
TEXT = Check("a string", lambda v: isinstance(v, str))
WIDTHS = Check("a non-empty list of positive integers, e.g. 500,500", _positive_ints)


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{'model.latent_dim': 20, ...}``: every leaf of a config (an ``ml_collections``
    ConfigDict, or its JSON form) under its dotted key."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if hasattr(value, "items"):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def values(config: Any, keys: dict[str, Setting]) -> dict[str, Any]:
    """A component's settings as keyword arguments: ``{'beta': 1.0, ...}`` for the keys
    (``objective.beta``, ...) it declares."""
    flat = flatten(config)
    return {key.rsplit(".", 1)[-1]: flat[key] for key in keys}
