r"""BoTorchPlateauSampler: Gaussian-process BO whose prior mean is the law's fitted bowl,
πBO-weighted expected improvement, confined to the PlateauSampler's trust region.

Everything but the acquisition step is :class:`~steplaw_opt.samplers.PlateauSampler`'s: the
law's point first, the joint proposal cached in trial system attributes, the mapping of every
trial to law-normalised :math:`w = (u, v)` at its own scale, failed and running trials, the
trust region and the repeat exclusion. This module replaces only :meth:`PlateauSampler._pick`,
and keeps BoTorch's three parts apart:

**Model** (:func:`fit_model`). A ``SingleTaskGP`` on :math:`w` for :math:`f = -y`, with
:math:`y` the model target of :meth:`PlateauSampler.history` (ln loss):

.. math::

    f(w) \sim \mathcal{GP}\big(-\beta(w),\ k_\mathrm{RBF}(w, w')\big), \qquad
    \beta(w) = c + (w - w^*)^\top H (w - w^*)

where :math:`\beta` is the posterior-mean bowl of :func:`~steplaw_opt.landscape.fit_bowl`
(:class:`BowlMean`, a fixed GPyTorch mean). With few points the GP is the bowl; with many it
follows the data where they leave the bowl. Inputs are normalised to the bounding box of the
prior's trust region (the same box for every trial of a study), outcomes standardised;
kernel and noise hyper-parameters are MAP-fitted by ``fit_gpytorch_mll`` (BoTorch's default
priors). Trials at other scales (proxy runs) enter with the bowl's per-scale offset removed:
:math:`y_i - (c'_{g_i} - c'_{g})`. Values more than ``clip`` above the best are clipped to
``best + clip`` (the model should resolve the plateau, not the height of the cliff).

**Failures.** A failed trial or a NaN/inf value is an observation at the ceiling
:math:`y_\mathrm{best} + \mathrm{clip}` (worse than anything the model resolves), so the GP
bends away from it; the inherited wall also removes every candidate at or above a failure's
learning rate near its batch.

**Acquisition** (:func:`make_acquisition`). Log expected improvement of :math:`f` over the best
value seen, or — when other workers' trials are RUNNING — ``qLogNoisyExpectedImprovement``
with them as pending points, weighted the πBO way (Hvarfner et al., ICLR 2022) by the law's
prior density :math:`\pi(w) = \mathcal N(w; \mu, \Sigma)` raised to a power that decays with
the number of finished trials :math:`n`:

.. math::

    \log \alpha_{\pi}(w) = \log \mathrm{EI}(w) + \frac{\beta_\pi}{n} \log \pi(w)

(BoTorch's ``PriorGuidedAcquisitionFunction`` with ``log=True``).

**Optimiser** (:func:`optimize_in_region`). ``optimize_acqf`` in the trust region's bounding
box with the ellipse as a non-linear inequality constraint (SLSQP), started from the best of
the PlateauSampler's candidates; a result that repeats a trial or is behind a wall is rejected
for the next-best start, and for the best candidate if every start is rejected. During the
coarse phase (the first ``n_bowl`` trials, by default the PlateauSampler's ``n_coarse``) the
inherited bowl chooses on its √2 lattice: there the bowl is the better model, and the GP has
nothing yet to bend to.

torch, BoTorch and GPyTorch are imported with this module only; everything runs in float64.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import gpytorch
import numpy as np
import optuna
import torch
from botorch.acquisition import (
    AcquisitionFunction,
    LogExpectedImprovement,
    PriorGuidedAcquisitionFunction,
    qLogNoisyExpectedImprovement,
)
from botorch.exceptions.errors import BotorchError, CandidateGenerationError
from botorch.exceptions.warnings import BotorchWarning, InputDataWarning, OptimizationWarning
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms.input import Normalize
from botorch.models.transforms.outcome import Standardize
from botorch.optim import optimize_acqf
from botorch.sampling import SobolQMCNormalSampler
from gpytorch.mlls import ExactMarginalLogLikelihood
from linear_operator.utils.warnings import NumericalWarning
from optuna.samplers import BaseSampler
from torch import Tensor

from steplaw_opt.errors import SteplawInputError
from steplaw_opt.landscape import BowlPosterior, BowlPrior
from steplaw_opt.priors._law import Law
from steplaw_opt.priors._prior import Prior, TrustRegion
from steplaw_opt.samplers._plateau import ATTR_BELIEF, Acquisition, PlateauSampler, _History
from steplaw_opt.scale import Scale
from steplaw_opt.space import BatchUnit

DTYPE = torch.float64
# Clip of the model target above the best value (ln-loss units: 5 %), and the value a failure
# is imputed at (best + clip).
DEFAULT_CLIP = 0.05
# πBO's β: the prior's exponent is β / n after n finished trials.
DEFAULT_PRIOR_BETA = 10.0
MC_SAMPLES = 128


# --------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class GPState:
    """Fitted hyper-parameters: lengthscales in raw (u, v) units, noise variance in
    standardised outcome units."""

    lengthscale: tuple[float, float]
    noise: float

    @classmethod
    def from_belief(cls, belief: Any) -> GPState | None:
        """The state a trial's ``steplaw:belief`` recorded, if it holds a valid one."""
        gp = belief.get("gp") if isinstance(belief, dict) else None
        try:
            ls = tuple(float(x) for x in gp["lengthscale"])
            noise = float(gp["noise"])
        except (TypeError, KeyError, ValueError):
            return None
        if len(ls) != 2 or not all(math.isfinite(x) and x > 0 for x in (*ls, noise)):
            return None
        return cls((ls[0], ls[1]), noise)


