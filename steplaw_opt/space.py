r"""Law-normalised coordinates.

For a run at scale :math:`s` with learning rate :math:`\mathrm{lr}` and batch size :math:`B`,

.. math::

    u = \ln \mathrm{lr} - \ln \mathrm{lr}^*(s), \qquad v = \ln B - \ln B^*(s)

where :math:`\mathrm{lr}^*` and :math:`B^*` are the law's predictions. If the law were exact the
optimum would sit at :math:`u = v = 0` at every scale; its error moves slowly with scale, so runs
at different scales (short proxy runs and the target) can be pooled in one :math:`(u, v)` model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from steplaw_opt.errors import SteplawInputError
from steplaw_opt.priors._law import Law
from steplaw_opt.scale import Scale

BatchUnit = Literal["sequences", "tokens"]


@dataclass(frozen=True)
class LawSpace:
    """Maps (lr, batch, scale) ↔ (u, v) for one law.

    Args:
        law: the law whose prediction is the origin.
        batch_unit: the unit the batch parameter is given in, ``"sequences"`` or ``"tokens"``.
        seq_len: tokens per sequence when ``batch_unit="sequences"``; ``None`` takes each
            scale's own ``seq_len``.

    Example:
        >>> from steplaw_opt import Scale, load_law
        >>> space = LawSpace(load_law("step-law"))
        >>> s = Scale(N=1e9, D=1e11)
        >>> lr, batch = space.from_uv(0.0, 0.0, s)
        >>> [round(x, 12) for x in space.to_uv(lr, batch, s)]
        [0.0, 0.0]
    """

    law: Law
    batch_unit: BatchUnit = "sequences"
    seq_len: int | None = None

    def __post_init__(self) -> None:
        if self.batch_unit not in ("sequences", "tokens"):
            raise SteplawInputError(
                f"batch_unit must be 'sequences' or 'tokens', got {self.batch_unit!r}"
            )
        self.law.require_usable()  # before the checks below, which would hide the reason
        if self.law.lr_formula is None or self.law.batch_formula is None:
            raise SteplawInputError(
                f"law {self.law.name!r} must predict both lr and batch to serve as a prior"
            )
        if self.seq_len is not None and (
            isinstance(self.seq_len, bool) or not isinstance(self.seq_len, int) or self.seq_len <= 0
        ):
            raise SteplawInputError(f"seq_len must be a positive integer, got {self.seq_len!r}")

    def tokens_per_batch_unit(self, scale: Scale) -> float:
        if self.batch_unit == "tokens":
            return 1.0
        return float(self.seq_len or scale.seq_len)

    def origin(self, scale: Scale) -> tuple[float, float]:
        """(ln lr*, ln B*) at ``scale``, with B* in the batch parameter's unit."""
        ln_lr = math.log(self.law.lr_at(scale))
        ln_b = math.log(self.law.batch_tokens_at(scale) / self.tokens_per_batch_unit(scale))
        return ln_lr, ln_b

    def to_uv(self, lr: float, batch: float, scale: Scale) -> tuple[float, float]:
        ln_lr, ln_b = self.origin(scale)
        return _log_positive("lr", lr) - ln_lr, _log_positive("batch", batch) - ln_b

    def from_uv(self, u: float, v: float, scale: Scale) -> tuple[float, float]:
        """(lr, batch in the batch parameter's unit) at ``scale``."""
        ln_lr, ln_b = self.origin(scale)
        return math.exp(ln_lr + u), math.exp(ln_b + v)

    def bounds_uv(
        self, lr_bounds: tuple[float, float], batch_bounds: tuple[float, float], scale: Scale
    ) -> np.ndarray:
        """The box ``[[u_lo, v_lo], [u_hi, v_hi]]`` that the parameter bounds span at ``scale``."""
        lr_lo, lr_hi = check_bounds_pair("lr", lr_bounds)
        b_lo, b_hi = check_bounds_pair("batch", batch_bounds)
        ln_lr, ln_b = self.origin(scale)
        lo = [math.log(lr_lo) - ln_lr, math.log(b_lo) - ln_b]
        hi = [math.log(lr_hi) - ln_lr, math.log(b_hi) - ln_b]
        return np.array([lo, hi])


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "…"


def _log_positive(name: str, value: object) -> float:
    """``ln value`` for a positive, finite number; one line naming it otherwise (``math.log``
    would say only "math domain error")."""
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        x = math.nan
    if not (math.isfinite(x) and x > 0):
        raise SteplawInputError(f"{name} must be a positive, finite number, got {_shown(value)}")
    return math.log(x)


def check_bounds_pair(name: str, bounds: object) -> tuple[float, float]:
    """``bounds`` as ``(low, high)`` floats with ``0 < low < high``, both finite (NumPy numbers
    accepted); one line naming the bad value otherwise."""
    try:
        low, high = bounds  # type: ignore[misc]
        pair = (float(low), float(high))
    except (TypeError, ValueError, OverflowError):
        pair = (math.nan, math.nan)
    lo, hi = pair
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise SteplawInputError(
            f"{name} bounds must be (low, high) with 0 < low < high, got {_shown(bounds)}"
        )
    return pair
