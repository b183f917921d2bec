r"""The landscape model: a convex bowl in law-normalised coordinates, fitted in closed form.

Near the optimum the log-loss of a run at law-normalised :math:`w = (u, v)` and scale :math:`s`
is modelled as a quadratic bowl with one offset per scale:

.. math::

    y = \ln L(w, s) = c_s + (w - w^*)^\top H (w - w^*) + \varepsilon
      = c'_s + b^\top w + w^\top A w + \varepsilon

with :math:`A = H` positive definite and :math:`w^* = -\tfrac12 A^{-1} b`. The second form
is linear in :math:`\theta = (c'_1, \dots, c'_S, b_u, b_v, a_{uu}, a_{uv}, a_{vv})`, so the
posterior is Gaussian and closed form (Bayesian linear regression):

.. math::

    P = P_0 + \Phi^\top \Omega \Phi / \sigma^2, \qquad
    \bar\theta = P^{-1} (P_0 \theta_0 + \Phi^\top \Omega y / \sigma^2)

Priors: :math:`A \sim \mathcal N(H_0, \mathrm{diag}(s_H^2))` from the curvature of the released
dense grids (``priors/data/landscape.toml``); :math:`b \sim \mathcal N(-2 H_0 \mu, 4 H_0 \Sigma
H_0)`, the linearisation of the law prior :math:`w^* \sim \mathcal N(\mu, \Sigma)`; weak priors
on the offsets. The bowl holds near the plateau only (the real landscape steepens into a cliff
at high learning rate and flattens at low), so each point is weighted by its loss gap :math:`g`
to the best point at its scale, :math:`\omega = 1 / (1 + (g/\tau)^2)`, and points more than
``cut`` above the best are left out of the fit, except where the bowl puts one below that
level (by more than twice the noise): such a run enters at the cut, with the cut's weight (a
censored observation, "at least ``cut`` worse"; :data:`CENSOR_ROUNDS`). Once the plateau is
mapped the window is narrow (τ = 0.2 %, cut = 0.6 %, ``scripts/fit_landscape.py``): fitted to
the whole released grids, a
bowl with this window puts its bottom on cells 0.030 % above each grid's best on average, one
with τ = 1 %, cut = 5 % 0.165 % — the wide window leans on the flat low-lr side and drags the
bottom there. While runs are few and far apart the window widens, up to that wide one, until it
holds them (:func:`window_widening`): then the far runs are what bounds the bowl.

The curvature prior comes from the released grids, but a landscape far from a law's validity
range (a tiny proxy model, a new optimiser) can be far steeper. A curvature scale
:math:`\kappa \ge 1` — the median ratio of observed gaps to the gaps the prior curvature
predicts, over runs where that prediction exceeds the noise — multiplies the curvature prior, the
weights' gap scale and the cut (:func:`estimate_curvature_scale`); on the released grids it
stays at 1 and the benchmark is unchanged.

**Asymmetry.** The released grids rise faster towards high learning rates (where training
diverges) than towards low ones: a cubic term :math:`k (u - u_\mathrm{ref})^3` fitted with the
quadratic on each grid has k > 0 in 16 of 17 settings (``scripts/fit_landscape.py``). The bowl
carries it, with a prior on k from those fits, centred on the symmetric bowl's bottom
:math:`u_\mathrm{ref}` (a first, symmetric fit), where the curvature prior was measured. The
term stays linear in θ, so the fit stays closed form, and so does the bottom
(:class:`BowlPosterior`). It is a cubic only within ``ASYMMETRY_REACH`` (1 ln unit) of
:math:`u_\mathrm{ref}` and follows its tangent beyond (:func:`asymmetry`): a bare cubic falls
without bound on the flat side. Without it a symmetric bowl puts its bottom on the flat side: fitted
to each whole released grid, 0.15 ln units of lr below where a Gaussian-process smoother of
the same grid does (0.06 below a cubic smoother's; ``scripts/bowl_floor.py``).

**Drift** (optional, ``fit_bowl(scale_x=…, drift_cov=…)``). The law's error need not be the
same at every scale: a new architecture or optimiser can change the exponents, so the offset
of the optimum from the law moves with scale, :math:`w^*_s = w^* + \Gamma x_s` with
:math:`x_s = (\ln N_s - \ln N_t, \ln D_s - \ln D_t)` (zero at the target). The linear term
at scale s is then :math:`b + G x_s` with :math:`G = -2 A \Gamma`: four more columns
:math:`[u x_N, u x_D, v x_N, v x_D]`, still linear in θ, with the prior on Γ mapped to G
(:func:`drift_prior_cov`; ``priors.drift_covariance`` builds that prior from a law card).
Proxies at several scales that agree on a trend carry it to the target; proxies at one scale
move the target only as far as the prior on Γ lets their offset be a drift rather than an
error shared by every scale.

**Scale scatter** (optional, with drift: ``fit_bowl(scatter_cov=…)``, in a sampler
``bowl_prior=BowlPrior.default().with_scale_scatter()``; off by default). No landscape follows a
smooth trend exactly: on the released grids the noise-free optima of the 17 settings scatter about a
linear trend in (ln N, ln D) by sd 0.10 in u and 0.12 in v (``scripts/fit_landscape.py``). Without a
term for it, a proxy scale whose bottom sits off the line through the others is read as a drift and
extrapolated to the target. Each scale away from the target gets its own offset :math:`\varepsilon_s
\sim \mathcal N(0, r\,\Sigma_\varepsilon)`, two more columns :math:`[u 1_s, v 1_s]` per scale, with
the width r a mixture (about none, as measured, three times the sd) that each study's runs weigh by
their evidence: proxies that agree keep their move, a scale that disagrees is read as its own
scatter. Measured (docs/bench.md, "Scale scatter"), it helped where the proxies' offsets were noise
(the released grids) and hurt on the built-in trainer far from the law's data, so it is not the
default.

The optimum's posterior is that of :math:`-\tfrac12 A^{-1} b` under :math:`\theta`'s posterior,
sampled (Thompson sampling draws one sample), with :math:`A` projected onto the positive-definite
cone by clipping its eigenvalues at a floor.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from functools import cache, cached_property
from importlib import resources
from typing import Any

import numpy as np

from steplaw_opt.errors import SteplawInputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: The drift prior may be a scale mixture, Γ ~ Σ_d q_d N(0, d·S_Γ), the marginal likelihood of
#: the runs weighing the parts. The default is S_Γ alone
#: (:func:`~steplaw_opt.priors.drift_covariance`: how far published laws disagree along the
#: compute-optimal line D ∝ N, where all of them were fitted; sd ~0.07 per ln unit).
#: :data:`WIDE_DRIFT` adds a part four times as wide: along one axis at a time the laws
#: disagree about that much (at fixed N, d ln lr*/d ln D is +0.31 for the Step Law, 0 for
#: Porian et al. and Kaplan et al., −0.125 for DeepSeek; d ln B*/d ln D 0.571, 0, 0.327). Measured
#: (``steplaw-opt bench --proxy``, docs/bench.md): the wide part follows landscapes whose error
#: drifts strongly a little better, but proxies at one or two nearby scales cannot tell a drift
#: from a constant offset, and there it kept the target near the law (the built-in trainer's
#: demo: 5.9 % below the law's loss instead of 24 %), so it is not the default.
DRIFT_WIDTHS: tuple[float, ...] = (1.0,)
DRIFT_WEIGHTS: tuple[float, ...] = (1.0,)
WIDE_DRIFT = {"drift_widths": (1.0, 16.0), "drift_weights": (0.5, 0.5)}


@dataclass(frozen=True)
class BowlPrior:
    r"""Prior on the bowl's curvature and the model's noise, in ln-loss units.

    ``h_mean``/``h_sd``: (H_uu, H_uv, H_vv) per unit² of (u, v); ``noise_sd``: the scatter of
    ln L around the bowl near the optimum (measurement noise plus misfit); ``tau``, ``cut``:
    gap scale of the weights and the gap beyond which points are left out; ``k_mean``/``k_sd``:
    the prior of the asymmetry term :math:`k\,g(u - u_\mathrm{ref})`, g = :func:`asymmetry`
    (``k_sd = 0``: a symmetric bowl); ``measured_noise_sd``, ``misfit_sd``: what the refined
    optimum's intervals use (:func:`~steplaw_opt.samplers.refined_optimum`).
    """

    h_mean: np.ndarray
    h_sd: np.ndarray
    noise_sd: float = 1e-3
    tau: float = 0.01
    cut: float = 0.05
    min_eig: float = 5e-4
    wide_tau: float = 0.01  # the widest window (:func:`window_widening`)
    wide_cut: float = 0.05
    # The law's error as a scale mixture: w* ~ Σ_c p_c N(μ, c·Σ) (see fit_bowl).
    law_widths: tuple[float, ...] = (1.0,)
    law_weights: tuple[float, ...] = (1.0,)
    # The drift's prior as a scale mixture too: Γ ~ Σ_d q_d N(0, d·S_Γ) (when drift is on).
    drift_widths: tuple[float, ...] = DRIFT_WIDTHS
    drift_weights: tuple[float, ...] = DRIFT_WEIGHTS
    # Each scale's own offset of the bottom about the drift's trend (with drift terms), a
    # scale mixture ε_s ~ Σ_e r_e N(0, e·diag(scatter_sd²)); scatter_sd (0, 0): none, the
    # default (:meth:`with_scale_scatter` turns it on at measured_scatter_sd).
    scatter_sd: tuple[float, float] = (0.0, 0.0)
    measured_scatter_sd: tuple[float, float] = (0.0, 0.0)
    scatter_widths: tuple[float, ...] = (1.0,)
    scatter_weights: tuple[float, ...] = (1.0,)
    # The cliff's asymmetry: k · asymmetry(u − u_ref), k ~ N(k_mean, k_sd²); k_sd = 0: none.
    k_mean: float = 0.0
    k_sd: float = 0.0
    # For the refined optimum's intervals: the noise as measured (``noise_sd`` keeps headroom
    # for the fit; None: ``noise_sd``), and the bowl's own misfit, the (u, v) scatter of its
    # bottom around the landscape's that no number of runs removes.
    measured_noise_sd: float | None = None
    misfit_sd: tuple[float, float] = (0.0, 0.0)

    @property
    def H0(self) -> np.ndarray:
        a, b, c = self.h_mean
        return np.array([[a, b], [b, c]])

    @classmethod
    def default(cls) -> BowlPrior:
        return _default_bowl_prior()

    @classmethod
    def from_table(cls, data: dict[str, Any]) -> BowlPrior:
        """The prior from a ``[bowl]`` table as priors/data/landscape.toml stores it."""
        return cls(
            h_mean=np.array(data["h_mean"], dtype=float),
            h_sd=np.array(data["h_sd"], dtype=float),
            noise_sd=float(data["noise_sd"]),
            tau=float(data["tau"]),
            cut=float(data["cut"]),
            min_eig=float(data["min_eig"]),
            wide_tau=float(data.get("wide_tau", 0.01)),
            wide_cut=float(data.get("wide_cut", 0.05)),
            law_widths=tuple(float(x) for x in data.get("law_error_widths", [1.0])),
            law_weights=tuple(float(x) for x in data.get("law_error_weights", [1.0])),
            drift_widths=tuple(float(x) for x in data.get("drift_widths", DRIFT_WIDTHS)),
            drift_weights=tuple(float(x) for x in data.get("drift_weights", DRIFT_WEIGHTS)),
            k_mean=float(data.get("k_mean", 0.0)),
            k_sd=float(data.get("k_sd", 0.0)),
            measured_noise_sd=(
                float(data["measured_noise_sd"]) if "measured_noise_sd" in data else None
            ),
            misfit_sd=tuple(float(x) for x in data.get("misfit_sd", (0.0, 0.0))),  # type: ignore[arg-type]
            scatter_sd=tuple(float(x) for x in data.get("scatter_sd", (0.0, 0.0))),  # type: ignore[arg-type]
            measured_scatter_sd=tuple(  # type: ignore[arg-type]
                float(x) for x in data.get("measured_scatter_sd", (0.0, 0.0))
            ),
            scatter_widths=tuple(float(x) for x in data.get("scatter_widths", [1.0])),
            scatter_weights=tuple(float(x) for x in data.get("scatter_weights", [1.0])),
        )

    def with_scale_scatter(self) -> BowlPrior:
        """This prior with each proxy scale's own scatter of the bottom about the drift's trend
        turned on, at the sd measured on the released grids (``measured_scatter_sd``).

        >>> from steplaw_opt.landscape import BowlPrior
        >>> bowl = BowlPrior.default()
        >>> bowl.scatter_cov is None, bowl.with_scale_scatter().scatter_sd
        (True, (0.0963, 0.1192))
        """
        if not all(x > 0 for x in self.measured_scatter_sd):
            raise SteplawInputError("this bowl prior has no measured_scatter_sd to turn on")
        return dataclasses.replace(self, scatter_sd=self.measured_scatter_sd)

    @property
    def scatter_cov(self) -> np.ndarray | None:
        """diag(scatter_sd²), the prior covariance of a scale's own offset of the bottom
        (``fit_bowl(scatter_cov=…)``); None when ``scatter_sd`` is zero."""
        sd = np.asarray(self.scatter_sd, dtype=float)
        return np.diag(sd**2) if np.all(sd > 0) else None

    def scaled(self, kappa: float) -> BowlPrior:
        """The same shape, ``kappa`` times steeper: curvature, the gap scale of the weights and
        the cut all scale with it; the noise does not."""
        if kappa == 1.0:
            return self
        return dataclasses.replace(
            self,
            h_mean=self.h_mean * kappa,
            h_sd=self.h_sd * kappa,
            tau=self.tau * kappa,
            cut=self.cut * kappa,
            min_eig=self.min_eig * kappa,
            wide_tau=self.wide_tau * kappa,
            wide_cut=self.wide_cut * kappa,
            k_mean=self.k_mean * kappa,
            k_sd=self.k_sd * kappa,
        )


@cache
def _default_bowl_prior() -> BowlPrior:
    text = resources.files("steplaw_opt.priors").joinpath("data", "landscape.toml").read_text()
    return BowlPrior.from_table(tomllib.loads(text)["bowl"])


def estimate_curvature_scale(
    w: np.ndarray, y: np.ndarray, groups: np.ndarray, n_groups: int, bowl: BowlPrior
) -> float:
    r"""How much steeper the observed landscape is than the released grids' curvature prior.

    For every run whose predicted gap to its scale's best run under the prior curvature,
    :math:`q_i = (w_i - w_b)^\top H_0 (w_i - w_b)`, exceeds twice the noise, the ratio of the
    observed gap to :math:`q_i`; the median ratio, never below 1. On landscapes like the Step
    Law grids it is about 1; far from a law's validity range (a tiny model, a new optimiser) a
    landscape can be tens of times steeper, and a bowl with the grids' curvature would treat
    every informative run as an outlier.
    """
    if len(y) < 3:
        return 1.0
    ratios = []
    h0 = bowl.H0
    for g in range(n_groups):
        in_g = np.flatnonzero(groups == g)
        if len(in_g) < 2:
            continue
        b = in_g[np.argmin(y[in_g])]
        d = w[in_g] - w[b]
        q = np.einsum("ni,ij,nj->n", d, h0, d)
        gap = y[in_g] - y[b]
        usable = q > 2 * bowl.noise_sd
        ratios.extend((gap[usable] / q[usable]).tolist())
    if len(ratios) < 2:
        return 1.0
    return float(np.clip(np.median(ratios), 1.0, 1e3))


def scatter_groups(scale_x: np.ndarray | None) -> np.ndarray:
    """The groups that get their own scatter of the bottom: every group away from the target's
    scale (a nonzero row of ``scale_x``). The target's bottom is w* itself."""
    if scale_x is None:
        return np.zeros(0, dtype=int)
    return np.flatnonzero(np.any(np.asarray(scale_x) != 0, axis=1))