class BowlMean(gpytorch.means.Mean):
    r"""The fitted bowl as a fixed GP mean, in the model's transformed spaces.

    For normalised inputs :math:`x \in [0, 1]^2` of the box ``bounds`` (``2×2``: lower, upper
    row) and the outcome transform's mean :math:`m_f` and scale :math:`s_f`:

    .. math::

        \mathrm{mean}(x) = \frac{-\min(\beta(w), y_\mathrm{ceil}) - m_f}{s_f}, \qquad
        w = \mathrm{lo} + x \odot (\mathrm{hi} - \mathrm{lo}), \qquad
        \beta(w) = c + (w - w^*)^\top H (w - w^*)

    The bowl is clipped at the ceiling :math:`y_\mathrm{ceil}` the data are clipped at. The
    outcome transform's statistics are read on every call, so the module can be built
    before the model whose ``Standardize`` computes them.
    """

    def __init__(
        self,
        offset: float,
        ceiling: float,
        optimum: np.ndarray,
        hessian: np.ndarray,
        bounds: Tensor,
        outcome: Standardize,
    ) -> None:
        super().__init__()
        self.register_buffer("offset", torch.tensor(float(offset), dtype=DTYPE))
        self.register_buffer("ceiling", torch.tensor(float(ceiling), dtype=DTYPE))
        self.register_buffer("optimum", torch.as_tensor(optimum, dtype=DTYPE))
        self.register_buffer("hessian", torch.as_tensor(hessian, dtype=DTYPE))
        self.register_buffer("lower", bounds[0].to(DTYPE))
        self.register_buffer("width", (bounds[1] - bounds[0]).to(DTYPE))
        self._outcome = [outcome]  # a list: not a registered submodule of the mean

    def bowl(self, w: Tensor) -> Tensor:
        """:math:`\\min(\\beta(w), \\mathrm{ceiling})` in raw (u, v)."""
        d = w - self.optimum
        bowl = self.offset + torch.einsum("...i,ij,...j->...", d, self.hessian, d)
        return torch.minimum(bowl, self.ceiling)

    def forward(self, x: Tensor) -> Tensor:
        outcome = self._outcome[0]
        w = self.lower + x * self.width
        f = -self.bowl(w)
        return (f - outcome.means[..., 0]) / outcome.stdvs[..., 0]


