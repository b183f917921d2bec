r"""Noise-free surfaces of a released grid: what a recommendation would really cost.

The released grids hold ONE run per (lr, batch) cell; near the minimum run-to-run noise is about
0.07 % RMS, as large as the law's own error. A recommendation is therefore scored on smooth
models of the landscape fitted to the whole grid, evaluated at the recommended point itself (not
the nearest cell), and on more than one model, so that no single smoother's shape decides:

- ``cubic-3%`` — ln loss as a full cubic in (ln lr, ln batch), weighted least squares on the
  cells within 3 % of the minimum, weight 1 / (gap + 0.25 %) (the plateau counts most);
- ``quadratic-1.5%`` — ln loss as a quadratic bowl on the cells within 1.5 % of the minimum,
  same weights: the narrowest window that still holds ~20 cells, a second polynomial of another
  order and reach;
- ``gp`` — a Gaussian process (BoTorch ``SingleTaskGP``: Matérn-5/2 with one lengthscale per
  axis, constant mean, Gaussian noise) on ln loss of the cells within 5 % of the minimum, its
  noise level and lengthscales estimated by maximising the marginal likelihood; the posterior
  mean is the surface. Non-parametric: it follows asymmetric cliffs and flat plateaus that a
  polynomial cannot.

Each surface is trusted where the grid has data near the point (within one grid step of a cell
in its fitting window); elsewhere it returns the measured loss of the nearest cell, which is
more than the window above the minimum, so noise cannot matter there. Its argmin and minimum are
found on a dense lattice over the trusted region.

A surface is a function of (lr, batch in sequences); a shifted landscape
(:mod:`~steplaw_opt.bench._shift`) evaluates it at the shifted-back point.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from steplaw_opt.bench._grids import LR_GRID_STEP, GridSetting
from steplaw_opt.errors import SteplawInputError

BATCH_GRID_STEP = math.log(2.0)  # the released batch sizes are powers of two (plus a few 1.5×)
WEIGHT_FLOOR = 0.0025
LATTICE = 161  # points per axis of the lattice an argmin is searched on
SURFACE_NAMES = ("cubic-3%", "quadratic-1.5%", "gp")
# Each surface's fitting window: the cells within this relative gap of the grid's minimum.
SURFACE_WINDOWS = {"cubic-3%": 0.03, "quadratic-1.5%": 0.015, "gp": 0.05}


@dataclass(frozen=True)
class NoiseFreeSurface:
    """A smooth model of one setting's loss, continuous in (lr, batch).

    ``predict_ln`` maps standardised (x, y) = ((ln lr − mx)/sx, (ln batch − my)/sy) arrays to
    ln loss; ``window`` says which cells it was fitted on.
    """

    name: str
    setting: GridSetting
    window: np.ndarray  # cells the model was fitted on
    predict_ln: Callable[[np.ndarray, np.ndarray], np.ndarray]
    center: tuple[float, float]
    scale: tuple[float, float]
    argmin_lr: float
    argmin_batch: float
    min_value: float
    residual_rms: float  # RMS relative residual of the window cells within 0.5 % of the minimum

    def __call__(self, lr: np.ndarray | float, batch: np.ndarray | float) -> np.ndarray:
        """The loss at (lr, batch in sequences); the nearest cell's measured loss where the
        model is not trusted."""
        return _evaluate(self, np.log(np.asarray(lr, float)), np.log(np.asarray(batch, float)))

    def gap(self, lr: float, batch: float) -> float:
        """Relative gap of (lr, batch) to the surface's minimum (0.001 = 0.1 %)."""
        return float(self(lr, batch)) / self.min_value - 1.0


def _standardise(setting: GridSetting, window: np.ndarray) -> tuple[tuple, tuple]:
    x, y = np.log(setting.lr[window]), np.log(setting.batch[window])
    return (float(x.mean()), float(y.mean())), (
        max(float(x.std()), 1e-9),
        max(float(y.std()), 1e-9),
    )