def features(
    w: np.ndarray,
    groups: np.ndarray,
    n_groups: int,
    u_ref: float | None = None,
    scale_x: np.ndarray | None = None,
    scatter: bool = False,
) -> np.ndarray:
    """Design matrix rows ``[onehot(group), u, v, u², 2uv, v²]``, the asymmetry term
    :func:`asymmetry` of ``u − u_ref`` when the bowl has one (``u_ref`` not None), the
    drift terms ``[u·x_N, u·x_D, v·x_N, v·x_D]`` when it has those (``scale_x``: each group's
    ``(ln N − ln N_t, ln D − ln D_t)``, ``n_groups × 2``), and with ``scatter`` (drift terms
    only) ``[u·1_s, v·1_s]`` for each group s of :func:`scatter_groups`: that scale's own
    offset of the bottom from the trend."""
    w = np.atleast_2d(w)
    groups = np.asarray(groups, dtype=int)
    u, v = w[:, 0], w[:, 1]
    onehot = np.zeros((len(w), n_groups))
    onehot[np.arange(len(w)), groups] = 1.0
    cols = [onehot, u, v, u * u, 2 * u * v, v * v]
    if u_ref is not None:
        cols.append(asymmetry(u - u_ref))
    if scale_x is not None:
        x = np.asarray(scale_x, dtype=float)[groups]
        cols.extend([u * x[:, 0], u * x[:, 1], v * x[:, 0], v * x[:, 1]])
        if scatter:
            for s in scatter_groups(scale_x):
                at_s = (groups == s).astype(float)
                cols.extend([u * at_s, v * at_s])
    return np.column_stack(cols)


