"""PlateauSampler: the law as an informative prior and a convex trust region, a Bayesian bowl
model, and runs chosen inside the predicted plateau to locate its bottom. NumPy only."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from steplaw_opt._records import (
    ATTR_BELIEF,
    ATTR_PROPOSAL,
    ATTR_SLOT,
    ran_with,
    trial_scale,
)
from steplaw_opt.errors import SteplawInputError
from steplaw_opt.landscape import BowlPosterior, BowlPrior, fit_bowl, gap_weights
from steplaw_opt.priors._law import Law, load_law
from steplaw_opt.priors._prior import Prior, TrustRegion, chi2_2_quantile, drift_covariance
from steplaw_opt.samplers._region import bottom_in_region
from steplaw_opt.scale import Scale
from steplaw_opt.space import BatchUnit, LawSpace

Acquisition = Literal["design", "ei", "thompson"]
# The trust region spans this many posterior standard deviations of the optimum (at the
# region's mass) once the posterior is narrower than the prior.
TRUST_SPREAD = 2.0
# Continuous candidates per proposal once the plateau is mapped.
CANDIDATES = 256


def shrink_within(shape: np.ndarray, outer: np.ndarray) -> np.ndarray:
    """The ellipse ``shape`` with every axis that pokes out of ``outer`` pulled back onto it:
    in ``outer``-whitened coordinates, eigenvalues above 1 are clipped to 1."""
    chol = np.linalg.cholesky(outer)
    inv = np.linalg.inv(chol)
    vals, vecs = np.linalg.eigh(inv @ shape @ inv.T)
    white = (vecs * np.minimum(vals, 1.0)) @ vecs.T
    return chol @ white @ chol.T


def _positive_numeric(dist: BaseDistribution | None) -> bool:
    return isinstance(dist, (FloatDistribution, IntDistribution)) and dist.low > 0


def to_param_value(value: float, dist: FloatDistribution | IntDistribution) -> float | int:
    """Clip ``value`` into ``dist`` and snap it onto the distribution's step, if any."""
    x = float(snap_to(np.array([float(value)]), dist)[0])
    return int(x) if isinstance(dist, IntDistribution) else x


def snap_to(x: np.ndarray, dist: FloatDistribution | IntDistribution) -> np.ndarray:
    """Clip the values ``x`` into ``dist`` and snap them onto its step (whole numbers for an
    integer distribution)."""
    x = np.clip(x, dist.low, dist.high)
    if dist.step is not None:
        x = dist.low + np.round((x - dist.low) / dist.step) * dist.step
        x = np.where(x > dist.high + 1e-12, x - dist.step, x)
        x = np.clip(x, dist.low, dist.high)
    if isinstance(dist, IntDistribution):
        x = np.round(x)
    return x


@dataclass
class _History:
    """The study's trials as the model sees them, each mapped to (u, v) at its own scale."""

    w: np.ndarray  # completed, finite: n×2
    y: np.ndarray  # model target (ln loss, or a relative value)
    groups: np.ndarray
    group_scales: list[tuple[float, float, int]]
    failed: np.ndarray  # m×2
    pending: np.ndarray  # k×2 (other workers' RUNNING trials)
    best_w: np.ndarray = field(default_factory=lambda: np.empty((0, 2)))
    # The scale of each failed and pending trial (keys of ``group_scales``' kind).
    failed_scales: list[tuple[float, float, int]] = field(default_factory=list)
    pending_scales: list[tuple[float, float, int]] = field(default_factory=list)
    # The trial being proposed is a slot of a `tune` plan: its runs at the target are kept.
    planned: bool = False
    # Where finished runs were proposed, for those made elsewhere (``steplaw.ran_with``), and
    # their scales: proposing there again would run the same values again.
    proposed: np.ndarray = field(default_factory=lambda: np.empty((0, 2)))
    proposed_scales: list[tuple[float, float, int]] = field(default_factory=list)

    @property
    def taken(self) -> np.ndarray:
        return np.concatenate([self.w, self.failed, self.pending])

    def taken_at(self, group: int) -> np.ndarray:
        """The points not to repeat at ``group``'s scale: its finished and failed trials, and
        every running one (another worker may not have tagged its trial's scale yet)."""
        key = self.group_scales[group]
        return np.concatenate(
            [
                self.w[self.groups == group],
                self.failed[[k == key for k in self.failed_scales]].reshape(-1, 2),
                self.pending,
                self.proposed[[k == key for k in self.proposed_scales]].reshape(-1, 2),
            ]
        )

    def ran_at(self, group: int) -> bool:
        """Whether any trial — finished, failed or running — is at ``group``'s scale."""
        key = self.group_scales[group]
        return (
            bool(np.any(self.groups == group))
            or key in self.failed_scales
            or key in self.pending_scales
        )

    def group_of(self, scale: Scale) -> int:
        key = _scale_key(scale)
        if key not in self.group_scales:
            self.group_scales.append(key)
        return self.group_scales.index(key)


