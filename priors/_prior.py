r"""The prior over the optimum's location and the trust region, in law-normalised (u, v).

The prior is a 2-D Gaussian :math:`w^* \sim \mathcal N(\mu, \Sigma)` with :math:`\mu = 0` (the
law's point) and

.. math::

    \Sigma = J \Sigma_\beta J^\top + \kappa(s) \, \mathrm{diag}(\sigma_{lr}^2, \sigma_B^2)

where :math:`J \Sigma_\beta J^\top = x_s^\top \Sigma_\beta x_s` is the law's coefficient
uncertainty at the target scale (:meth:`Law.log_covariance`), :math:`\sigma` the law's residual
scatter of the optimum (the card's ``[residual]``), and :math:`\kappa(s) = 1 + (d / \ln 10)^2`
widens it outside the card's validity range, :math:`d` being the Euclidean norm of the
natural-log distances from the fitted range over the variables that are out of range (one decade
out doubles the residual variance). The formula lives in :meth:`Law.optimum_log_covariance`,
which ``steplaw-opt predict`` also uses for its interval of where the optimum is.

The trust region is the prior's high-mass ellipse :math:`\{w : (w - c)^\top \Sigma^{-1} (w - c)
\le \chi^2_2(p)\}` (default :math:`p = 0.99`) intersected with the box the search bounds span.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from steplaw_opt.errors import SteplawInputError
from steplaw_opt.priors._law import Law
from steplaw_opt.scale import Scale

# Used when a card carries no [residual]: the Step Law's near-optimal runs scatter about this
# much around it in ln lr and ln batch (scripts/fit_landscape.py measures it). `predict` does
# not borrow it: a card without [residual] shows no optimum interval there.
DEFAULT_RESIDUAL_SD = (0.35, 0.35)


def chi2_2_quantile(mass: float) -> float:
    """Quantile of the chi-square distribution with 2 degrees of freedom: −2 ln(1 − p)."""
    if not 0.0 < mass < 1.0:
        raise SteplawInputError(f"trust-region mass must be in (0, 1), got {mass!r}")
    return -2.0 * math.log1p(-mass)


@dataclass(frozen=True)
class Prior:
    """Gaussian prior over the optimum's location ``w* = (u*, v*)``."""

    mean: np.ndarray
    cov: np.ndarray

    def __post_init__(self) -> None:
        mean = np.asarray(self.mean, dtype=float).reshape(2)
        cov = np.asarray(self.cov, dtype=float).reshape(2, 2)
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(cov))):
            raise SteplawInputError("prior mean and covariance must be finite")
        if not np.allclose(cov, cov.T) or np.linalg.eigvalsh(cov).min() <= 0:
            raise SteplawInputError(
                f"prior covariance must be positive definite, got {cov.tolist()}"
            )
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "cov", cov)

    @classmethod
    def from_law(cls, law: Law, scale: Scale, *, widen: float = 1.0) -> Prior:
        """The prior at ``scale``: coefficient uncertainty + residual scatter, widened when
        extrapolating (:meth:`Law.optimum_log_covariance`, the covariance ``predict`` shows as
        the optimum's interval), with :data:`DEFAULT_RESIDUAL_SD` for a card without
        ``[residual]``. ``widen`` multiplies the standard deviations (a user's own doubt)."""
        cov = law.optimum_log_covariance(scale, law.residual_sd or DEFAULT_RESIDUAL_SD)
        assert cov is not None
        if not (isinstance(widen, (int, float)) and math.isfinite(widen) and widen > 0):
            raise SteplawInputError(f"prior widening must be positive, got {widen!r}")
        return cls(np.zeros(2), cov * widen**2)

    @property
    def sd(self) -> np.ndarray:
        return np.sqrt(np.diag(self.cov))

    def mahalanobis2(self, w: np.ndarray) -> np.ndarray:
        d = np.atleast_2d(w) - self.mean
        return np.einsum("ni,ij,nj->n", d, np.linalg.inv(self.cov), d)

    def logpdf(self, w: np.ndarray) -> np.ndarray:
        _, logdet = np.linalg.slogdet(self.cov)
        return -0.5 * (self.mahalanobis2(w) + logdet) - math.log(2 * math.pi)