def fit_model(
    train_w: Tensor,
    train_f: Tensor,
    bounds: Tensor,
    bowl: BowlPosterior,
    group: int,
    ceiling: float,
    *,
    warm: GPState | None = None,
    maxiter: int = 40,
) -> SingleTaskGP:
    """A ``SingleTaskGP`` on ``train_w`` (n×2, raw u, v) for ``train_f`` (n×1, −y), its mean
    the bowl of ``group``, inputs normalised to ``bounds``, outcome standardised, MAP-fitted
    by one L-BFGS-B run started from ``warm`` (the hyper-parameters of the study's previous
    fit) or from the priors' modes.

    Raises ``ModelFittingError`` when the marginal likelihood cannot be optimised."""
    outcome = Standardize(m=1)
    mean = BowlMean(
        bowl.offset(group), ceiling, bowl.optimum_at(group), bowl.hessian, bounds, outcome
    )
    model = SingleTaskGP(
        train_w,
        train_f,
        mean_module=mean,
        outcome_transform=outcome,
        input_transform=Normalize(d=2, bounds=bounds),
    )
    if warm is not None:
        width = (bounds[1] - bounds[0]).clamp_min(1e-9)
        lengthscale = torch.as_tensor(warm.lengthscale, dtype=DTYPE) / width
        model.covar_module.lengthscale = lengthscale.clamp(1e-3, 1e3)
        model.likelihood.noise = max(warm.noise, 2e-4)
    mll = ExactMarginalLogLikelihood(model.likelihood, model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=OptimizationWarning)
        warnings.simplefilter("ignore", category=NumericalWarning)
        # One L-BFGS-B run from the priors' modes: BoTorch's default retries from random draws
        # of the priors on any optimisation warning (an iteration limit, say) cost seconds.
        fit_gpytorch_mll(
            mll,
            optimizer_kwargs={"options": {"maxiter": maxiter}},
            max_attempts=1,
            warning_handler=lambda _: True,
        )
    model.eval()
    return model


# --------------------------------------------------------------------------------- acquisition
class LogPriorDensity(torch.nn.Module):
    r""":math:`\log \mathcal N(w; \mu, \Sigma)` of the law's prior, for ``… × q × 2`` inputs."""

    def __init__(self, prior: Prior) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(prior.mean, dtype=DTYPE))
        self.register_buffer("precision", torch.as_tensor(np.linalg.inv(prior.cov), dtype=DTYPE))
        _, logdet = np.linalg.slogdet(prior.cov)
        self.norm = -0.5 * float(logdet) - math.log(2 * math.pi)

    def forward(self, w: Tensor) -> Tensor:
        d = w - self.mean
        return self.norm - 0.5 * torch.einsum("...i,ij,...j->...", d, self.precision, d)


def make_acquisition(
    model: SingleTaskGP,
    train_w: Tensor,
    best_f: float,
    prior: Prior,
    prior_exponent: float,
    pending: Tensor | None,
    seed: int,
) -> AcquisitionFunction:
    """πBO-weighted LogEI, or qLogNEI with ``pending`` points (``k×2``) when there are any."""
    if pending is None or len(pending) == 0:
        base: AcquisitionFunction = LogExpectedImprovement(model, best_f=best_f)
        pending = None
    else:
        base = qLogNoisyExpectedImprovement(
            model,
            X_baseline=train_w,
            sampler=SobolQMCNormalSampler(sample_shape=torch.Size([MC_SAMPLES]), seed=seed),
            prune_baseline=True,
        )
    return PriorGuidedAcquisitionFunction(
        base,
        LogPriorDensity(prior),
        log=True,
        prior_exponent=prior_exponent,
        X_pending=pending,
    )