def _scale_key(scale: Scale) -> tuple[float, float, int]:
    return (float(scale.N or 0), float(scale.D or 0), int(scale.seq_len))


class PlateauSampler(BaseSampler):
    r"""Search (learning rate, batch size) only where a scaling law says the optimum is.

    The law's prediction at the target scale is the origin of law-normalised coordinates
    :math:`u = \ln \mathrm{lr} - \ln \mathrm{lr}^*`, :math:`v = \ln B - \ln B^*`. The sampler

    1. proposes the law's point first (clipped to the bounds), and opens every further scale
       (a proxy scale, or the target after proxy runs) at the pooled model's optimum: with no
       run at that scale yet there is no incumbent to improve on, only a best guess;
    2. keeps a Gaussian prior over the optimum's location from the law's coefficient
       covariance and residual scatter (:class:`~steplaw_opt.priors.Prior`), and a trust region,
       its 99 % ellipse clipped to the parameter bounds, which re-centres and shrinks as the
       posterior concentrates and always keeps the best point seen;
    3. fits a convex bowl in :math:`(u, v)` in closed form
       (:func:`~steplaw_opt.landscape.fit_bowl`) — a quadratic plus a cubic term in u for the
       steeper rise towards divergence at high lr — with curvature and asymmetry priors from
       the released Step Law grids and one loss offset per scale, so short proxy runs pool with
       the target;
    4. proposes, among the trust region's points that do not repeat a trial already run,
       failed or running — so workers sharing a study never duplicate work — first (the first
       ``n_coarse`` trials of the study) the point of a multiplicative lattice around the law's
       point (steps of ``lattice_step``, √2 by default, the usual sweep) with the highest
       expected improvement, mapping the plateau; then the point that most lowers the expected
       cost of training at the refined optimum (``acquisition="design"``, the default:
       :meth:`~steplaw_opt.landscape.BowlPosterior.design_gain`, a run that moves the estimate
       of the bottom, out on the slopes where the signal shows above the noise but inside the
       window where the bowl holds). ``"ei"`` keeps expected improvement throughout;
       ``"thompson"`` the argmin of one posterior draw. A point repeats a trial at the same
       scale when both its lr and its batch lie within a factor :math:`e^r` of that trial's
       (``coarse_resolution`` while mapping, ``resolution`` after; the same (u, v) at another
       scale is new evidence).

    Expected improvement chases the lowest observed loss, so its later runs cluster on the
    bottom, where they say little about where the bottom is; the design step spreads them (19
    distinct cells of the released grids in 20 trials) and the refined optimum gains:
    ``steplaw-opt bench``, mean gap on three noise-free surfaces at 10 / 20 trials, 0.011 /
    0.0089 % against 0.016 / 0.012 % with the previous defaults (expected improvement
    throughout, 8 lattice trials, ``resolution`` 0.15, a symmetric bowl), and 0.013 / 0.0096 %
    against 0.025 / 0.017 % where the law is off by a factor 1.65 (docs/bench.md). On a
    landscape that is not a bowl (a bent valley) spreading the runs costs more than it tells:
    there use ``acquisition="ei", n_coarse=8, resolution=0.15`` (docs/botorch.md).

    Failed trials and NaN/inf losses are evidence, not noise: a failure at a high learning rate
    (above the current optimum estimate) puts a wall at that learning rate, excluding it and
    everything above it at similar batch sizes. Everything is derived from the study's trials,
    so the sampler is stateless: any number of workers on one storage cooperate and a study
    resumes where it stopped.

    Args:
        scale: the target scale (N, D, seq_len) the optimum is wanted for.
        law: a law name (``"step-law"``), a path to a card, or a :class:`~steplaw_opt.Law`.
        lr_param: name of the learning-rate parameter.
        batch_param: name of the batch-size parameter.
        batch_unit: ``"sequences"`` (of ``seq_len`` tokens) or ``"tokens"``.
        seq_len: tokens per sequence; defaults to the scale's.
        seed: seed for reproducible proposals.
        independent_sampler: samples every other parameter (default: ``RandomSampler``).
        acquisition: ``"design"`` (default: expected improvement while mapping the plateau,
            then the run that most lowers the expected cost of training at the refined
            optimum), ``"ei"`` (expected improvement throughout) or ``"thompson"``.
        resolution: in ln units; a proposal whose lr and batch are both within a factor
            ``e^resolution`` of an existing trial's is a repeat and never proposed. With the
            Step Law's curvature a step of 0.3 changes the loss by about the 0.05 % measurement
            noise: closer runs are near-repeats that add little.
        coarse_resolution: the same, for the first ``n_coarse`` trials of the study.
        n_coarse: how many trials map the plateau on the lattice with ``coarse_resolution``.
        lattice_step: the lattice's step in ln units (0 turns the lattice off).
        trust_mass: prior mass of the trust region.
        prior_widen: multiplies the prior's standard deviations (extra doubt in the law).
        bowl_prior: curvature and noise prior of the landscape model.
        drift: let the optimum's offset from the law move with scale, :math:`w^*_s = w^* +
            \Gamma x_s` with :math:`x_s` the proxy's (ln N, ln D) below the target's and a
            prior on Γ from the card's exponent uncertainty plus the spread of published laws'
            exponents (:func:`~steplaw_opt.priors.drift_covariance`). Proxies at several scales
            that agree on a trend then carry it to the target; proxies at one scale move the
            target only as far as that prior allows. A single-scale study is unchanged either
            way. A ``bowl_prior`` with
            :meth:`~steplaw_opt.landscape.BowlPrior.with_scale_scatter` also gives each proxy
            scale its own scatter about that trend (off by default). On the proxy benchmark
            (``steplaw-opt bench --proxy --drift both``: released and shifted landscapes) it
            was as good or better than one shared offset at nearly every budget, with far
            better calibrated intervals, so it is on by default.

    Trials may carry their own scale in user attributes ``steplaw.N``, ``steplaw.D`` and
    ``steplaw.seq_len`` (proxy runs). An objective that cannot run at the proposed values (a
    trainer that rounds the batch to a multiple of its micro-batch × data-parallel size, a grid
    replay that runs the nearest cell) records the values it ran with,
    ``trial.set_user_attr("steplaw.ran_with", {"batch_size": 48})``, and the model places the
    run there: on the released grids, whose cells are 0.35 ln units apart, a model that took
    the proposals for where the runs were made missed the optimum by a third more at 10 trials.
    The sampler writes what it believed into each trial's system attributes
    ``steplaw:proposal`` and ``steplaw:belief`` (prior mean, posterior optimum, trust-region
    centre and radius).

    Example:
        >>> import optuna
        >>> from steplaw_opt import Scale
        >>> from steplaw_opt.samplers import PlateauSampler, refined_optimum
        >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
        >>> target = Scale(N=4.29e8, D=4e10)
        >>> sampler = PlateauSampler(target, seed=0)
        >>> def objective(trial):
        ...     lr = trial.suggest_float("lr", 1e-4, 3e-2, log=True)
        ...     batch = trial.suggest_int("batch_size", 16, 2048, log=True)
        ...     # a stand-in bowl whose optimum is at 1.3× the law's lr and 0.8× its batch
        ...     u, v = math.log(lr / 2.25e-3 / 1.3), math.log(batch / 320.5 / 0.8)
        ...     return 2.5 * math.exp(0.006 * u * u + 0.006 * v * v)
        >>> import math
        >>> study = optuna.create_study(sampler=sampler)
        >>> study.optimize(objective, n_trials=10)
        >>> opt = refined_optimum(study, sampler=sampler)
        >>> 1.1 < opt.lr / 2.25e-3 < 1.5
        True
    """

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
        acquisition: Acquisition = "design",
        resolution: float = 0.3,
        coarse_resolution: float = 0.3,
        n_coarse: int = 4,
        lattice_step: float = math.log(2.0) / 2,
        trust_mass: float = 0.99,
        prior_widen: float = 1.0,
        bowl_prior: BowlPrior | None = None,
        drift: bool = True,
    ) -> None:
        if not isinstance(scale, Scale):
            raise SteplawInputError(f"scale must be a steplaw_opt.Scale, got {scale!r}")
        if lr_param == batch_param:
            raise SteplawInputError(f"lr_param and batch_param are both {lr_param!r}")
        if acquisition not in ("design", "ei", "thompson"):
            raise SteplawInputError(
                f"acquisition must be 'design', 'ei' or 'thompson', got {acquisition!r}"
            )
        for name, r in (("resolution", resolution), ("coarse_resolution", coarse_resolution)):
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < 2:
                raise SteplawInputError(f"{name} must be in [0, 2) ln units, got {r!r}")
        if (
            isinstance(lattice_step, bool)
            or not isinstance(lattice_step, (int, float))
            or not (0 <= lattice_step < 2)
        ):
            raise SteplawInputError(
                f"lattice_step must be in [0, 2) ln units, got {lattice_step!r}"
            )
        if isinstance(n_coarse, bool) or not isinstance(n_coarse, int) or n_coarse < 0:
            raise SteplawInputError(f"n_coarse must be a non-negative integer, got {n_coarse!r}")
        self._target = scale
        self._law = load_law(law)
        self._space = LawSpace(self._law, batch_unit, seq_len)
        self._lr_param = lr_param
        self._batch_param = batch_param
        self._seed = seed
        self._independent = independent_sampler or RandomSampler(seed=seed)
        self._acquisition: Acquisition = acquisition
        self._resolution = float(resolution)
        self._coarse_resolution = float(coarse_resolution)
        self._n_coarse = n_coarse
        self._lattice_step = float(lattice_step)
        self._radius2 = chi2_2_quantile(trust_mass)
        self._prior = Prior.from_law(self._law, scale, widen=prior_widen)
        self._bowl = bowl_prior or BowlPrior.default()
        if not isinstance(drift, bool):
            raise SteplawInputError(f"drift must be True or False, got {drift!r}")
        self._drift_cov = drift_covariance(self._law) if drift else None
        self._reseed_counter = 0
        self._warned: set[str] = set()  # parameter names already warned about

    # ---------------------------------------------------------------- public properties
    @property
    def target(self) -> Scale:
        return self._target

    @property
    def law(self) -> Law:
        return self._law

    @property
    def space(self) -> LawSpace:
        return self._space

    @property
    def prior(self) -> Prior:
        return self._prior

    @property
    def lr_param(self) -> str:
        return self._lr_param

    @property
    def drift(self) -> bool:
        """Whether the bowl's optimum may move with scale (the ``drift`` argument)."""
        return self._drift_cov is not None

    @property
    def batch_param(self) -> str:
        return self._batch_param

    # ---------------------------------------------------------------- Optuna interface
    def reseed_rng(self) -> None:
        self._reseed_counter += 1
        self._independent.reseed_rng()

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        # The two parameters as any earlier trial declared them (failed and running ones too,
        # so a study whose first trials failed still samples jointly).
        for t in reversed(study.get_trials(deepcopy=False)):
            d = t.distributions
            lr, batch = d.get(self._lr_param), d.get(self._batch_param)
            if _positive_numeric(lr) and _positive_numeric(batch):
                return {self._lr_param: lr, self._batch_param: batch}  # type: ignore[dict-item]
        return {}

    def sample_relative(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        search_space: dict[str, BaseDistribution],
    ) -> dict[str, Any]:
        self._raise_error_if_multi_objective(study)
        out: dict[str, Any] = {}
        lr_d, b_d = search_space.get(self._lr_param), search_space.get(self._batch_param)
        if _positive_numeric(lr_d) and _positive_numeric(b_d):
            w = self._proposal(study, trial, lr_d, b_d)  # type: ignore[arg-type]
            lr, batch = self._space.from_uv(w[0], w[1], trial_scale(trial, self._target))
            out[self._lr_param] = to_param_value(lr, lr_d)  # type: ignore[arg-type]
            out[self._batch_param] = to_param_value(batch, b_d)  # type: ignore[arg-type]
        for name, dist in search_space.items():
            if name not in out:
                out[name] = self._independent.sample_independent(study, trial, name, dist)
        return out

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        if param_name in (self._lr_param, self._batch_param) and _positive_numeric(
            param_distribution
        ):
            self._raise_error_if_multi_objective(study)
            known = self._known_distributions(study)
            known[param_name] = param_distribution
            w = self._proposal(
                study, trial, known.get(self._lr_param), known.get(self._batch_param)
            )
            lr, batch = self._space.from_uv(w[0], w[1], trial_scale(trial, self._target))
            value = lr if param_name == self._lr_param else batch
            return to_param_value(value, param_distribution)  # type: ignore[arg-type]
        self._warn_unknown_name(study, trial, param_name)
        return self._independent.sample_independent(study, trial, param_name, param_distribution)

    def _warn_unknown_name(self, study: optuna.Study, trial: FrozenTrial, name: str) -> None:
        """Warn once per name when a parameter goes to the independent sampler while the study
        has never declared ``lr_param`` or ``batch_param`` (a name mismatch, most likely), as
        Optuna's samplers warn when they fall back to independent sampling."""
        if name in self._warned:
            return
        ours = {self._lr_param, self._batch_param}
        declared = ours & set(trial.distributions)
        for t in study.get_trials(deepcopy=False):
            if declared == ours:
                return  # the study tunes both: this is just another parameter
            declared |= ours & set(t.distributions)
        if declared == ours:
            return
        self._warned.add(name)
        kind = _guess_kind(name)
        if kind == "lr" and self._lr_param not in declared:
            hint = f"; if it is the learning rate, pass lr_param={name!r}"
        elif kind == "batch" and self._batch_param not in declared:
            hint = f"; if it is the batch size, pass batch_param={name!r}"
        else:
            hint = ""
        warnings.warn(
            f"{type(self).__name__}: parameter {name!r} is sampled by the independent sampler, "
            f"not from the law: the sampler tunes lr_param={self._lr_param!r} and "
            f"batch_param={self._batch_param!r}{hint}",
            UserWarning,
            stacklevel=3,
        )

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._independent.before_trial(study, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._independent.after_trial(study, trial, state, values)

    # ---------------------------------------------------------------- internals
    def _known_distributions(self, study: optuna.Study) -> dict[str, BaseDistribution]:
        known: dict[str, BaseDistribution] = {}
        for t in reversed(study.get_trials(deepcopy=False)):
            for name in (self._lr_param, self._batch_param):
                if name not in known and _positive_numeric(t.distributions.get(name)):
                    known[name] = t.distributions[name]
        return known

    def _box(
        self, scale: Scale, lr_d: BaseDistribution | None, b_d: BaseDistribution | None
    ) -> np.ndarray:
        box = np.array([[-np.inf, -np.inf], [np.inf, np.inf]])
        ln_lr, ln_b = self._space.origin(scale)
        for i, (d, origin) in enumerate(((lr_d, ln_lr), (b_d, ln_b))):
            if _positive_numeric(d):
                box[0, i] = math.log(d.low) - origin  # type: ignore[union-attr]
                box[1, i] = math.log(d.high) - origin  # type: ignore[union-attr]
        return box

    def _rng(self, trial: FrozenTrial) -> np.random.Generator:
        seed = [
            self._seed if self._seed is not None else 0x5EED,
            trial.number,
            self._reseed_counter,
        ]
        if self._seed is None:
            seed.append(int(np.random.SeedSequence().entropy % (2**63)))
        return np.random.default_rng(seed)

    def history(self, study: optuna.Study, *, exclude: int | None = None) -> _History:
        """The study's trials mapped to (u, v) at their own scales."""
        sign = 1.0 if study.direction == StudyDirection.MINIMIZE else -1.0
        w, z, scales, failed, pending, proposed = [], [], [], [], [], []
        failed_scales, pending_scales, proposed_scales = [], [], []
        origins: dict[Scale, tuple[float, float]] = {}  # the law, once per distinct scale
        for t in study.get_trials(deepcopy=False):
            if t.number == exclude:
                continue
            if self._lr_param not in t.params or self._batch_param not in t.params:
                continue
            lr, batch = ran_with(t, self._lr_param, self._batch_param)
            if lr <= 0 or batch <= 0:
                continue
            scale = trial_scale(t, self._target)
            if scale not in origins:
                origins[scale] = self._space.origin(scale)
            ln_lr, ln_b = origins[scale]
            uv = (math.log(lr) - ln_lr, math.log(batch) - ln_b)
            if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value):
                w.append(uv)
                z.append(sign * t.value)
                scales.append(scale)
                asked = (float(t.params[self._lr_param]), float(t.params[self._batch_param]))
                if asked != (lr, batch):  # made elsewhere: its proposal is taken too
                    proposed.append((math.log(asked[0]) - ln_lr, math.log(asked[1]) - ln_b))
                    proposed_scales.append(_scale_key(scale))
            elif t.state == TrialState.FAIL or t.state == TrialState.COMPLETE:
                failed.append(uv)  # a failure, or a NaN/inf value
                failed_scales.append(_scale_key(scale))
            elif t.state in (TrialState.RUNNING, TrialState.WAITING, TrialState.PRUNED):
                pending.append(uv)  # running elsewhere, or evaluated in part: not again
                pending_scales.append(_scale_key(scale))
        z_arr = np.asarray(z, dtype=float)
        if len(z_arr) and np.all(z_arr > 0):
            y = np.log(z_arr)
        elif len(z_arr):  # not a loss: put it on a relative scale the curvature prior fits
            y = z_arr / max(float(np.max(np.abs(z_arr))), 1e-12)
        else:
            y = z_arr
        hist = _History(
            w=np.asarray(w, dtype=float).reshape(-1, 2),
            y=y,
            groups=np.zeros(len(w), dtype=int),
            group_scales=[],
            failed=np.asarray(failed, dtype=float).reshape(-1, 2),
            pending=np.asarray(pending, dtype=float).reshape(-1, 2),
            failed_scales=failed_scales,
            pending_scales=pending_scales,
            proposed=np.asarray(proposed, dtype=float).reshape(-1, 2),
            proposed_scales=proposed_scales,
        )
        hist.groups = np.array([hist.group_of(s) for s in scales], dtype=int)
        if len(y):
            hist.best_w = hist.w[[int(np.argmin(y))]]
        return hist

    def fit(
        self, hist: _History, *, law_width_only: bool = False, noise_sd: float | None = None
    ) -> BowlPosterior:
        """The bowl over every scale the history knows, including any :meth:`_History.group_of`
        has added since (a trial's own, new scale), so that scale gets its offset.

        ``law_width_only``: the law's error at its own width only, not the mixture of widths
        (:class:`~steplaw_opt.landscape.BowlPrior`): the plateau-mapping proposals use it.
        ``noise_sd``: another noise level than the bowl prior's (the refined optimum's
        intervals use the measured one)."""
        n = max(len(hist.group_scales), 1)
        bowl = self._bowl
        if law_width_only:
            bowl = dataclasses.replace(bowl, law_widths=(1.0,), law_weights=(1.0,))
        if noise_sd is not None:
            bowl = dataclasses.replace(bowl, noise_sd=noise_sd)
        # No drift terms: scale_x None. A study at one scale gets an all-zero scale_x, which
        # fit_bowl drops, so it is fitted as without drift.
        drift_cov = self._drift_cov
        scale_x = None if drift_cov is None else self._scale_x(hist, n)
        return fit_bowl(
            hist.w,
            hist.y,
            hist.groups,
            n,
            prior_mean=self._prior.mean,
            prior_cov=self._prior.cov,
            bowl=bowl,
            scale_x=scale_x,
            drift_cov=drift_cov,
            scatter_cov=None if drift_cov is None else bowl.scatter_cov,
        )

    def _scale_x(self, hist: _History, n: int) -> np.ndarray:
        """Each group's (ln N − ln N_t, ln D − ln D_t); 0 where either scale lacks N or D
        (the law then could not tell those scales apart either)."""
        x = np.zeros((n, 2))
        n_t, d_t = self._target.N, self._target.D
        for i, (n_s, d_s, _) in enumerate(hist.group_scales):
            if n_t and n_s:
                x[i, 0] = math.log(n_s / n_t)
            if d_t and d_s:
                x[i, 1] = math.log(d_s / d_t)
        return x

    def trust_region(
        self,
        hist: _History,
        posterior: BowlPosterior | None,
        box: np.ndarray,
        rng: np.random.Generator,
        group: int | None = None,
    ) -> tuple[TrustRegion, np.ndarray | None]:
        """The prior's region, re-centred on the posterior optimum and shrunk to its spread
        (never wider than the prior's, never excluding the best point seen). ``group``: a
        proxy scale whose bottom the drift terms move (:meth:`BowlPosterior.shift`); the
        target's region otherwise."""
        region = TrustRegion(self._prior.mean, self._prior.cov, self._radius2, box)
        if posterior is None or len(hist.y) == 0:
            return region, None
        draws = posterior.sample_optima(rng, 256)
        if group is not None:
            draws = draws + posterior.shift(group)
        inside = region.contains(draws)
        if inside.sum() < 16:
            return region.recentred(region.center, region.shape, keep=hist.best_w), draws
        spread = np.cov(draws[inside], rowvar=False) * TRUST_SPREAD**2
        spread += np.eye(2) * self._resolution**2
        shape = shrink_within(spread, self._prior.cov)
        center = region.clip_to_box(np.median(draws[inside], axis=0))
        return region.recentred(center, shape, keep=hist.best_w), draws

    def _proposal(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        lr_d: BaseDistribution | None,
        b_d: BaseDistribution | None,
    ) -> np.ndarray:
        """The (u, v) to run next, computed once per trial and kept in its system attributes
        (so the two parameters of one trial come from one joint proposal)."""
        fresh = study._storage.get_trial(trial._trial_id)
        cached = fresh.system_attrs.get(ATTR_PROPOSAL)
        if cached is not None:
            return np.array([cached["u"], cached["v"]])
        scale = trial_scale(fresh, self._target)
        box = self._box(scale, lr_d, b_d)
        hist = self.history(study, exclude=trial.number)
        hist.planned = ATTR_SLOT in fresh.user_attrs
        rng = self._rng(trial)
        w, kind, belief = self._choose(hist, scale, box, rng, self._snapper(scale, lr_d, b_d))
        study._storage.set_trial_system_attr(
            trial._trial_id, ATTR_PROPOSAL, {"u": float(w[0]), "v": float(w[1]), "kind": kind}
        )
        study._storage.set_trial_system_attr(trial._trial_id, ATTR_BELIEF, belief)
        return w

    def _snapper(
        self, scale: Scale, lr_d: BaseDistribution | None, b_d: BaseDistribution | None
    ) -> Callable[[np.ndarray], np.ndarray] | None:
        """Maps (u, v) points onto the values the declared distributions can take (an integer
        batch, a stepped lr), so that the repeat check sees what would really run."""
        if not (_positive_numeric(lr_d) and _positive_numeric(b_d)):
            return None
        ln_lr, ln_b = self._space.origin(scale)

        def snap(points: np.ndarray) -> np.ndarray:
            lr = snap_to(np.exp(ln_lr + points[:, 0]), lr_d)  # type: ignore[arg-type]
            batch = snap_to(np.exp(ln_b + points[:, 1]), b_d)  # type: ignore[arg-type]
            return np.column_stack([np.log(lr) - ln_lr, np.log(batch) - ln_b])

        return snap

    def _choose(
        self,
        hist: _History,
        scale: Scale,
        box: np.ndarray,
        rng: np.random.Generator,
        snap: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> tuple[np.ndarray, str, dict[str, Any]]:
        """The next (u, v): the law's point while it is free, else :meth:`_pick` among the
        trust region's candidates that repeat no trial (the region's centre jittered if none)."""
        belief: dict[str, Any] = {
            "prior_mean": self._prior.mean.tolist(),
            "prior_sd": self._prior.sd.tolist(),
        }
        group = hist.group_of(scale)  # before the fit, so a new scale gets its offset
        # A repeat is the same point at the same scale: at another scale it is new evidence.
        taken = hist.taken_at(group)
        law_point = np.clip(self._prior.mean, box[0], box[1])
        if not len(hist.taken) or (
            not len(hist.y)
            and not self._too_close(law_point[None], taken, coarse=self._mapping(hist))[0]
        ):
            return law_point, "law", belief
        # While the plateau is mapped the proposals trust the law's own width: a design around
        # the law that the mixture's wider posterior would scatter (on a landscape with a cliff
        # beside the optimum it sent early runs far off and over the edge). The mixture decides
        # once the lattice is done, and always decides the refined optimum.
        mapping = self._mapping(hist)
        posterior = self.fit(hist, law_width_only=mapping) if len(hist.y) else None
        region, _ = self.trust_region(hist, posterior, box, rng, group)
        belief["trust_center"] = region.center.tolist()
        belief["trust_radius_sd"] = float(math.sqrt(region.radius2))
        if posterior is not None:
            belief["posterior_optimum"] = posterior.optimum().tolist()
            if not hist.ran_at(group):
                # The first run at a new scale (the target's run after proxies, say) has no
                # incumbent at its scale — its loss offset is unknown, so expected improvement
                # would only chase that offset's variance. It goes where the pooled model puts
                # the optimum, as the law's point opens a study (unless another worker runs it).
                w = region.clip_to_box(bottom_in_region(posterior, region, group))
                # ... unless that is behind a wall (a failure above the best run's lr): there
                # the proposals below choose among the candidates the walls leave.
                blocked = self._too_close(w[None], taken, coarse=False)[0]
                if not blocked and not self._walled(w[None], hist)[0]:
                    return w, "optimum", belief
        candidates = self._candidates(region, rng, taken, hist, snap)
        if len(candidates) == 0:  # everything near is taken: widen to the whole box
            wide = TrustRegion(region.center, region.shape * 4, region.radius2, box)
            candidates = self._candidates(wide, rng, taken, hist, snap)
        if len(candidates) == 0:
            return region.clip_to_box(region.center + rng.normal(0, 0.5, 2)), "random", belief
        return self._pick(hist, posterior, group, region, candidates, rng, belief)

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
        """The acquisition step: one of ``candidates`` (points of ``region`` that repeat no
        trial, at least one), given the bowl ``posterior`` (None when nothing has been
        observed) and the trial's scale ``group``. Returns (w, kind, belief)."""
        if posterior is None:  # nothing observed yet (all failed or running): sample the prior
            target = rng.multivariate_normal(self._prior.mean, self._prior.cov)
            return self._nearest(candidates, target, self._bowl.H0), "prior", belief
        if self._acquisition in ("ei", "design"):
            mean, var = posterior.predict(candidates, group)
            in_group = hist.groups == group
            best = float(np.min(hist.y[in_group])) if np.any(in_group) else float(np.min(mean))
            # "design" maps the plateau by EI, and so are the runs a user keeps
            if (
                self._acquisition == "design"
                and not self._mapping(hist)
                and not self._kept(hist, group)
            ):
                # The run that most lowers the expected cost of training at the refined
                # optimum (BowlPosterior.design_gain), weighted as the fit would weigh its
                # predicted gap.
                gap = np.maximum(mean - best, 0.0)
                weight = gap_weights(gap, *posterior.window)
                gain = posterior.design_gain(candidates, group, self._bowl.noise_sd, weight)
                # Never a probe predicted more than the narrow cut above the best: on a
                # landscape far steeper than the released grids the widened window would
                # otherwise send runs far up the walls (on the built-in trainer, runs 20 %
                # above the best).
                near = gap <= self._bowl.cut
                if near.any():
                    gain = np.where(near, gain, -np.inf)
                return candidates[int(np.argmax(gain))], "design", belief
            sd = np.sqrt(var + self._bowl.noise_sd**2)
            zscore = (best - mean) / sd
            ei = sd * (zscore * _norm_cdf(zscore) + _norm_pdf(zscore))
            return candidates[int(np.argmax(ei))], "ei", belief
        theta = posterior.sample_theta(rng, 1)[0]
        draw_post = dataclasses.replace(posterior, mean=theta)
        target = draw_post.optimum_at(group)
        return self._nearest(candidates, target, draw_post.hessian), "thompson", belief

    def _kept(self, hist: _History, group: int) -> bool:
        """Whether a run at ``group``'s scale is one the user keeps rather than a probe for the
        refined optimum: a run at the target scale of a ``tune`` plan (its final, expensive
        runs, the best of which is kept) or of a study that also has proxy runs. Those go by
        expected improvement; in a single-scale study every run is a probe."""
        target = _scale_key(self._target)
        if hist.group_scales[group] != target:
            return False
        return hist.planned or any(key != target for key in hist.group_scales)

    def _mapping(self, hist: _History) -> bool:
        """Whether the study is still mapping the plateau: fewer than ``n_coarse`` trials in
        all, at any scale (the lattice, coarse repeats)."""
        return len(hist.taken) < self._n_coarse

    def _too_close(self, points: np.ndarray, taken: np.ndarray, *, coarse: bool) -> np.ndarray:
        """Whether each point repeats one of the ``taken`` trials: both its lr and its batch
        within a factor e^r of one already run, failed or running (coarse r while mapping)."""
        r = self._coarse_resolution if coarse else self._resolution
        if len(taken) == 0 or r == 0:
            return np.zeros(len(points), dtype=bool)
        close_u = np.abs(points[:, 0, None] - taken[None, :, 0]) < r
        close_v = np.abs(points[:, 1, None] - taken[None, :, 1]) < r
        return (close_u & close_v).any(axis=1)

    def _candidates(
        self,
        region: TrustRegion,
        rng: np.random.Generator,
        taken: np.ndarray,
        hist: _History,
        snap: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> np.ndarray:
        mapping = self._mapping(hist)
        if mapping and self._lattice_step > 0:
            # Mapping the plateau: a multiplicative lattice around the law's point (√2 steps by
            # default, the usual sweep), points clipped onto the bounds included.
            step = self._lattice_step
            lo, hi = region.ellipse_extent()
            lo, hi = np.maximum(lo, region.box[0]), np.minimum(hi, region.box[1])
            iu = np.arange(math.floor(lo[0] / step), math.ceil(hi[0] / step) + 1) * step
            iv = np.arange(math.floor(lo[1] / step), math.ceil(hi[1] / step) + 1) * step
            pts = np.stack(np.meshgrid(iu, iv), -1).reshape(-1, 2)
            pts = np.concatenate([pts, region.clip_to_box(pts)])
        else:  # settling the bottom: continuous candidates, uniform in the trust region
            # (256 in 2-D: a few hundredths of a ln unit apart, far finer than the noise
            # resolves; 512 cost 10 % of a suggestion and moved no figure of the bench)
            pts = region.sample(rng, CANDIDATES)
            pts = np.concatenate([pts, region.clip_to_box(region.center)[None]])
        # Shuffled, so that ties between mirror-image candidates of a symmetric posterior are
        # broken by the seed, not by the order the candidates were generated in.
        pts = rng.permutation(pts)
        pts = pts[region.contains(pts)]
        if snap is not None and len(pts):
            pts = snap(pts)
        pts = pts[~self._too_close(pts, taken, coarse=mapping)]
        return pts[~self._walled(pts, hist)]

    def _walled(self, points: np.ndarray, hist: _History) -> np.ndarray:
        """Whether each point is behind a wall: a failure above the best point's learning rate
        excludes its lr and everything above it within one unit of batch (ln) of it."""
        blocked = np.zeros(len(points), dtype=bool)
        if len(hist.failed) and len(hist.w):
            ref_u = float(hist.best_w[0, 0])
            for fu, fv in hist.failed:
                if fu > ref_u:
                    blocked |= (points[:, 0] >= fu - self._resolution) & (
                        np.abs(points[:, 1] - fv) < 1.0
                    )
        return blocked

    @staticmethod
    def _nearest(candidates: np.ndarray, target: np.ndarray, metric: np.ndarray) -> np.ndarray:
        d = candidates - target
        cost = np.einsum("ni,ij,nj->n", d, metric, d)
        return candidates[int(np.argmin(cost))]


def _guess_kind(name: str) -> str | None:
    """``"lr"`` or ``"batch"`` for the usual spellings of those parameters, else None."""
    low = name.lower().replace("-", "_")
    if (
        low in ("lr", "eta")
        or "learning_rate" in low
        or low.endswith("_lr")
        or low.startswith("lr_")
    ):
        return "lr"
    if low == "bs" or "batch" in low:
        return "batch"
    return None


def _norm_pdf(z: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _norm_cdf(z: np.ndarray) -> np.ndarray:
    from math import erf

    return 0.5 * (1.0 + np.vectorize(erf)(z / math.sqrt(2.0)))
