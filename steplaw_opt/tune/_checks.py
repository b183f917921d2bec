"""The field checks of :class:`~steplaw_opt.tune.TuneConfig`: one line naming the field and the
value, and every value stored as the plain Python type its field holds.

NumPy scalars are accepted wherever Python numbers are (``np.int64(8)`` for a whole number,
``np.float32(0.5)`` for a number) and come out as ``int`` / ``float``, so the JSON document a
study stores (``steplaw.config``) holds ``8``, not ``8.0``, and a worker rebuilds the same
config from it. A whole-number float (``8.0``, as an older version stored NumPy integers) is
taken as the integer it is.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from steplaw_opt.errors import SteplawInputError

_SHOWN = 60  # characters of a bad value shown in a message


def show(value: Any) -> str:
    """``repr(value)`` cut to a short one-line piece of a message."""
    text = " ".join(repr(value).split())
    return text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…"


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def as_number(name: str, value: Any, what: str) -> float:
    """``value`` as a finite Python float (NumPy numbers accepted), or one line."""
    if not _is_bool(value) and isinstance(value, numbers.Real):
        out = float(value)
        if math.isfinite(out):
            return out
    raise SteplawInputError(f"{name} must be {what}, got {show(value)}")


def as_integer(name: str, value: Any, what: str) -> int:
    """``value`` as a Python int (NumPy integers and whole-number floats accepted), or one
    line."""
    if not _is_bool(value):
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
            return int(value)
    raise SteplawInputError(f"{name} must be {what}, got {show(value)}")


def optional_integer(name: str, value: Any, what: str, low: int) -> int | None:
    """``None``, or ``value`` as an int ``>= low``."""
    if value is None:
        return None
    out = as_integer(name, value, what)
    if out < low:
        raise SteplawInputError(f"{name} must be {what}, got {show(value)}")
    return out


def bounds(name: str, value: Any) -> tuple[float, float] | None:
    """``None``, or two finite numbers with ``0 < low < high`` as a tuple of floats."""
    if value is None:
        return None
    what = "two numbers with 0 < low < high"
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise SteplawInputError(f"{name} must be {what}, got {show(value)}")
    items = list(value)
    if len(items) != 2:
        raise SteplawInputError(f"{name} must be {what}, got {show(value)}")
    low, high = (float(x) if _number_like(x) else math.nan for x in items)
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low < high):
        raise SteplawInputError(f"{name} must be {what}, got {show(value)}")
    return (low, high)


def _number_like(x: Any) -> bool:
    return not _is_bool(x) and isinstance(x, numbers.Real)


def flag(name: str, value: Any) -> bool:
    """``True`` / ``False`` (NumPy booleans accepted), or one line."""
    if _is_bool(value):
        return bool(value)
    raise SteplawInputError(f"{name} must be True or False, got {show(value)}")


def choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` when it is one of ``choices`` (text, exactly); else a one-line refusal naming
    ``name``, the choices and what was given (shown cut and escaped)."""
    if isinstance(value, str) and value in choices:
        return value
    shown = " or ".join(repr(c) for c in choices)
    raise SteplawInputError(f"{name} must be {shown}, got {show(value)}")


def rounding(value: Any) -> Any:
    """``round_batch``: ``"none"``, ``"pow2"`` or a positive Python int (NumPy integers
    accepted)."""
    from steplaw_opt.priors._law import check_rounding

    try:
        return check_rounding(value)
    except SteplawInputError as exc:
        raise SteplawInputError(str(exc).replace("batch rounding", "round_batch", 1)) from None


MAX_RUNGS = 16  # far more rungs than any plan can fund: a longer ladder is a mistake


def ladder(value: Any) -> tuple[float, ...] | None:
    """``None``, or proxy model sizes N: positive finite numbers, no two equal, as a tuple of
    floats from the largest down (their order does not change the plan)."""
    if value is None:
        return None
    what = "a list of positive model sizes N"
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise SteplawInputError(f"ladder must be {what}, got {show(value)}")
    sizes = [as_number("ladder size", x, "a positive number") for x in value]
    bad = [x for x in sizes if x <= 0]
    if bad:
        raise SteplawInputError(f"ladder size must be a positive number, got {show(bad[0])}")
    if not sizes:
        raise SteplawInputError("ladder must hold at least one model size (or be None)")
    if len(sizes) > MAX_RUNGS:
        raise SteplawInputError(f"ladder has {len(sizes)} sizes, more than {MAX_RUNGS}: a typo?")
    ordered = sorted(sizes, reverse=True)
    for a, b in itertools.pairwise(ordered):
        if math.isclose(a, b, rel_tol=1e-9):
            raise SteplawInputError(f"ladder size {b:g} is given twice")
    return tuple(ordered)
