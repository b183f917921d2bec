"""Helpers of the replay benchmark: the smoothed loss surface and the naive neighbour walk.

Both work on one :class:`~steplaw_opt.bench._grids.GridSetting` with NumPy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from steplaw_opt.bench._grids import GridSetting

SMOOTH_REGION = 0.03  # fit the points within 3 % of the setting's minimum
SMOOTH_DEGREE = 3  # full cubic in (ln lr, ln batch): 10 coefficients
SMOOTH_WEIGHT_FLOOR = 0.0025  # weight 1 / (relative gap + 0.25 %): the plateau counts most
NEAR = 0.005  # "near the minimum" for the fit-quality figure


@dataclass(frozen=True)
class SmoothSurface:
    """A setting's loss, smoothed near the minimum.

    ``values[i]`` is the smoothed loss at grid point ``i`` (the measured loss for points outside
    the fitted region, which are more than ``SMOOTH_REGION`` above the minimum and can never be
    its argmin); ``fitted[i]`` says whether point ``i`` was in the fit.
    """

    values: np.ndarray
    fitted: np.ndarray
    rms_near: float  # RMS relative residual of the measured points within NEAR of the minimum
    rms_fitted: float  # RMS relative residual over every fitted point

    @property
    def min_value(self) -> float:
        return float(self.values.min())

    def gap(self, index: int) -> float:
        """Relative gap of grid point ``index`` on the smoothed surface (0.001 = 0.1 %)."""
        return float(self.values[index] / self.min_value - 1.0)


def _features(x: np.ndarray, y: np.ndarray, degree: int) -> np.ndarray:
    cols = [x**i * y**j for i in range(degree + 1) for j in range(degree + 1 - i)]
    return np.stack(cols, axis=1)


def smooth_surface(
    setting: GridSetting,
    *,
    region: float = SMOOTH_REGION,
    degree: int = SMOOTH_DEGREE,
    weight_floor: float = SMOOTH_WEIGHT_FLOOR,
) -> SmoothSurface:
    """Fit a smooth model of the setting's loss near its minimum.

    Model: ln loss is a full polynomial of ``degree`` (default 3, ten coefficients) in the
    standardised (ln lr, ln batch) of the grid points whose measured loss is within ``region``
    (default 3 %) of the setting's minimum — diverged and far-off runs are excluded, so the
    polynomial only has to describe the bowl. Weighted least squares with weight
    1 / (relative gap + ``weight_floor``) keeps the plateau, where recommendations land, most
    accurate. On the released grids the residual of the points within 0.5 % of the minimum is
    about 0.07 % RMS in-sample and 0.09 % leave-one-out: the same order as the measurement
    noise, which is why the benchmark reports this score beside the raw one.

    With fewer fitted points than coefficients + 3, the surface is the measured loss itself.
    """
    loss = setting.loss
    rel = loss / loss.min() - 1.0
    fitted = rel <= region
    n_coef = (degree + 1) * (degree + 2) // 2
    if fitted.sum() < n_coef + 3:
        return SmoothSurface(loss.copy(), np.zeros_like(fitted), 0.0, 0.0)
    x, y = np.log(setting.lr), np.log(setting.batch)
    x = (x - x[fitted].mean()) / max(x[fitted].std(), 1e-12)
    y = (y - y[fitted].mean()) / max(y[fitted].std(), 1e-12)
    feats = _features(x, y, degree)
    w = 1.0 / (rel[fitted] + weight_floor)
    target = np.log(loss[fitted])
    coef, *_ = np.linalg.lstsq(feats[fitted] * w[:, None], target * w, rcond=None)
    smooth = np.exp(feats @ coef)
    values = np.where(fitted, smooth, loss)
    resid = target - np.log(smooth[fitted])
    near = rel[fitted] <= NEAR
    return SmoothSurface(
        values=values,
        fitted=fitted,
        rms_near=float(np.sqrt(np.mean(resid[near] ** 2))),
        rms_fitted=float(np.sqrt(np.mean(resid**2))),
    )


def walk_trace(setting: GridSetting, start: int, n_trials: int) -> np.ndarray:
    """The grid indices a naive neighbour walk evaluates, in order.

    Reference method, not a sampler: it looks at the grid's point set. Trial 1 is ``start``
    (the law's point snapped to the grid); every later trial is the not-yet-evaluated grid point
    nearest, in (ln lr, ln batch), to the best point evaluated so far (ties: lowest index).
    Stops early when the grid is exhausted.
    """
    x, y = np.log(setting.lr), np.log(setting.batch)
    loss = setting.loss
    tried = [int(start)]
    untried = np.ones(loss.size, dtype=bool)
    untried[start] = False
    while len(tried) < n_trials and untried.any():
        best = tried[int(np.argmin(loss[tried]))]
        dist = np.where(untried, (x - x[best]) ** 2 + (y - y[best]) ** 2, np.inf)
        nxt = int(np.argmin(dist))
        tried.append(nxt)
        untried[nxt] = False
    return np.asarray(tried, dtype=int)


def best_observed(indices: np.ndarray, loss: np.ndarray, k: int) -> int:
    """The grid index of the best trial among the first ``k`` (the first one on ties)."""
    head = indices[:k]
    return int(head[int(np.argmin(loss[head]))])