def drift_prior_cov(h0: np.ndarray, gamma_cov: np.ndarray) -> np.ndarray:
    r"""The prior covariance of the drift coefficients :math:`G` (row-major
    :math:`(G_{uN}, G_{uD}, G_{vN}, G_{vD})`) implied by a prior :math:`\mathrm{vec}\,\Gamma
    \sim \mathcal N(0, S_\Gamma)` on how the optimum moves with scale: the bottom at scale
    :math:`s` is :math:`w^*_s = w^* + \Gamma x_s`, so the linear term is
    :math:`b_s = -2 H w^*_s = b + G x_s` with :math:`G = -2 H \Gamma`, i.e.
    :math:`\mathrm{vec}\,G = L\,\mathrm{vec}\,\Gamma`, :math:`L = -2 (H \otimes I_2)`."""
    lin = -2.0 * np.kron(np.asarray(h0, dtype=float), np.eye(2))
    cov = lin @ np.asarray(gamma_cov, dtype=float) @ lin.T
    return 0.5 * (cov + cov.T)


def asymmetry(t: np.ndarray) -> np.ndarray:
    """The asymmetry feature: t³ within ``ASYMMETRY_REACH`` of the reference, continued by its
    tangent beyond. A bare cubic falls without bound on the flat side — k t³ with k > 0 made the
    bowl predict ever lower losses towards tiny learning rates, and expected improvement sent
    the demo's plateau-mapping runs to the lr floor; the tangent keeps the quadratic in charge
    far out."""
    t = np.asarray(t, dtype=float)
    r = ASYMMETRY_REACH
    far = np.sign(t) * (r**3 + 3 * r**2 * (np.abs(t) - r))
    return np.where(np.abs(t) <= r, t**3, far)


