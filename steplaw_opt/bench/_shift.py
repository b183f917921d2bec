r"""Shifted landscapes: the released grids with the optimum moved by a known amount.

On the released dense grids the Step Law is right to within noise (it was fitted on them), so
they cannot show whether a method corrects a law that is wrong — the case the tool exists for
(a new architecture, data mix, optimiser, or a scale far from the law's data). A shifted
landscape keeps the grid's real shape and real noise and moves its optimum by a known offset
:math:`\delta(s) = (\delta_u, \delta_v)` in law-normalised units at each setting :math:`s`:

.. math::

    L_\delta(\mathrm{lr}, B) = L(\mathrm{lr}\, e^{-\delta_u},\; B\, e^{-\delta_v})

so the truth (every surface's argmin) moves by exactly :math:`e^{\delta}` and the law, which
does not know, is off by :math:`\delta`. The search box moves with it, so every query maps back
inside the measured grid.

Families (``size`` in ln units, at most 0.7 — a factor of 2 — each, default 0.5):

- ``none`` — the released grids as they are;
- ``const:a`` — :math:`\delta = (a, a)` at every setting: lr and batch both :math:`e^a` times
  the law's (0.5: a factor 1.65);
- ``drift-D:a`` — :math:`\delta = a\,(t_D, t_D)` with :math:`t_D \in [-1, 1]` the setting's
  ln D rescaled over the data's range: the law's error grows with training tokens;
- ``drift-N:a`` — the same with ln N;
- ``drift-ND:a`` — :math:`\delta_u = a\,(t_N + t_D)/2`, :math:`\delta_v = a\,(t_D - t_N)/2`:
  the lr error follows compute, the batch error the tokens per parameter.

A negative ``a`` moves the optimum the other way (``const:-0.5``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from steplaw_opt.bench._grids import GridSetting, ReplayObjective
from steplaw_opt.errors import SteplawInputError

FAMILIES = ("none", "const", "drift-D", "drift-N", "drift-ND")
MAX_SIZE = 0.7
DEFAULT_SIZE = 0.5


@dataclass(frozen=True)
class Shift:
    """A family of offsets of the optimum and its size (see the module docstring)."""

    family: str = "none"
    size: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Shift:
        """``none``, ``const``, ``const:0.5``, ``drift-D:-0.3`` …; one line naming a bad one."""
        family, _, size_text = text.strip().partition(":")
        if family not in FAMILIES:
            raise SteplawInputError(
                f"unknown shift family {family!r} in {text!r}; choose from {', '.join(FAMILIES)}"
            )
        if family == "none":
            if size_text:
                raise SteplawInputError(f"the shift 'none' takes no size, got {text!r}")
            return cls()
        try:
            size = float(size_text) if size_text else DEFAULT_SIZE
        except ValueError:
            raise SteplawInputError(f"shift size must be a number, got {text!r}") from None
        if not (math.isfinite(size) and abs(size) <= MAX_SIZE):
            raise SteplawInputError(
                f"shift size must be within ±{MAX_SIZE} ln units, got {size_text!r} in {text!r}"
            )
        return cls(family, size)

    @property
    def label(self) -> str:
        return "none" if self.family == "none" else f"{self.family}:{self.size:g}"

    def offsets(self, settings: Sequence[GridSetting]) -> np.ndarray:
        """The offset (δu, δv) of every setting, one row each, in the order given."""
        ln_n = np.log([s.N for s in settings])
        ln_d = np.log([s.D for s in settings])

        def spread(x: np.ndarray) -> np.ndarray:
            span = x.max() - x.min()
            return np.zeros_like(x) if span <= 0 else 2.0 * (x - x.min()) / span - 1.0

        t_n, t_d = spread(ln_n), spread(ln_d)
        a = self.size
        if self.family == "none":
            du = dv = np.zeros(len(settings))
        elif self.family == "const":
            du = dv = np.full(len(settings), a)
        elif self.family == "drift-D":
            du = dv = a * t_d
        elif self.family == "drift-N":
            du = dv = a * t_n
        else:  # drift-ND
            du, dv = a * (t_n + t_d) / 2.0, a * (t_d - t_n) / 2.0
        return np.stack([du, dv], axis=1).astype(float)


class ShiftedReplayObjective(ReplayObjective):
    """:class:`ReplayObjective` on the landscape moved by ``offset`` = (δu, δv): the loss at
    (lr, batch) is the measured loss of the cell nearest to (lr·e^−δu, batch·e^−δv); the
    search box is the unshifted one times e^δ."""

    def __init__(
        self,
        setting: GridSetting,
        offset: tuple[float, float],
        *,
        lr_param: str = "lr",
        batch_param: str = "batch_size",
        lr_bounds: tuple[float, float] | None = None,
        batch_bounds: tuple[float, float] | None = None,
    ) -> None:
        super().__init__(
            setting,
            lr_param=lr_param,
            batch_param=batch_param,
            lr_bounds=lr_bounds,
            batch_bounds=batch_bounds,
        )
        self.offset = (float(offset[0]), float(offset[1]))
        fu, fv = math.exp(self.offset[0]), math.exp(self.offset[1])
        self.lr_bounds = (self.lr_bounds[0] * fu, self.lr_bounds[1] * fu)
        self.batch_bounds = (self.batch_bounds[0] * fv, self.batch_bounds[1] * fv)

    def unshift(self, lr: float, batch: float) -> tuple[float, float]:
        """The point of the released grid that (lr, batch) on this landscape stands for."""
        return lr * math.exp(-self.offset[0]), batch * math.exp(-self.offset[1])

    def __call__(self, trial: object) -> float:
        lr = trial.suggest_float(self.lr_param, *self.lr_bounds, log=True)  # type: ignore[attr-defined]
        batch = trial.suggest_float(self.batch_param, *self.batch_bounds, log=True)  # type: ignore[attr-defined]
        return self._run_cell(trial, lr, batch, self.offset)
