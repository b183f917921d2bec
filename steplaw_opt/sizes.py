"""Parsing and printing of human sizes: ``7B``, ``1.4T``, ``400M``, ``7e9``."""

from __future__ import annotations

import math
import numbers
import re

from steplaw_opt.errors import SteplawInputError

_SUFFIX = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12, "P": 1e15}
_NUMBER = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?inf|nan"
_SIZE_RE = re.compile(rf"^\s*({_NUMBER})\s*([KMBGTP]?)\s*$", re.IGNORECASE)


def parse_size(text: str | float | int, what: str = "size") -> float:
    """Parse a positive, finite size such as ``7B``, ``1.4T``, ``400M``, ``70k`` or ``7e9``.

    ``B`` and ``G`` both mean 1e9. Raises :class:`SteplawInputError` naming ``what`` and the
    bad text otherwise.

    >>> parse_size("1.4T")
    1400000000000.0
    """
    shown = repr(text) if len(repr(text)) <= 60 else repr(text)[:59] + "…"
    if isinstance(text, numbers.Real) and not isinstance(text, bool):  # NumPy numbers too
        try:
            value = float(text)
        except OverflowError:
            value = math.inf
    else:
        match = _SIZE_RE.match(str(text)) if len(str(text)) <= 100 else None
        if match is None:
            raise SteplawInputError(
                f"{what}: cannot read {shown} as a size (examples: 7B, 1.4T, 400M, 7e9)"
            )
        value = float(match.group(1)) * _SUFFIX[match.group(2).upper()]
    if not math.isfinite(value) or value <= 0:
        raise SteplawInputError(f"{what} must be positive and finite, got {shown}")
    return value


def format_size(value: float) -> str:
    """Print a count the way people say it: ``7B``, ``1.4T``, ``215M``."""
    for suffix, factor in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.3g}"