def project_pd(a: np.ndarray, floor: float) -> np.ndarray:
    """Clip the eigenvalues of symmetric 2×2 matrices (``…×2×2``) at ``floor``."""
    # The smaller eigenvalue in closed form: most matrices need no clipping, and the sampler
    # projects thousands of posterior draws per proposal.
    half_trace = 0.5 * (a[..., 0, 0] + a[..., 1, 1])
    radius = np.hypot(0.5 * (a[..., 0, 0] - a[..., 1, 1]), a[..., 0, 1])
    low = half_trace - radius < floor
    if not np.any(low):
        return a
    # Only the matrices that need it: a few posterior draws among thousands, usually.
    vals, vecs = np.linalg.eigh(a[low])
    vals = np.maximum(vals, floor)
    out = np.array(a, dtype=float, copy=True)
    out[low] = np.einsum("...ij,...j,...kj->...ik", vecs, vals, vecs)
    return out


# The asymmetry term is the released grids'; on a landscape more than this many times steeper
# (the curvature scale κ) it is left out.
ASYMMETRY_MAX_STEEPENING = 3.0
# How far from its reference the asymmetry term is a cubic, and the asymmetric bowl's bottom
# may lie (ln units): beyond it the term continues linearly (:func:`asymmetry`).
ASYMMETRY_REACH = 1.0