#: The allowance for a new architecture, data mix or optimiser on how the optimum moves with
#: scale: the sd of each entry of Γ = ∂(u*, v*)/∂(ln N, ln D). Set from the spread of the
#: published laws' exponents along the compute-optimal line (D ∝ N, where every one of them
#: was fitted, so their slopes there are comparable): d ln lr*/d ln N is −0.406 (Step Law),
#: −0.40 (Kaplan et al. near 1e9), −0.36 (Porian et al.) and −0.25 (DeepSeek, C^−0.125 with
#: C ∝ N²), sd 0.072; d ln B*/d ln N is 0.571, 0.703 and 0.654 (Step Law, Porian, DeepSeek),
#: sd 0.067. Labs that trained different models on different data disagree by this much.
DRIFT_ALLOWANCE_SD = (0.072, 0.067)  # (lr rows, batch rows)

# How a law variable's logarithm moves with (ln N, ln D): M (FLOPs per token) ∝ N to first
# order, C = 6ND or M·D. A target loss L has no fixed slope: its exponent's uncertainty is not
# carried (the allowance still is).
_LN_SLOPES = {"N": (1.0, 0.0), "D": (0.0, 1.0), "M": (1.0, 0.0), "C": (1.0, 1.0)}


def drift_covariance(
    law: Law, allowance_sd: tuple[float, float] = DRIFT_ALLOWANCE_SD
) -> np.ndarray:
    r"""The prior covariance of :math:`\mathrm{vec}\,\Gamma` (row-major: :math:`\Gamma_{uN},
    \Gamma_{uD}, \Gamma_{vN}, \Gamma_{vD}`), how far the optimum's offset from ``law`` moves
    per ln unit of N and of D:

    .. math:: S_\Gamma = J \Sigma_\beta J^\top
              + \mathrm{diag}(a_{lr}^2, a_{lr}^2, a_B^2, a_B^2)

    with :math:`J \Sigma_\beta J^\top` the card's exponent uncertainty (its ``[covariance]``,
    mapped to (ln N, ln D); zero without one) and :math:`a` the allowance for a setup the law
    was not fitted on (:data:`DRIFT_ALLOWANCE_SD`).

    >>> from steplaw_opt.priors import load_law
    >>> cov = drift_covariance(load_law("step-law"))
    >>> [round(float(x), 3) for x in (cov.diagonal() ** 0.5)]
    [0.078, 0.075, 0.067, 0.07]
    """
    a_lr, a_b = (float(x) for x in allowance_sd)
    if not all(math.isfinite(a) and a > 0 for a in (a_lr, a_b)):
        # Zero would leave Γ's prior singular wherever the card has no covariance for a term.
        raise SteplawInputError(f"drift allowance must be positive sds, got {allowance_sd!r}")
    cov = np.diag([a_lr**2, a_lr**2, a_b**2, a_b**2])
    c = law.covariance
    if c is not None:
        jac = np.zeros((4, len(c.lr_terms) + len(c.batch_terms)))
        jac[0:2, : len(c.lr_terms)] = _slopes(c.lr_terms)
        jac[2:4, len(c.lr_terms) :] = _slopes(c.batch_terms)
        cov = cov + jac @ c.joint() @ jac.T
    return 0.5 * (cov + cov.T)


def _slopes(terms: tuple[str, ...]) -> np.ndarray:
    """∂(d ln q/d ln N, d ln q/d ln D)/∂coefficient of a power law's log-space terms (2 × k)."""
    return np.array([_LN_SLOPES.get(t, (0.0, 0.0)) for t in terms], dtype=float).T