# --------------------------------------------------------------------------------- optimiser
def optimize_in_region(
    acqf: AcquisitionFunction, region: TrustRegion, starts: np.ndarray, maxiter: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    r"""Local maxima of ``acqf`` from each of ``starts`` (``k×2``, inside ``region``), in the
    region's bounding box subject to the ellipse :math:`r^2 - (w - c)^\top S^{-1} (w - c)
    \ge 0`. Returns the optima (``k×2``) and their acquisition values (``k``)."""
    lo, hi = region.ellipse_extent()
    lo, hi = np.maximum(lo, region.box[0]), np.minimum(hi, region.box[1])
    bounds = torch.tensor(np.stack([lo, hi]), dtype=DTYPE)
    center = torch.as_tensor(region.center, dtype=DTYPE)
    inv = torch.as_tensor(np.linalg.inv(region.shape), dtype=DTYPE)
    radius2 = float(region.radius2)

    def inside(w: Tensor) -> Tensor:
        d = w - center
        return radius2 - d @ inv @ d

    x0 = torch.as_tensor(np.clip(starts, lo, hi), dtype=DTYPE).unsqueeze(1)
    with warnings.catch_warnings(), contextlib.suppress(CandidateGenerationError):
        warnings.simplefilter("ignore", category=OptimizationWarning)
        warnings.simplefilter("ignore", category=BotorchWarning)
        warnings.simplefilter("ignore", category=RuntimeWarning)
        x, values = optimize_acqf(
            acqf,
            bounds=bounds,
            q=1,
            num_restarts=len(x0),
            batch_initial_conditions=x0,
            nonlinear_inequality_constraints=[(inside, True)],
            return_best_only=False,
            options={"maxiter": maxiter, "batch_limit": 1},
        )
        return x.detach().reshape(-1, 2).numpy(), values.detach().reshape(-1).numpy()
    # SLSQP left the ellipse from every start: no refinement
    return np.empty((0, 2)), np.empty(0)


# --------------------------------------------------------------------------------- sampler
@dataclass
class _GPHistory(_History):
    """The history, plus the GP hyper-parameters the study's latest GP proposal recorded."""

    warm: GPState | None = None


class BoTorchPlateauSampler(PlateauSampler):
    r"""PlateauSampler with a Gaussian process in place of the bowl: GP-BO whose prior mean is
    the law's fitted bowl, πBO-weighted LogEI (qLogNEI with running trials as pending points),
    optimised inside the trust region.

    Use it where the landscape may not be a clean bowl (a new architecture or optimiser, an
    unstable edge at high learning rate): with few points it behaves like the bowl, with many
    the GP bends to the data. It takes every argument of
    :class:`~steplaw_opt.samplers.PlateauSampler`, with the same defaults but three, and writes
    the same trial attributes (so one replaces the other), plus five of its own. The three keep
    PlateauSampler's earlier defaults, ``acquisition="ei"``, ``n_coarse=8``, ``resolution=0.15``:
    the bowl only maps the plateau here, and the GP, which chooses after it, refines a
    continuous bottom by expected improvement from a longer lattice at a finer radius (with
    PlateauSampler's new defaults its best of 10 runs on the ``banana`` fixture of
    tests/test_botorch_sampler.py went from 0.008 % to 0.035 %).

    Args:
        scale: the target scale (N, D, seq_len); as PlateauSampler's, and so are the
            keyword-only ``law``, ``lr_param``, ``batch_param``, ``batch_unit``, ``seq_len``,
            ``seed``, ``independent_sampler``, ``acquisition`` (the bowl's, used while it
            chooses), ``resolution``, ``coarse_resolution``, ``n_coarse``, ``lattice_step``,
            ``trust_mass``, ``prior_widen``, ``bowl_prior`` and ``drift``: see
            :class:`~steplaw_opt.samplers.PlateauSampler`.
        n_bowl: the first ``n_bowl`` trials (run, failed or running) are chosen by the inherited
            bowl on its lattice; the GP chooses from then on (default: ``n_coarse``; 0: the GP
            from the second trial).
        prior_beta: πBO's :math:`\beta`; the law prior's density is raised to
            :math:`\beta / n` after :math:`n` finished trials.
        clip: model-target values more than ``clip`` above the best are clipped (ln-loss units);
            failures are imputed at ``best + clip``.
        num_restarts: starts of the continuous acquisition optimisation (the best candidates).
        maxiter: iterations of each start (SLSQP).

    The belief written into each trial's ``steplaw:belief`` system attribute adds a ``"gp"``
    entry: acquisition, πBO exponent, fitted lengthscales (u, v units), noise (standardised
    units) and the log-acquisition value of the proposal. If the GP cannot be fitted, the
    proposal is the bowl's and ``"gp"`` holds the error.

    torch, BoTorch and GPyTorch are imported when this class is first used (``import
    steplaw_opt`` and ``import steplaw_opt.samplers`` stay light). Proposals are reproducible
    for a fixed ``seed``; torch's global random state is left untouched.
    """

    # PlateauSampler's parameters repeated (same order, types and defaults) so that help(),
    # IDEs and inspect.signature see them; tests/test_signatures.py keeps the two in step.
    def __init__(
        self,
        scale: Scale,
        *,
        law: str | Path | Law = "step-law",
        lr_param: str = "lr",
        batch_param: str = "batch_size",
        batch_unit: BatchUnit = "sequences",
        seq_len: int | None = None,
        seed: int | None = None,
        independent_sampler: BaseSampler | None = None,
        acquisition: Acquisition = "ei",
        resolution: float = 0.15,
        coarse_resolution: float = 0.3,
        n_coarse: int = 8,
        lattice_step: float = math.log(2.0) / 2,
        trust_mass: float = 0.99,
        prior_widen: float = 1.0,
        bowl_prior: BowlPrior | None = None,
        drift: bool = True,
        n_bowl: int | None = None,
        prior_beta: float = DEFAULT_PRIOR_BETA,
        clip: float = DEFAULT_CLIP,
        num_restarts: int = 2,
        maxiter: int = 20,
    ) -> None:
        super().__init__(
            scale,
            law=law,
            lr_param=lr_param,
            batch_param=batch_param,
            batch_unit=batch_unit,
            seq_len=seq_len,
            seed=seed,
            independent_sampler=independent_sampler,
            acquisition=acquisition,
            resolution=resolution,
            coarse_resolution=coarse_resolution,
            n_coarse=n_coarse,
            lattice_step=lattice_step,
            trust_mass=trust_mass,
            prior_widen=prior_widen,
            bowl_prior=bowl_prior,
            drift=drift,
        )
        if n_bowl is not None and (
            isinstance(n_bowl, bool) or not isinstance(n_bowl, int) or n_bowl < 0
        ):
            raise SteplawInputError(f"n_bowl must be a non-negative integer, got {n_bowl!r}")
        for name, x in (("prior_beta", prior_beta), ("clip", clip)):
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not (x >= 0):
                raise SteplawInputError(f"{name} must be a non-negative number, got {x!r}")
        if clip == 0:
            raise SteplawInputError("clip must be positive")
        for name, k in (("num_restarts", num_restarts), ("maxiter", maxiter)):
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise SteplawInputError(f"{name} must be a positive integer, got {k!r}")
        self._n_bowl = self._n_coarse if n_bowl is None else n_bowl
        self._prior_beta = float(prior_beta)
        self._clip = float(clip)
        self._num_restarts = num_restarts
        self._maxiter = int(maxiter)

    def history(self, study: optuna.Study, *, exclude: int | None = None) -> _GPHistory:
        hist = super().history(study, exclude=exclude)
        warm = None
        for t in reversed(study.get_trials(deepcopy=False)):
            if t.number != exclude and ATTR_BELIEF in t.system_attrs:
                warm = GPState.from_belief(t.system_attrs[ATTR_BELIEF])
                if warm is not None:
                    break
        return _GPHistory(**{f.name: getattr(hist, f.name) for f in fields(hist)}, warm=warm)

    # The acquisition step; everything else is PlateauSampler's.
    def _pick(
        self,
        hist: _History,
        posterior: BowlPosterior | None,
        group: int,
        region: TrustRegion,
        candidates: np.ndarray,
        rng: np.random.Generator,
        belief: dict[str, Any],
    ) -> tuple[np.ndarray, str, dict[str, Any]]:
        if posterior is None or len(hist.taken) < self._n_bowl:
            return super()._pick(hist, posterior, group, region, candidates, rng, belief)
        seed = int(rng.integers(2**31 - 1))
        try:
            with torch.random.fork_rng(), warnings.catch_warnings():
                warnings.simplefilter("ignore", category=NumericalWarning)
                # one point, or all equal: Standardize then leaves them as they are
                warnings.simplefilter("ignore", category=InputDataWarning)
                torch.manual_seed(seed)
                return self._pick_gp(hist, posterior, group, region, candidates, seed, belief)
        except (BotorchError, torch.linalg.LinAlgError, ValueError, RuntimeError) as exc:
            belief["gp"] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
            return super()._pick(hist, posterior, group, region, candidates, rng, belief)

    def _training_data(
        self, hist: _History, posterior: BowlPosterior, group: int
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """(w, f = −y, best f) in the model's units: per-scale offsets removed, clipped, failures
        imputed at the ceiling."""
        if posterior.scale_x is None:
            offsets = posterior.mean[: posterior.n_groups]
            y = hist.y - (offsets[hist.groups] - offsets[group])
        else:  # with drift terms the scales differ by more than an offset: by the bowl's
            # own difference at each run's w
            y = hist.y.copy()
            for g in np.unique(hist.groups):
                at = hist.groups == g
                y[at] -= posterior.predict(hist.w[at], int(g))[0]
                y[at] += posterior.predict(hist.w[at], group)[0]
        best = float(np.min(y))
        ceiling = best + self._clip
        y = np.minimum(y, ceiling)
        w = np.concatenate([hist.w, hist.failed])
        y = np.concatenate([y, np.full(len(hist.failed), ceiling)])
        return w, -y, -best

    def _pick_gp(
        self,
        hist: _History,
        posterior: BowlPosterior,
        group: int,
        region: TrustRegion,
        candidates: np.ndarray,
        seed: int,
        belief: dict[str, Any],
    ) -> tuple[np.ndarray, str, dict[str, Any]]:
        w, f, best_f = self._training_data(hist, posterior, group)
        prior_region = TrustRegion(self._prior.mean, self._prior.cov, self._radius2, region.box)
        lo, hi = prior_region.ellipse_extent()
        lo, hi = np.maximum(lo, region.box[0]), np.minimum(hi, region.box[1])
        lo, hi = np.minimum(lo, w.min(axis=0)), np.maximum(hi, w.max(axis=0))
        bounds = torch.tensor(np.stack([lo, hi]), dtype=DTYPE)
        train_w = torch.as_tensor(w, dtype=DTYPE)
        warm = getattr(hist, "warm", None)
        model = fit_model(
            train_w,
            torch.as_tensor(f, dtype=DTYPE)[:, None],
            bounds,
            posterior,
            group,
            -best_f + self._clip,
            warm=warm,
        )
        n = len(hist.y) + len(hist.failed)
        exponent = self._prior_beta / max(n, 1)
        pending = torch.as_tensor(hist.pending, dtype=DTYPE) if len(hist.pending) else None
        acqf = make_acquisition(model, train_w, best_f, self._prior, exponent, pending, seed)
        with torch.no_grad():
            values = acqf(torch.as_tensor(candidates, dtype=DTYPE)[:, None, :]).numpy()
        order = np.argsort(-values)
        best_w, best_value = candidates[order[0]], float(values[order[0]])
        if not self._mapping(hist) or self._lattice_step == 0:
            # Continuous phase: refine the best candidates; reject repeats and walled points.
            starts = candidates[order[: self._num_restarts]]
            xs, vals = optimize_in_region(acqf, region, starts, maxiter=self._maxiter)
            ok = (
                region.contains(xs, tol=1e-6)
                & ~self._too_close(xs, hist.taken_at(group), coarse=False)
                & ~self._walled(xs, hist)
                & np.isfinite(vals)
            )
            if ok.any() and float(np.max(vals[ok])) >= best_value:
                i = int(np.flatnonzero(ok)[np.argmax(vals[ok])])
                best_w, best_value = region.clip_to_box(xs[i]), float(vals[i])
        ls = model.covar_module.lengthscale.detach().reshape(-1).numpy() * (hi - lo)
        belief["gp"] = {
            "acquisition": "LogEI" if pending is None else "qLogNEI",
            "pending": len(hist.pending),
            "prior_exponent": exponent,
            "lengthscale": ls.tolist(),
            "noise": float(model.likelihood.noise.detach().reshape(-1)[0]),
            "log_acquisition": best_value,
        }
        return np.asarray(best_w, dtype=float), "gp", belief