@dataclass(frozen=True)
class BowlPosterior:
    r"""The Gaussian posterior over θ, and what follows from it.

    With an asymmetry term (``u_ref`` not None) the bowl is
    :math:`c' + b^\top w + w^\top A w + k (u - u_\mathrm{ref})^3`. Its bottom is closed form:
    minimising over v first leaves :math:`f(u) = \beta u + \alpha u^2 + k (u - u_\mathrm{ref})^3`
    with :math:`\alpha = A_{uu} - A_{uv}^2 / A_{vv}`, :math:`\beta = b_u - A_{uv} b_v / A_{vv}`,
    and, within ``ASYMMETRY_REACH`` of the reference where the term is a cubic,
    :math:`f'(u) = 0` is a quadratic in :math:`t = u - u_\mathrm{ref}` whose root with
    :math:`f'' > 0` is :math:`t = -2 c_0 / (2\alpha + \sqrt{4\alpha^2 - 12 k c_0})`,
    :math:`c_0 = \beta + 2 \alpha u_\mathrm{ref}` (stable as k → 0, where it is the symmetric
    bowl's bottom); :math:`v^* = -(b_v + 2 A_{uv} u^*) / (2 A_{vv})`.
    """

    mean: np.ndarray
    cov: np.ndarray
    n_groups: int
    min_eig: float
    width_weights: tuple[float, ...] = (1.0,)  # posterior weight of each law_widths entry
    u_ref: float | None = None  # centre of the asymmetry term (None: a symmetric bowl)
    window: tuple[float, float] = (0.01, 0.05)  # the (τ, cut) of the weights the fit used
    # Each group's (ln N − ln N_t, ln D − ln D_t) when the bowl has drift terms (None: the
    # bottom is the same at every scale). The target's row is zero, so its bottom is the
    # drift-free formula's.
    scale_x: np.ndarray | None = None
    # With drift terms: whether each scale away from the target has its own scatter of the
    # bottom about the trend (:func:`scatter_groups`), after the drift coefficients in θ.
    scatter: bool = False

    def _split(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        g = self.n_groups
        c = theta[..., :g]
        b = theta[..., g : g + 2]
        a = np.empty((*theta.shape[:-1], 2, 2))
        a[..., 0, 0] = theta[..., g + 2]
        a[..., 0, 1] = a[..., 1, 0] = theta[..., g + 3]
        a[..., 1, 1] = theta[..., g + 4]
        return c, b, a

    def _k(self, theta: np.ndarray) -> np.ndarray:
        if self.u_ref is None:
            return np.zeros(theta.shape[:-1])
        return theta[..., self.n_groups + 5]

    def _bottom(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(w*, local A) of bowls θ (``…×k``): the bottom and the curvature matrix there."""
        _, b, a = self._split(theta)
        a = project_pd(a, self.min_eig)
        if self.u_ref is None:
            return -0.5 * np.linalg.solve(a, b[..., None])[..., 0], a
        k = self._k(theta)
        auu, auv, avv = a[..., 0, 0], a[..., 0, 1], a[..., 1, 1]
        alpha = auu - auv**2 / avv  # > 0: a is positive definite
        beta = b[..., 0] - auv * b[..., 1] / avv
        c0 = beta + 2 * alpha * self.u_ref
        disc = np.maximum(4 * alpha**2 - 12 * k * c0, 0.0)  # < 0: no local minimum; take the
        t = -2 * c0 / (2 * alpha + np.sqrt(disc))  # inflection's side, then bound the reach
        t = np.clip(t, -ASYMMETRY_REACH, ASYMMETRY_REACH)
        u = self.u_ref + t
        v = -(b[..., 1] + 2 * auv * u) / (2 * avv)
        local = a.copy()
        local[..., 0, 0] = a[..., 0, 0] + 3 * k * t
        return np.stack([u, v], axis=-1), project_pd(local, self.min_eig)

    @cached_property
    def _mean_bottom(self) -> tuple[np.ndarray, np.ndarray]:
        # Once per posterior: a suggestion asks for the bottom and its curvature many times.
        return self._bottom(self.mean)

    @property
    def hessian(self) -> np.ndarray:
        """The curvature matrix A at the bowl's bottom (A itself for a symmetric bowl)."""
        return self._mean_bottom[1].copy()

    def optimum(self) -> np.ndarray:
        """w* of the posterior-mean bowl."""
        return self._mean_bottom[0].copy()

    def sample_theta(self, rng: np.random.Generator, n: int) -> np.ndarray:
        chol = np.linalg.cholesky(self.cov + 1e-12 * np.eye(len(self.mean)))
        return self.mean + rng.standard_normal((n, len(self.mean))) @ chol.T

    def sample_optima(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` draws of w* from the posterior (``n × 2``)."""
        return self._bottom(self.sample_theta(rng, n))[0]

    def predict(self, w: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and variance of the bowl (ln L, without noise) at ``w`` for ``group``."""
        phi = self._features(w, group)
        mean = phi @ self.mean
        var = np.einsum("ni,ij,nj->n", phi, self.cov, phi)
        return mean, np.maximum(var, 0.0)

    def _features(self, w: np.ndarray, group: int) -> np.ndarray:
        return self.design(w, np.full(len(np.atleast_2d(w)), group))

    def design(self, w: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """The design rows of runs at ``w`` in ``groups``, with this bowl's terms."""
        return features(w, groups, self.n_groups, self.u_ref, self.scale_x, self.scatter)

    def drift(self) -> np.ndarray | None:
        r"""The posterior-mean drift :math:`\Gamma` (2 × 2: rows u, v; columns ln N, ln D),
        :math:`\Gamma = -\tfrac12 A^{-1} G` at the bowl's curvature; None without drift
        terms."""
        if self.scale_x is None:
            return None
        g = self.mean[self._drift_start : self._drift_start + 4].reshape(2, 2)
        return -0.5 * np.linalg.solve(self.hessian, g)

    @property
    def _drift_start(self) -> int:
        return self.n_groups + 5 + (self.u_ref is not None)

    def scatter_of(self, group: int) -> np.ndarray:
        r"""``group``'s own offset of the bottom from the drift's trend, :math:`\varepsilon_s =
        -\tfrac12 A^{-1} e_s` at the posterior mean (zero at the target's scale, and without
        scatter terms)."""
        if not self.scatter or self.scale_x is None:
            return np.zeros(2)
        where = np.flatnonzero(scatter_groups(self.scale_x) == group)
        if not len(where):
            return np.zeros(2)
        start = self._drift_start + 4 + 2 * int(where[0])
        return -0.5 * np.linalg.solve(self.hessian, self.mean[start : start + 2])

    def optimum_at(self, group: int) -> np.ndarray:
        r"""w* at ``group``'s scale: :meth:`optimum` moved by the drift, :math:`w^* + \Gamma
        x_s` (the target's own without drift terms)."""
        return self.optimum() + self.shift(group)

    def shift(self, group: int) -> np.ndarray:
        r"""How far ``group``'s bottom lies from the target's, :math:`\Gamma x_s +
        \varepsilon_s` at the posterior mean (zero without drift terms)."""
        gamma = self.drift()
        if gamma is None or self.scale_x is None:
            return np.zeros(2)
        return gamma @ self.scale_x[group] + self.scatter_of(group)

    def offset(self, group: int) -> float:
        """ln L at the bowl's bottom for ``group`` (at that scale's bottom)."""
        return float(self.predict(self.optimum_at(group)[None], group)[0][0])

    def optimum_jacobian(self, eps: float = 1e-6) -> np.ndarray:
        """∂w*/∂θ at the posterior mean (2 × len(θ)), by central differences."""
        if eps == 1e-6:
            return self._jacobian.copy()
        return self._central_jacobian(eps)

    @cached_property
    def _jacobian(self) -> np.ndarray:
        return self._central_jacobian(1e-6)

    def _central_jacobian(self, eps: float) -> np.ndarray:
        step = np.eye(len(self.mean)) * eps
        plus = self._bottom(self.mean + step)[0]
        minus = self._bottom(self.mean - step)[0]
        return ((plus - minus) / (2 * eps)).T

    def design_gain(
        self, w: np.ndarray, group: int, noise_sd: float, weight: np.ndarray
    ) -> np.ndarray:
        r"""How much one more run at each of ``w`` would lower the expected loss of training at
        the bowl's bottom, in ln-loss units.

        Training at an estimate :math:`\hat w` of the bottom costs
        :math:`(\hat w - w^*)^\top A (\hat w - w^*)`; under the posterior (w* linearised in θ,
        :math:`J = \partial w^* / \partial \theta`) its expectation is
        :math:`\mathrm{tr}(A J \Sigma J^\top)`. A run at w with features φ, entering the fit
        with ``weight`` ω, updates Σ by a rank-one step, which lowers the expectation by

        .. math::

            \frac{(J \Sigma \varphi)^\top A \, (J \Sigma \varphi)}
                 {\sigma^2 / \omega + \varphi^\top \Sigma \varphi}.

        The numerator favours runs that move the estimate of the bottom (far enough out that
        the slope shows above the noise), the weight keeps them where the bowl holds.
        """
        phi = self._features(w, group)
        j = self.optimum_jacobian()
        s_phi = phi @ self.cov
        moved = s_phi @ j.T
        num = np.einsum("ni,ij,nj->n", moved, self.hessian, moved)
        den = noise_sd**2 / np.maximum(weight, 1e-12) + np.einsum("ni,ni->n", s_phi, phi)
        return num / den


# The window narrows to (tau, cut) only once this many runs lie inside it. A sparse study needs
# its far runs: on the built-in trainer, far from the law's range, a narrow window at 9 proxy runs
# dropped the one run that bounded the learning rate from below, and the refined optimum landed
# 9x below the truth (25 % worse at the target than with the wide window).
WINDOW_POINTS = 16
#: Rounds of :func:`fit_bowl`'s censoring of runs beyond the cut (each adds the runs the last fit
#: put below their censoring level; it stops as soon as none is).
CENSOR_ROUNDS = 4


def window_widening(gap: np.ndarray, bowl: BowlPrior) -> tuple[float, float]:
    """The weight window (τ, cut) for runs with these ``gap``s to their scale's best: the narrow
    one once ``WINDOW_POINTS`` runs lie inside it (a densely mapped plateau, where the wide
    window would bias the bottom), else widened by one factor until it holds them all or
    ``WINDOW_POINTS`` of them, but never beyond the wide window (``wide_tau``, ``wide_cut``)."""
    if len(gap) == 0:
        return bowl.tau, bowl.cut
    need = min(len(gap), WINDOW_POINTS)
    reach = float(np.sort(gap)[need - 1])
    factor = max(reach * (1 + 1e-9) / bowl.cut, 1.0)
    return min(bowl.tau * factor, bowl.wide_tau), min(bowl.cut * factor, bowl.wide_cut)


def fit_bowl(
    w: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    n_groups: int,
    *,
    prior_mean: np.ndarray,
    prior_cov: np.ndarray,
    bowl: BowlPrior | None = None,
    curvature_scale: float | str = "auto",
    scale_x: np.ndarray | None = None,
    drift_cov: np.ndarray | None = None,
    scatter_cov: np.ndarray | None = None,
) -> BowlPosterior:
    r"""Fit the bowl to observations ``w`` (n×2), ``y = ln L`` (n), ``groups`` (n, ints).

    ``prior_mean``/``prior_cov``: the law prior over w* (at the target). Works with zero
    observations (the posterior is then the prior). ``curvature_scale`` multiplies the
    curvature prior, the gap weights and the cut (:meth:`BowlPrior.scaled`); ``"auto"``
    estimates it from the data (:func:`estimate_curvature_scale`).

    ``scale_x`` (``n_groups × 2``, each group's :math:`x_s = (\ln N_s - \ln N_t, \ln D_s -
    \ln D_t)`) and ``drift_cov`` (4 × 4, the prior covariance of :math:`\mathrm{vec}\,\Gamma`,
    row-major over (u, v) × (ln N, ln D)) give the bowl a bottom that moves with scale,
    :math:`w^*_s = w^* + \Gamma x_s`: runs at other scales then inform the target's bottom
    only as far as the prior on Γ lets their offsets carry (:func:`drift_prior_cov`, mapped
    through the prior curvature :math:`H_0`, so that the fit stays linear: where the fitted
    curvature :math:`A` differs, the prior in force on Γ is scaled by :math:`A^{-1} H_0`). Without
    them (or when every group is the target's scale) the bottom is shared by all scales.

    ``scatter_cov`` (2 × 2, with the drift terms only) gives every scale away from the target
    its own offset about the trend, :math:`w^*_s = w^* + \Gamma x_s + \varepsilon_s`,
    :math:`\varepsilon_s \sim \mathcal N(0, \Sigma_\varepsilon)`: a scale's bottom that
    sits off the line through the others is read as that scale's scatter, not as a drift to
    extrapolate. Its linear term is :math:`e_s = -2 H \varepsilon_s`, prior
    :math:`4 H \Sigma_\varepsilon H` at the same curvature H as the drift's.
    """
    bowl = bowl or BowlPrior.default()
    w = np.asarray(w, dtype=float).reshape(-1, 2)
    y = np.asarray(y, dtype=float).reshape(-1)
    groups = np.asarray(groups, dtype=int).reshape(-1)
    if not (len(w) == len(y) == len(groups)):
        raise SteplawInputError("w, y and groups must have the same length")
    if not np.all(np.isfinite(y)):
        raise SteplawInputError("bowl observations must be finite")
    if (scale_x is None) != (drift_cov is None):
        raise SteplawInputError("scale_x and drift_cov go together: pass both or neither")
    if scale_x is not None:
        scale_x = np.asarray(scale_x, dtype=float)
        if scale_x.shape != (n_groups, 2) or not np.all(np.isfinite(scale_x)):
            raise SteplawInputError(
                f"scale_x must be a finite {n_groups}×2 array, got shape {scale_x.shape}"
            )
        drift_cov = np.asarray(drift_cov, dtype=float)
        if drift_cov.shape != (4, 4) or not np.all(np.isfinite(drift_cov)):
            raise SteplawInputError(f"drift_cov must be a finite 4×4 array, got {drift_cov.shape}")
        if np.linalg.eigvalsh(0.5 * (drift_cov + drift_cov.T)).min() <= 0:
            raise SteplawInputError("drift_cov must be positive definite")
        if scatter_cov is not None:
            scatter_cov = np.asarray(scatter_cov, dtype=float)
            if (
                scatter_cov.shape != (2, 2)
                or not np.all(np.isfinite(scatter_cov))
                or np.linalg.eigvalsh(0.5 * (scatter_cov + scatter_cov.T)).min() <= 0
            ):
                raise SteplawInputError(
                    f"scatter_cov must be a positive definite 2×2 array, got {scatter_cov.tolist()}"
                )
        if not np.any(scale_x):  # every group at the target's scale: nothing to drift
            scale_x = drift_cov = scatter_cov = None
    elif scatter_cov is not None:
        raise SteplawInputError("scatter_cov needs the drift terms (scale_x and drift_cov)")
    if curvature_scale == "auto":
        curvature_scale = estimate_curvature_scale(w, y, groups, n_groups, bowl)
    bowl = bowl.scaled(float(curvature_scale))
    if float(curvature_scale) > ASYMMETRY_MAX_STEEPENING:
        # Far steeper than the released grids (a tiny model far below the law's data): their
        # asymmetry says nothing here, and scaled up it bent the built-in trainer's bowl so far
        # that its bottom went to a corner of the bounds. A symmetric bowl there.
        bowl = dataclasses.replace(bowl, k_sd=0.0)
    for name in ("law", "drift", "scatter"):
        widths = np.asarray(getattr(bowl, f"{name}_widths"), float)
        prior_w = np.asarray(getattr(bowl, f"{name}_weights"), float)
        if (
            not len(widths)
            or len(widths) != len(prior_w)
            or np.any(widths <= 0)
            or np.any(prior_w <= 0)
        ):
            raise SteplawInputError(
                f"{name}_widths and {name}_weights must be positive and of one length"
            )
    window = _window(y, groups, n_groups, bowl)
    drift = None if scale_x is None else (scale_x, drift_cov, scatter_cov)
    post = _fit_all(w, y, groups, n_groups, prior_mean, prior_cov, bowl, window, drift)
    # Runs beyond the cut are left out, but they still say "at least `cut` worse than the best
    # here". Where the bowl puts such a run below that level it is wrong, and left alone it
    # keeps proposing there: a landscape far steeper than the bowl's reach (the built-in
    # trainer's ladder: runs at 4-8x the best batch, 10 % worse, fitted as 1 % worse, and
    # the refined batch ran to the bound). Those runs enter at the censoring level, the
    # active set of a censored likelihood: it only grows, so this ends.
    best = np.full(n_groups, np.inf)
    np.minimum.at(best, groups, y)
    y_fit = y
    for _ in range(CENSOR_ROUNDS):
        level = best[groups] + window[1] * (1 - 1e-9)  # at the cut itself, with its weight
        predicted = post.design(w, groups) @ post.mean
        # Beyond noise only: a bowl that misses a run just past the cut by less (the flanks of
        # a densely mapped plateau) misfits it by no more than the noise.
        below = (y_fit > level) & (predicted < level - 2 * bowl.noise_sd)
        if not np.any(below):
            break
        y_fit = np.where(below, level, y_fit)
        post = _fit_all(w, y_fit, groups, n_groups, prior_mean, prior_cov, bowl, window, drift)
    return post


def _fit_all(
    w: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    n_groups: int,
    prior_mean: np.ndarray,
    prior_cov: np.ndarray,
    bowl: BowlPrior,
    window: tuple[float, float],
    drift_priors: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None,
) -> BowlPosterior:
    """:func:`fit_bowl`'s fit for one set of observations, the window fixed: the drift (and
    scatter) priors, ``(scale_x, drift_cov, scatter_cov)``, mapped through the drift-free fit's
    curvature, then the asymmetric bowl about the symmetric one's bottom."""
    drift = None
    if drift_priors is not None:
        scale_x, drift_cov, scatter_cov = drift_priors
        # The prior on Γ enters through G = −2HΓ at a curvature H, and the fit's Γ is
        # −½A⁻¹G: with H the prior curvature H0 and a fitted curvature A far flatter, the prior
        # in force was S_Γ widened by H0/A (forty-fold on a steep test landscape, which sent
        # the target's lr 5.7 ln units from the law). H is the curvature of the same fit
        # without drift terms instead: every run informs it, and Γ's prior stays S_Γ.
        plain = _fit_mixture(w, y, groups, n_groups, prior_mean, prior_cov, bowl, None, window)
        a = plain.hessian
        h = a if np.linalg.eigvalsh(a).min() > bowl.min_eig else bowl.H0
        e_cov = None if scatter_cov is None else 4.0 * h @ scatter_cov @ h
        drift = (scale_x, drift_prior_cov(h, drift_cov), e_cov)
    post = _fit_mixture(w, y, groups, n_groups, prior_mean, prior_cov, bowl, None, window, drift)
    if bowl.k_sd > 0:
        # The asymmetry term is centred on the symmetric bowl's bottom, where the curvature
        # prior was measured: centred on the law's point instead, a law that is off by δ would
        # need a curvature 3kδ away from the prior's to fit the same landscape.
        u_ref = float(post.optimum()[0])
        post = _fit_mixture(
            w, y, groups, n_groups, prior_mean, prior_cov, bowl, u_ref, window, drift
        )
    return post


def _fit_mixture(
    w: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    n_groups: int,
    prior_mean: np.ndarray,
    prior_cov: np.ndarray,
    bowl: BowlPrior,
    u_ref: float | None,
    window: tuple[float, float],
    drift: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None,
) -> BowlPosterior:
    """The bowl under the law-error mixture of ``bowl`` (one fit per width, averaged), with the
    weight window ``window`` (:func:`window_widening`'s, computed once by :func:`fit_bowl`) and
    ``drift`` = (scale_x, prior covariance of G, prior covariance of each scale's e_s or None)
    when the bottom moves with scale; with drift, one fit per pair of a law width and a drift
    width (``bowl.drift_widths``), and with the scatter one per triple with a scatter width
    (``bowl.scatter_widths``)."""
    scale_x = None if drift is None else drift[0]
    scatter = drift is not None and drift[2] is not None
    # One component per combination of a law width, a drift width and a scatter width.
    parts = [(bowl.law_widths, bowl.law_weights)]
    if drift is not None:
        parts.append((bowl.drift_widths, bowl.drift_weights))
    if scatter:
        parts.append((bowl.scatter_widths, bowl.scatter_weights))
    grids = np.meshgrid(*[np.asarray(p[0], float) for p in parts], indexing="ij")
    probs = np.ones(grids[0].shape)
    for i, (_, weights) in enumerate(parts):
        q = np.asarray(weights, float)
        probs = probs * np.expand_dims(q / q.sum(), [j for j in range(len(parts)) if j != i])
    widths, prior_w = grids[0].ravel(), probs.ravel()
    drift_scales = grids[1].ravel() if drift is not None else None
    scatter_scales = grids[2].ravel() if scatter else None
    data = _weighted_design(w, y, groups, n_groups, window, u_ref, scale_x, scatter)
    means, covs, evidence = _fit_widths(
        data,
        y,
        groups,
        n_groups,
        prior_mean,
        prior_cov,
        widths,
        bowl,
        u_ref,
        drift,
        drift_scales,
        scatter_scales,
    )
    if len(widths) == 1:
        return BowlPosterior(
            means[0],
            covs[0],
            n_groups,
            bowl.min_eig,
            u_ref=u_ref,
            window=window,
            scale_x=scale_x,
            scatter=scatter,
        )
    # Bayesian model averaging over the law's error width: weights ∝ p_c · evidence_c, the
    # mixture moment-matched to one Gaussian over θ.
    log_w = np.log(prior_w / prior_w.sum()) + evidence
    post_w = np.exp(log_w - log_w.max())
    post_w /= post_w.sum()
    mean = post_w @ means
    spread = means - mean
    cov = np.einsum("m,mij->ij", post_w, covs) + np.einsum("m,mi,mj->ij", post_w, spread, spread)
    cov = 0.5 * (cov + cov.T)
    return BowlPosterior(
        mean,
        cov,
        n_groups,
        bowl.min_eig,
        tuple(float(x) for x in post_w),
        u_ref,
        window,
        scale_x,
        scatter,
    )


def gap_weights(gap: np.ndarray, tau: float, cut: float) -> np.ndarray:
    """Each point's weight in the fit from its loss gap to its scale's best:
    1 / (1 + (gap/τ)²), and 0 beyond ``cut``."""
    weight = 1.0 / (1.0 + (gap / tau) ** 2)
    weight[gap > cut] = 0.0
    return weight


def _gaps(y: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    best = np.full(n_groups, np.inf)
    np.minimum.at(best, groups, y)
    return y - best[groups]


def _window(
    y: np.ndarray, groups: np.ndarray, n_groups: int, bowl: BowlPrior
) -> tuple[float, float]:
    return window_widening(_gaps(y, groups, n_groups) if len(y) else np.zeros(0), bowl)


def _weighted_design(
    w: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    n_groups: int,
    window: tuple[float, float],
    u_ref: float | None = None,
    scale_x: np.ndarray | None = None,
    scatter: bool = False,
) -> tuple[np.ndarray, np.ndarray] | None:
    """(design rows, weights) of the observations, ``None`` without any: the part of the fit
    that does not depend on the prior."""
    if not len(y):
        return None
    gap = _gaps(y, groups, n_groups)
    return features(w, groups, n_groups, u_ref, scale_x, scatter), gap_weights(gap, *window)


def _fit_widths(
    data: tuple[np.ndarray, np.ndarray] | None,
    y: np.ndarray,
    groups: np.ndarray,
    n_groups: int,
    prior_mean: np.ndarray,
    prior_cov: np.ndarray,
    widths: np.ndarray,
    bowl: BowlPrior,
    u_ref: float | None = None,
    drift: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None,
    drift_scales: np.ndarray | None = None,
    scatter_scales: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(posterior means m×k, covariances m×k×k, log evidences m) of the bowl under each of the
    Gaussian priors on w* with covariance ``widths[i] · prior_cov``; the evidence is that of the
    weighted observations the fit uses; with ``drift``, component i's prior on G is
    ``drift_scales[i]`` (1 when not given) times ``drift[1]``, and each scattering scale's
    e_s is ``N(0, scatter_scales[i] · drift[2])``. The widths are solved together, as one
    batch."""
    h0 = bowl.H0
    n_drift = 0 if drift is None else 4
    n_scatter = 0 if drift is None or drift[2] is None else 2 * len(scatter_groups(drift[0]))
    k = n_groups + 5 + (u_ref is not None) + n_drift + n_scatter
    m = len(widths)
    theta0 = np.zeros(k)
    # Offsets: centred on each group's best value, weak (ln-loss units, variance 1).
    for g in range(n_groups):
        in_g = groups == g
        theta0[g] = float(np.min(y[in_g])) if np.any(in_g) else 0.0
    prior_var = np.ones(k)
    # Linear term from the law prior on w*: b = −2 H0 w*, its covariance 4 H0 Σ H0 per width.
    theta0[n_groups : n_groups + 2] = -2.0 * h0 @ prior_mean
    b_cov = 4.0 * h0 @ prior_cov @ h0
    theta0[n_groups + 2 : n_groups + 5] = bowl.h_mean
    prior_var[n_groups + 2 : n_groups + 5] = np.square(bowl.h_sd)
    if u_ref is not None:  # the asymmetry k · asymmetry(u − u_ref)
        theta0[n_groups + 5] = bowl.k_mean
        prior_var[n_groups + 5] = bowl.k_sd**2
    b = slice(n_groups, n_groups + 2)
    prior_cov0 = np.repeat(np.diag(prior_var)[None], m, axis=0)  # P0⁻¹, block-diagonal
    prior_cov0[:, b, b] = widths[:, None, None] * b_cov
    prec0 = np.repeat(np.diag(1.0 / prior_var)[None], m, axis=0)
    prec0[:, b, b] = np.linalg.inv(b_cov)[None] / widths[:, None, None]
    if drift is not None:  # G ~ N(0, c_i L S_Γ Lᵀ)
        d = slice(k - n_scatter - n_drift, k - n_scatter)
        c = np.ones(m) if drift_scales is None else np.asarray(drift_scales, float)
        prior_cov0[:, d, d] = c[:, None, None] * drift[1][None]
        prec0[:, d, d] = np.linalg.inv(drift[1])[None] / c[:, None, None]
    if n_scatter:  # e_s ~ N(0, r_i 4 H Σ_ε H), one block per scattering scale
        r = np.ones(m) if scatter_scales is None else np.asarray(scatter_scales, float)
        for j in range(n_scatter // 2):
            e = slice(k - n_scatter + 2 * j, k - n_scatter + 2 * j + 2)
            prior_cov0[:, e, e] = r[:, None, None] * drift[2][None]
            prec0[:, e, e] = np.linalg.inv(drift[2])[None] / r[:, None, None]
    rhs0 = prec0 @ theta0

    log_evidence = np.zeros(m)
    if data is None:
        prec, rhs = prec0, rhs0
    else:
        phi, weight = data
        wphi = phi * (weight / bowl.noise_sd**2)[:, None]
        prec = prec0 + (phi.T @ wphi)[None]
        rhs = rhs0 + (wphi.T @ y)[None]
    cov = np.linalg.inv(prec)
    cov = 0.5 * (cov + np.swapaxes(cov, -1, -2))
    if data is not None and np.any(data[1] > 0):
        # The evidence of the weighted runs, y_used ~ N(Φθ0, D + Φ P0 Φᵀ) with D = diag(σ²/ω),
        # in parameter space (k×k, not n×n): by the matrix determinant lemma and Woodbury,
        # log|D + Φ P0 Φᵀ| = log|D| + log|P0| + log|P| and
        # rᵀ(D + Φ P0 Φᵀ)⁻¹r = rᵀD⁻¹r − gᵀ P⁻¹ g, with P the posterior precision, g = ΦᵀD⁻¹r.
        phi, weight = data
        used = weight > 0
        d_inv = weight[used] / bowl.noise_sd**2
        resid = y[used] - phi[used] @ theta0
        g = phi[used].T @ (d_inv * resid)
        _, logdet_p = np.linalg.slogdet(prec)
        _, logdet_p0 = np.linalg.slogdet(prior_cov0)
        logdet = -np.sum(np.log(d_inv)) + logdet_p0 + logdet_p
        quad = float(resid @ (d_inv * resid)) - np.einsum("i,mij,j->m", g, cov, g)
        log_evidence = -0.5 * (quad + logdet)
    return np.einsum("mij,mj->mi", cov, rhs), cov, log_evidence