@dataclass(frozen=True)
class TrustRegion:
    """An ellipse ``(w − center)ᵀ shape⁻¹ (w − center) ≤ radius2`` intersected with a box.

    ``box`` is ``[[u_lo, v_lo], [u_hi, v_hi]]`` (infinite entries for unbounded sides).
    """

    center: np.ndarray
    shape: np.ndarray
    radius2: float
    box: np.ndarray

    @classmethod
    def from_prior(
        cls, prior: Prior, *, mass: float = 0.99, box: np.ndarray | None = None
    ) -> TrustRegion:
        if box is None:
            box = np.array([[-np.inf, -np.inf], [np.inf, np.inf]])
        region = cls(prior.mean.copy(), prior.cov.copy(), chi2_2_quantile(mass), np.asarray(box))
        if not region.intersects_box():
            lo, hi = region.ellipse_extent()
            raise SteplawInputError(
                "the search bounds exclude the whole trust region: in law-normalised units the "
                f"bounds span u ∈ [{box[0, 0]:.2f}, {box[1, 0]:.2f}], v ∈ [{box[0, 1]:.2f}, "
                f"{box[1, 1]:.2f}] but the prior's {mass:.0%} region is u ∈ [{lo[0]:.2f}, "
                f"{hi[0]:.2f}], v ∈ [{lo[1]:.2f}, {hi[1]:.2f}]"
            )
        return region

    def ellipse_extent(self) -> tuple[np.ndarray, np.ndarray]:
        half = np.sqrt(self.radius2 * np.diag(self.shape))
        return self.center - half, self.center + half

    @cached_property
    def _shape_inv(self) -> np.ndarray:
        # Once per region: the sampler tests thousands of candidates against one region.
        return np.linalg.inv(self.shape)

    def distance2(self, w: np.ndarray) -> np.ndarray:
        d = np.atleast_2d(w) - self.center
        return np.einsum("ni,ij,nj->n", d, self._shape_inv, d)

    def contains(self, w: np.ndarray, *, tol: float = 1e-9) -> np.ndarray:
        w = np.atleast_2d(w)
        in_box = np.all((w >= self.box[0] - tol) & (w <= self.box[1] + tol), axis=1)
        return in_box & (self.distance2(w) <= self.radius2 * (1 + tol))

    def clip_to_box(self, w: np.ndarray) -> np.ndarray:
        return np.clip(w, self.box[0], self.box[1])

    def nearest_in_box(self) -> np.ndarray:
        """The box point with the smallest ellipse distance to the center: coordinate descent
        on the convex quadratic (exact for a box in 2-D after a few sweeps)."""
        a = np.linalg.inv(self.shape)
        w = self.clip_to_box(self.center).astype(float)
        c = self.center
        for _ in range(100):
            previous = w.copy()
            for i in range(2):
                j = 1 - i
                w[i] = c[i] - a[i, j] / a[i, i] * (w[j] - c[j])
                w[i] = min(max(w[i], self.box[0, i]), self.box[1, i])
            if np.allclose(w, previous, atol=1e-12):
                break
        return w

    def intersects_box(self) -> bool:
        return bool(self.distance2(self.nearest_in_box())[0] <= self.radius2)

    def sample(self, rng: np.random.Generator, n: int, *, strict: bool = True) -> np.ndarray:
        """``n`` points uniform in the ellipse (rejection against the box when ``strict``; points
        of the ellipse outside the box are clipped onto it if rejection finds too few)."""
        chol = np.linalg.cholesky(self.shape)
        out: list[np.ndarray] = []
        total = 0
        for _ in range(20):
            # Most regions lie inside the box and accept nearly every point: draw a quarter
            # more than needed, and again if the box rejects many.
            m = max(n + n // 4, 64)
            angle = rng.uniform(0, 2 * math.pi, m)
            r = np.sqrt(rng.uniform(0, 1, m) * self.radius2)
            z = np.stack([r * np.cos(angle), r * np.sin(angle)], axis=1)
            pts = self.center + z @ chol.T
            if strict:
                pts = pts[self.contains(pts)]
            out.append(pts)
            total += len(pts)
            if total >= n:
                break
        pts = np.concatenate(out) if out else np.empty((0, 2))
        if len(pts) < n:  # a thin intersection: fall back to clipped points
            extra = self.center + rng.standard_normal((n, 2)) @ chol.T
            pts = np.concatenate([pts, self.clip_to_box(extra)])
        return pts[:n]

    def recentred(self, center: np.ndarray, shape: np.ndarray, *, keep: np.ndarray) -> TrustRegion:
        """A new region around ``center`` with ``shape`` (same mass), grown as needed so that it
        still contains every point of ``keep`` (the best point seen, say)."""
        region = replace(self, center=np.asarray(center, float), shape=np.asarray(shape, float))
        if len(keep):
            need = float(np.max(region.distance2(keep)))
            if need > region.radius2:
                region = replace(region, radius2=need * 1.0001)
        return region