def _trusted(
    s: NoiseFreeSurface, ln_lr: np.ndarray, ln_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(within one grid step of a window cell, index of the nearest cell of the grid)."""
    cells_x, cells_y = np.log(s.setting.lr), np.log(s.setting.batch)
    dx = (ln_lr.reshape(-1, 1) - cells_x[None]) / LR_GRID_STEP
    dy = (ln_b.reshape(-1, 1) - cells_y[None]) / BATCH_GRID_STEP
    cheb = np.maximum(np.abs(dx), np.abs(dy))
    near_window = (cheb[:, s.window] <= 1.0 + 1e-9).any(axis=1)
    nearest = np.argmin(dx**2 + dy**2, axis=1)
    return near_window, nearest


def _evaluate(s: NoiseFreeSurface, ln_lr: np.ndarray, ln_b: np.ndarray) -> np.ndarray:
    shape = np.broadcast(ln_lr, ln_b).shape
    ln_lr, ln_b = np.broadcast_to(ln_lr, shape).ravel(), np.broadcast_to(ln_b, shape).ravel()
    trusted, nearest = _trusted(s, ln_lr, ln_b)
    out = s.setting.loss[nearest].astype(float)
    if trusted.any():
        x = (ln_lr[trusted] - s.center[0]) / s.scale[0]
        y = (ln_b[trusted] - s.center[1]) / s.scale[1]
        out[trusted] = np.exp(s.predict_ln(x, y))
    return out.reshape(shape)


def _finish(
    name: str,
    setting: GridSetting,
    window: np.ndarray,
    predict_ln: Callable[[np.ndarray, np.ndarray], np.ndarray],
    center: tuple[float, float],
    scale: tuple[float, float],
) -> NoiseFreeSurface:
    """Locate the argmin on a lattice over the trusted region and measure the fit."""
    s = NoiseFreeSurface(name, setting, window, predict_ln, center, scale, 0.0, 0.0, 1.0, 0.0)
    x, y = np.log(setting.lr), np.log(setting.batch)
    xs = np.linspace(x[window].min() - LR_GRID_STEP, x[window].max() + LR_GRID_STEP, LATTICE)
    ys = np.linspace(y[window].min() - BATCH_GRID_STEP, y[window].max() + BATCH_GRID_STEP, LATTICE)
    gx, gy = (a.ravel() for a in np.meshgrid(xs, ys))
    trusted, _ = _trusted(s, gx, gy)
    gx, gy = gx[trusted], gy[trusted]
    values = np.exp(predict_ln((gx - center[0]) / scale[0], (gy - center[1]) / scale[1]))
    best = int(np.argmin(values))
    rel = setting.loss / setting.loss.min() - 1.0
    near = window & (rel <= 0.005)
    fitted = np.exp(predict_ln((x[near] - center[0]) / scale[0], (y[near] - center[1]) / scale[1]))
    rms = float(np.sqrt(np.mean((setting.loss[near] / fitted - 1.0) ** 2))) if near.any() else 0.0
    return NoiseFreeSurface(
        name,
        setting,
        window,
        predict_ln,
        center,
        scale,
        float(math.exp(gx[best])),
        float(math.exp(gy[best])),
        float(values[best]),
        rms,
    )


def _poly_features(x: np.ndarray, y: np.ndarray, degree: int) -> np.ndarray:
    return np.stack([x**i * y**j for i in range(degree + 1) for j in range(degree + 1 - i)], -1)


def polynomial_surface(
    setting: GridSetting, *, degree: int, window: float, name: str | None = None
) -> NoiseFreeSurface:
    """ln loss as a full polynomial of ``degree`` in standardised (ln lr, ln batch), weighted
    least squares on the cells within ``window`` of the minimum (weight 1 / (gap + 0.25 %))."""
    rel = setting.loss / setting.loss.min() - 1.0
    cells = rel <= window
    n_coef = (degree + 1) * (degree + 2) // 2
    if cells.sum() < n_coef + 3:  # too few cells: widen until the fit is determined
        cells = rel <= np.sort(rel)[min(len(rel) - 1, n_coef + 2)]
    center, scale = _standardise(setting, cells)
    x = (np.log(setting.lr[cells]) - center[0]) / scale[0]
    y = (np.log(setting.batch[cells]) - center[1]) / scale[1]
    w = 1.0 / (rel[cells] + WEIGHT_FLOOR)
    feats = _poly_features(x, y, degree)
    coef, *_ = np.linalg.lstsq(feats * w[:, None], np.log(setting.loss[cells]) * w, rcond=None)

    def predict_ln(px: np.ndarray, py: np.ndarray) -> np.ndarray:
        return _poly_features(px, py, degree) @ coef

    label = name or f"poly{degree}-{window:.1%}"
    return _finish(label, setting, cells, predict_ln, center, scale)


def gp_surface(setting: GridSetting, *, window: float = 0.05, seed: int = 0) -> NoiseFreeSurface:
    """The posterior mean of a GP on ln loss of the cells within ``window`` of the minimum, its
    noise and lengthscales fitted by marginal likelihood (BoTorch, imported here)."""
    import torch
    from botorch.exceptions.warnings import InputDataWarning
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.outcome import Standardize
    from gpytorch.mlls import ExactMarginalLogLikelihood

    rel = setting.loss / setting.loss.min() - 1.0
    cells = rel <= window
    center, scale = _standardise(setting, cells)
    x = (np.log(setting.lr[cells]) - center[0]) / scale[0]
    y = (np.log(setting.batch[cells]) - center[1]) / scale[1]
    train_x = torch.tensor(np.stack([x, y], -1), dtype=torch.float64)
    train_y = torch.tensor(np.log(setting.loss[cells]), dtype=torch.float64).unsqueeze(-1)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with warnings.catch_warnings():
            # inputs are standardised on purpose (the lattice reaches beyond the window)
            warnings.simplefilter("ignore", InputDataWarning)
            model = SingleTaskGP(train_x, train_y, outcome_transform=Standardize(m=1))
            fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    finally:
        torch.random.set_rng_state(state)
    # The posterior mean by hand, μ + k(x*, X) (K + σ²I)⁻¹ (y − μ) in the standardised outcome
    # space: only the 26k × n cross-kernel of the argmin lattice is needed, not its covariance.
    with torch.no_grad():
        model.eval()
        y_std = model.outcome_transform(train_y)[0].squeeze(-1)
        mu = model.mean_module(train_x)
        k_train = model.covar_module(train_x).to_dense()
        k_train = k_train + model.likelihood.noise * torch.eye(len(train_x), dtype=train_x.dtype)
        alpha = torch.linalg.solve(k_train, y_std - mu)
        offset, spread = model.outcome_transform.means.item(), model.outcome_transform.stdvs.item()
        const = float(mu[0])

    def predict_ln(px: np.ndarray, py: np.ndarray) -> np.ndarray:
        pts = torch.tensor(np.stack([np.ravel(px), np.ravel(py)], -1), dtype=torch.float64)
        with torch.no_grad():
            mean = const + model.covar_module(pts, train_x).to_dense() @ alpha
        return (offset + spread * mean.numpy()).reshape(np.shape(px))

    return _finish("gp", setting, cells, predict_ln, center, scale)


# Fitted surfaces by (the grid's bytes, name): a bench run, and a test session, fit each once.
_CACHE: dict[tuple[bytes, str], NoiseFreeSurface] = {}


def _digest(setting: GridSetting) -> bytes:
    h = hashlib.sha1()
    for a in (setting.lr, setting.batch, setting.loss):
        h.update(np.ascontiguousarray(a, dtype=float).tobytes())
    return h.digest()


def fit_surface(setting: GridSetting, name: str) -> NoiseFreeSurface:
    """The bench's surface ``name`` of ``setting``, fitted afresh (:func:`noise_free_surfaces`
    caches these; a refit of a changed grid, such as one with a cell left out, calls this)."""
    if name in ("cubic-3%", "quadratic-1.5%"):
        degree = 3 if name == "cubic-3%" else 2
        return polynomial_surface(setting, degree=degree, window=SURFACE_WINDOWS[name], name=name)
    if name == "gp":
        return gp_surface(setting, window=SURFACE_WINDOWS["gp"])
    raise SteplawInputError(f"unknown surface {name!r}; known: {', '.join(SURFACE_NAMES)}")


def noise_free_surfaces(
    setting: GridSetting, names: Sequence[str] = SURFACE_NAMES
) -> list[NoiseFreeSurface]:
    """The bench's surfaces of ``setting``, in ``names`` order (see the module docstring)."""
    digest = _digest(setting)
    out = []
    for name in names:
        key = (digest, name)
        if key not in _CACHE:
            _CACHE[key] = fit_surface(setting, name)
        # the cached fit, bound to this setting object
        out.append(dataclasses.replace(_CACHE[key], setting=setting))
    return out
