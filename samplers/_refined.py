"""The refined optimum: the landscape posterior's argmin mapped back to the target scale."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import optuna

from steplaw_opt.errors import SteplawInputError
from steplaw_opt.priors._law import BatchRounding, round_batch_sequences
from steplaw_opt.samplers._region import bottom_in_region

MASS68, MASS95 = 0.6827, 0.95
DEFAULT_PLATEAU_EPS = 0.0025  # the Step Law authors' threshold: within 0.25 % of the minimum


@dataclass(frozen=True)
class RefinedOptimum:
    """What to train the target run with, and how sure that is.

    Intervals are central credible intervals of the optimum's location; the plateau ranges are
    the lr (at the recommended batch) and the batch (at the recommended lr) whose predicted loss
    is within ``plateau_eps`` of the predicted minimum.
    """

    lr: float
    batch_tokens: float
    batch_sequences: float
    batch_sequences_rounded: float
    seq_len: int
    u: float
    v: float
    predicted_loss: float | None
    lr_interval_68: tuple[float, float]
    lr_interval_95: tuple[float, float]
    batch_tokens_interval_68: tuple[float, float]
    batch_tokens_interval_95: tuple[float, float]
    plateau_eps: float
    plateau_lr: tuple[float, float]
    plateau_batch_tokens: tuple[float, float]
    n_observations: int
    law_lr: float
    law_batch_tokens: float
    best_observed: dict[str, Any] | None
    # What to check before training with it: a recommendation on a search bound, a rounded
    # batch outside its own interval (one line each; empty when there is nothing to say).
    notes: tuple[str, ...] = ()
    # The relative loss the rounding of the batch costs by the fitted bowl at the target,
    # expm1(H_vv · ln(rounded / batch)²); 0 when the batch is already whole.
    rounding_cost: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def optimum_draws(
    sampler: Any, posterior: Any, region: Any, rng: np.random.Generator, n_draws: int
) -> np.ndarray:
    """Draws of the optimum's (u, v): the posterior's, kept to the trust region (clipped into
    the box when fewer than 50 fall inside), or the prior's before any run (``posterior``
    ``None``)."""
    if posterior is None:
        return rng.multivariate_normal(sampler.prior.mean, sampler.prior.cov, n_draws)
    draws = posterior.sample_optima(rng, n_draws)
    inside = region.contains(draws)
    return draws[inside] if inside.sum() > 50 else region.clip_to_box(draws)


def interval_draws(
    sampler: Any, hist: Any, region: Any, rng: np.random.Generator, n_draws: int
) -> np.ndarray:
    r"""Draws of where the landscape's optimum is, for the refined optimum's intervals.

    The bowl is refitted at the measured noise level (the fit that places the recommendation
    keeps headroom above it, which the design and expected-improvement steps need) and each
    draw of its bottom gets the bowl's own misfit added, :math:`\epsilon \sim
    N(0, \mathrm{diag}(m_u^2, m_v^2))`: how far the bottom of a bowl fitted to every cell of a
    released grid lies from the consensus of the noise-free surfaces (the mean of their
    argmins), which no number of runs removes (both measured on the released grids by
    ``scripts/fit_landscape.py``).
    """
    bowl = sampler._bowl
    noise = bowl.measured_noise_sd  # None: the fit's own
    posterior = sampler.fit(hist, noise_sd=noise)
    draws = optimum_draws(sampler, posterior, region, rng, n_draws)
    misfit = np.asarray(bowl.misfit_sd, dtype=float)
    if np.any(misfit > 0):
        draws = draws + rng.standard_normal(draws.shape) * misfit
    return draws


def refined_optimum(
    study: optuna.Study,
    *,
    sampler: Any = None,
    round_batch: BatchRounding = "none",
    plateau_eps: float = DEFAULT_PLATEAU_EPS,
    n_draws: int = 2000,
    seed: int = 0,
) -> RefinedOptimum:
    r"""The posterior optimum of the study's landscape model at the target scale.

    The bowl is fitted to every finished trial (pooled across scales in law-normalised
    coordinates); its argmin :math:`w^* = (u^*, v^*)`, kept inside the trust region, maps back as
    :math:`\mathrm{lr} = \mathrm{lr}^*(\text{target})\,e^{u^*}`,
    :math:`B = B^*(\text{target})\,e^{v^*}`. Credible intervals come from ``n_draws`` posterior
    draws of where the optimum is (:func:`interval_draws`: the bowl's posterior at the
    measured noise, plus its misfit). With no finished trial it is the law's own point with
    the prior's intervals.

    Args:
        study: the study (any storage).
        sampler: the :class:`PlateauSampler` (or BoTorch sampler) that ran it; defaults to
            ``study.sampler``.
        round_batch: quantise the batch in sequences: ``"none"``, ``"pow2"``, or a multiple
            ``k`` (micro-batch × data-parallel size).
        plateau_eps: relative loss tolerance of the plateau ranges (default 0.25 %).
    """
    from steplaw_opt.samplers._plateau import PlateauSampler

    sampler = sampler if sampler is not None else study.sampler
    if not isinstance(sampler, PlateauSampler):
        raise SteplawInputError(
            "refined_optimum needs the study's PlateauSampler: pass sampler=… "
            f"(got {type(sampler).__name__})"
        )
    if not (isinstance(plateau_eps, float | int) and 0 < plateau_eps < 1):
        raise SteplawInputError(f"plateau_eps must be in (0, 1), got {plateau_eps!r}")
    target = sampler.target
    hist = sampler.history(study)
    rng = np.random.default_rng(seed)
    box = sampler._box(target, *_declared(study, sampler))
    if len(hist.y):
        group = hist.group_of(target)
        posterior = sampler.fit(hist)
        region, draws = sampler.trust_region(hist, posterior, box, rng)
        hessian = posterior.hessian
        w = bottom_in_region(posterior, region)
        draws = interval_draws(sampler, hist, region, rng, n_draws)
        has_target = bool(np.any(hist.groups == group))
        predicted = None
        # The bowl models ln(loss) when every loss is positive and the study minimises; the
        # predicted loss at the target is then exp of the bowl there. Otherwise there is no
        # loss scale to report.
        minimising = study.direction == optuna.study.StudyDirection.MINIMIZE
        positive = all(t.value > 0 for t in study.trials if t.value is not None)
        if has_target and minimising and positive:
            predicted = float(np.exp(posterior.predict(w[None], group)[0][0]))
    else:
        w = np.clip(sampler.prior.mean, box[0], box[1])
        draws = optimum_draws(sampler, None, None, rng, n_draws)
        hessian = sampler._bowl.H0
        predicted = None
    lr, batch = sampler.space.from_uv(float(w[0]), float(w[1]), target)
    tokens_per = sampler.space.tokens_per_batch_unit(target)
    batch_tokens = batch * tokens_per
    ln_lr0, ln_b0 = sampler.space.origin(target)
    # Central credible intervals from the draws' quantiles, placed around the recommendation:
    # w* = −A⁻¹b/2 is a ratio with heavy tails, so ±z·sd would overstate where it lies.
    center = np.median(draws, axis=0) if len(draws) > 1 else np.zeros(2)

    def interval(
        center_ln: float, axis: int, mass: float, factor: float = 1.0
    ) -> tuple[float, float]:
        if len(draws) < 2:
            return (math.exp(center_ln) * factor, math.exp(center_ln) * factor)
        lo, hi = np.quantile(draws[:, axis], [(1 - mass) / 2, (1 + mass) / 2]) - center[axis]
        return (math.exp(center_ln + lo) * factor, math.exp(center_ln + hi) * factor)

    delta = math.log1p(plateau_eps)
    half_u = math.sqrt(delta / hessian[0, 0])
    half_v = math.sqrt(delta / hessian[1, 1])
    ln_lr = ln_lr0 + w[0]
    ln_b = ln_b0 + w[1]
    best = None
    if len(hist.y):
        completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if completed:
            b = study.best_trial
            best = {"number": b.number, "value": b.value, "params": dict(b.params)}
    seq_len = int(sampler.space.seq_len or target.seq_len)
    lr_95 = interval(ln_lr, 0, MASS95)
    batch_95 = interval(ln_b, 1, MASS95, tokens_per)
    sequences = batch_tokens / seq_len
    rounded = round_batch_sequences(sequences, round_batch)
    cost = math.expm1(float(hessian[1, 1]) * math.log(rounded / sequences) ** 2)
    notes = _bound_notes(w, box, lr, sequences)
    if rounded != sequences and not (batch_95[0] / seq_len <= rounded <= batch_95[1] / seq_len):
        notes.append(
            f"the rounded batch {rounded:g} lies outside the batch's 95 % interval "
            f"({batch_95[0] / seq_len:.3g}–{batch_95[1] / seq_len:.3g} sequences): the rounding "
            f"costs more than the uncertainty, about {cost:.2%} in loss by the fitted bowl; "
            "consider another rounding"
        )
    elif cost >= ROUNDING_NOTE:
        notes.append(
            f"rounding the batch to {rounded:g} sequences (from {sequences:.3g}) costs about "
            f"{cost:.2%} in loss by the fitted bowl"
        )
    return RefinedOptimum(
        lr=lr,
        batch_tokens=batch_tokens,
        batch_sequences=batch_tokens / seq_len,
        batch_sequences_rounded=rounded,
        seq_len=seq_len,
        u=float(w[0]),
        v=float(w[1]),
        predicted_loss=predicted,
        lr_interval_68=interval(ln_lr, 0, MASS68),
        lr_interval_95=lr_95,
        batch_tokens_interval_68=interval(ln_b, 1, MASS68, tokens_per),
        batch_tokens_interval_95=batch_95,
        plateau_eps=plateau_eps,
        plateau_lr=(math.exp(ln_lr - half_u), math.exp(ln_lr + half_u)),
        plateau_batch_tokens=(
            math.exp(ln_b - half_v) * tokens_per,
            math.exp(ln_b + half_v) * tokens_per,
        ),
        n_observations=len(hist.y),
        law_lr=math.exp(ln_lr0),
        law_batch_tokens=math.exp(ln_b0) * tokens_per,
        best_observed=best,
        notes=tuple(notes),
        rounding_cost=cost,
    )


# A rounding that costs at least this much loss (relative) is worth a note.
ROUNDING_NOTE = 0.0001

# Within this many ln units of a search bound, the recommendation is "on" it.
ON_BOUND = 0.05


def _bound_notes(w: np.ndarray, box: np.ndarray, lr: float, batch: float) -> list[str]:
    """One line per search bound the recommendation sits on: the model's bottom may lie beyond
    it, and only a wider bound can tell."""
    notes = []
    for axis, (name, value, unit) in enumerate(
        (("learning rate", lr, ""), ("batch", batch, " sequences"))
    ):
        for side, edge in (("lower", box[0, axis]), ("upper", box[1, axis])):
            if np.isfinite(edge) and abs(w[axis] - edge) < ON_BOUND:
                notes.append(
                    f"the {name} sits on its {side} search bound ({value:.3g}{unit}): the "
                    f"optimum may lie beyond it; widen that bound and run more trials"
                )
    return notes


def _declared(study: optuna.Study, sampler: Any) -> tuple[Any, Any]:
    known = sampler._known_distributions(study)
    return known.get(sampler.lr_param), known.get(sampler.batch_param)
