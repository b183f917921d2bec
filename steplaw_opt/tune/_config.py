"""The settings of a tuning study, and what they make: the plan, the bounds and the sampler.

:class:`TuneConfig` is checked once, when it is made; the study stores it (``steplaw.config``,
JSON) and every worker rebuilds it from there, so all processes on one study run the same plan.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from steplaw_opt._records import BATCH_PARAM, LR_PARAM
from steplaw_opt.errors import SteplawInputError
from steplaw_opt.priors import Law, Prior, load_law
from steplaw_opt.priors._law import BatchRounding
from steplaw_opt.scale import Scale
from steplaw_opt.space import BatchUnit
from steplaw_opt.tune._plan import ProxyPlan, check_budget, ladder_scales, plan_proxies
from steplaw_opt.tune._time import TimeBudget

SamplerName = Literal["plateau", "botorch"]
SAMPLERS = ("plateau", "botorch")


@dataclass(frozen=True)
class TuneConfig:
    """How a study tunes: the law, the budget, the search space and how runs are made.

    Every field is checked when the config is made (one :class:`SteplawInputError` line naming
    the bad value); checks that need the target (bounds against the trust region) run when the
    study is set up.

    Args:
        law: a law card's name, a path to a card (``.toml``), or a :class:`Law`.
        budget: proxy compute in target-run equivalents (ΣN·D of the runs ÷ N·D of the target).
        n_trials: cap on the number of runs.
        target_runs: full runs at the target scale inside the budget (each costs 1.0).
        sampler: ``"plateau"`` (NumPy) or ``"botorch"`` (Gaussian process).
        seed: the sampler's seed.
        batch_unit: unit of the batch parameter: ``"sequences"`` (of the target's ``seq_len``)
            or ``"tokens"``.
        lr_bounds, batch_bounds: hard bounds (default: wide around every planned scale's law
            point; the trust region does the narrowing).
        batch_multiple: the batch must be a multiple of this (micro-batch × data-parallel size).
        round_batch: quantisation of the recommended batch: ``"none"``, ``"pow2"`` or ``k``.
        smaller_n: allow proxy runs at a quarter of the target's N.
        ladder: proxy model sizes N (non-embedding parameters, each smaller than the
            target's): a ladder across model size. Each rung runs at the same tokens per
            parameter as the target (D·N_rung/N_target), costs (N_rung/N_target)² of a target
            run, and the plan spreads the budget over the rungs
            (:func:`~steplaw_opt.tune.plan_proxies`) instead of over token fractions at the
            target's N. ``None``: no ladder.
        drift: let the law's error move with scale (the sampler's drift terms,
            :func:`~steplaw_opt.landscape.fit_bowl`): proxies at several scales that agree on
            a trend carry it to the target, within a prior on how far a law's exponents can
            be off (on by default). Off: one offset shared by every scale.
        timeout_per_trial: seconds before a run is stopped and counted as failed.
        heartbeat_interval: seconds between heartbeats of a running trial (SQL storages only);
            a trial whose worker stops beating for twice as long is failed and re-queued with
            the same parameters and scale. ``None``: no heartbeats (one worker).
        objective_spec: how ``steplaw-opt worker`` rebuilds the objective (stored in the study).
        time_budget: wall time of the study, seconds (or a duration: ``"45m"``, ``"1h30m"``);
            runs stop being started when the time spent plus the next run's predicted time
            would pass it (:mod:`steplaw_opt.tune._time`). ``None``: no limit.
        gpu_hours: GPU-hours of the study's runs (their wall times × ``gpus_per_run``), the
            same way. ``None``: no limit.
        gpus_per_run: devices one run uses (for ``gpu_hours``).

    Example:
        >>> from steplaw_opt.tune import TuneConfig
        >>> config = TuneConfig(budget=0.5, batch_multiple=8)
        >>> config.law_card.name, config.to_dict()["budget"]
        ('step-law', 0.5)
    """

    law: str | Path | Law = "step-law"
    budget: float = 1.0
    n_trials: int | None = None
    target_runs: int = 0
    sampler: SamplerName = "plateau"
    seed: int | None = None
    batch_unit: BatchUnit = "sequences"
    lr_bounds: tuple[float, float] | None = None
    batch_bounds: tuple[float, float] | None = None
    batch_multiple: int | None = None
    round_batch: BatchRounding = "none"
    smaller_n: bool = False
    ladder: tuple[float, ...] | None = None
    drift: bool = True
    timeout_per_trial: float | None = None
    heartbeat_interval: int | None = None
    objective_spec: dict[str, Any] | None = None
    time_budget: float | str | None = None
    gpu_hours: float | None = None
    gpus_per_run: int = 1
    _law: Law = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from steplaw_opt.tune import _checks as c

        object.__setattr__(self, "_law", load_law(self.law))
        if not isinstance(self.sampler, str) or self.sampler not in SAMPLERS:
            raise SteplawInputError(
                f"unknown sampler {c.show(self.sampler)}; choose plateau or botorch"
            )
        positive = "a positive integer"
        timeout = self.timeout_per_trial
        checked: dict[str, Any] = {  # each field as the plain Python value it stores
            "budget": c.as_number("budget", self.budget, "a non-negative number"),
            "n_trials": c.optional_integer("n_trials", self.n_trials, positive, 1),
            "target_runs": c.as_integer("target_runs", self.target_runs, "a non-negative integer"),
            "seed": c.optional_integer("seed", self.seed, "a non-negative integer", 0),
            "batch_unit": c.choice("batch_unit", self.batch_unit, ("sequences", "tokens")),
            "lr_bounds": c.bounds("lr_bounds", self.lr_bounds),
            "batch_bounds": c.bounds("batch_bounds", self.batch_bounds),
            "batch_multiple": c.optional_integer(
                "batch_multiple", self.batch_multiple, positive, 1
            ),
            "round_batch": c.rounding(self.round_batch),
            "smaller_n": c.flag("smaller_n", self.smaller_n),
            "ladder": c.ladder(self.ladder),
            "drift": c.flag("drift", self.drift),
            "timeout_per_trial": None
            if timeout is None
            else c.as_number("timeout_per_trial", timeout, "a positive number of seconds"),
            "heartbeat_interval": c.optional_integer(
                "heartbeat_interval",
                self.heartbeat_interval,
                "a whole number of seconds >= 1",
                1,
            ),
        }
        if checked["timeout_per_trial"] is not None and checked["timeout_per_trial"] <= 0:
            raise SteplawInputError(
                f"timeout_per_trial must be a positive number of seconds, got {c.show(timeout)}"
            )
        if self.objective_spec is not None and not isinstance(self.objective_spec, dict):
            raise SteplawInputError(
                f"objective_spec must be a dict or None, got {c.show(self.objective_spec)}"
            )
        from steplaw_opt.tune import _time

        if self.time_budget is not None:
            checked["time_budget"] = _time.parse_duration(self.time_budget, "time_budget")
        if self.gpu_hours is not None:
            checked["gpu_hours"] = _time.parse_gpu_hours(self.gpu_hours, "gpu_hours")
        checked["gpus_per_run"] = _time.check_gpus(self.gpus_per_run, "gpus_per_run")
        for key, value in checked.items():
            object.__setattr__(self, key, value)
        check_budget(self.budget, self.n_trials, self.target_runs)
        if self.ladder is not None and self.smaller_n:
            raise SteplawInputError("give a ladder or smaller_n, not both (a ladder names its N)")

    def plan(
        self,
        target: Scale,
        allowed_tokens: Sequence[float] | None = None,
        allowed_scales: Sequence[Scale] | None = None,
    ) -> ProxyPlan:
        """The proxy plan at ``target``; ``allowed_tokens`` and ``allowed_scales`` are what the
        objective can run (:meth:`~steplaw_opt.objectives.Objective.allowed_scales`), ``None``
        when it can run anything. A ladder needs an objective that builds any model size."""
        if self.ladder is not None:
            if allowed_scales is not None or allowed_tokens is not None:
                raise SteplawInputError(
                    "this objective chooses its own proxy scales (a replayed grid): "
                    "a ladder cannot be used with it"
                )
            allowed_scales = ladder_scales(target, self.ladder)
        return plan_proxies(
            target,
            self.budget,
            n_trials=self.n_trials,
            allowed_tokens=allowed_tokens,
            smaller_n=bool(self.smaller_n),
            target_runs=int(self.target_runs or 0),
            allowed_scales=allowed_scales,
        )

    @property
    def law_card(self) -> Law:
        """The loaded law card."""
        return self._law

    @property
    def time(self) -> TimeBudget:
        """The time budget (:class:`~steplaw_opt.tune._time.TimeBudget`)."""
        seconds = self.time_budget
        return TimeBudget(
            seconds=None if seconds is None else float(seconds),
            gpu_hours=self.gpu_hours,
            gpus_per_run=int(self.gpus_per_run),
        )

    def law_ref(self) -> str:
        """How a worker finds the card again: its name, or a card file's absolute path."""
        if isinstance(self.law, Law):
            return self._law.name
        ref = str(self.law)
        return str(Path(ref).resolve()) if Path(ref).is_file() else ref

    def to_dict(self) -> dict[str, Any]:
        """The JSON document the study stores (``steplaw.config``)."""
        rounding = self.round_batch
        return {
            "law": self.law_ref(),
            "budget": float(self.budget),
            "n_trials": self.n_trials,
            "target_runs": int(self.target_runs),
            "sampler": self.sampler,
            "seed": self.seed,
            "batch_unit": self.batch_unit,
            "lr_bounds": list(self.lr_bounds) if self.lr_bounds else None,
            "batch_bounds": list(self.batch_bounds) if self.batch_bounds else None,
            "batch_multiple": self.batch_multiple,
            "round_batch": rounding if isinstance(rounding, (str, int)) else "none",
            "smaller_n": bool(self.smaller_n),
            "ladder": list(self.ladder) if self.ladder is not None else None,
            "drift": bool(self.drift),
            "timeout_per_trial": self.timeout_per_trial,
            "heartbeat_interval": self.heartbeat_interval,
            "objective": self.objective_spec,
            "time_budget": self.time_budget,
            "gpu_hours": self.gpu_hours,
            "gpus_per_run": int(self.gpus_per_run),
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> TuneConfig:
        """The config a study stored (:meth:`to_dict`); keys an older version did not write
        take their defaults."""
        lr_b, batch_b = doc.get("lr_bounds"), doc.get("batch_bounds")
        return cls(
            law=doc.get("law", "step-law"),
            budget=doc.get("budget", 1.0),
            n_trials=doc.get("n_trials"),
            target_runs=int(doc.get("target_runs") or 0),
            sampler=doc.get("sampler", "plateau"),
            seed=doc.get("seed"),
            batch_unit=doc.get("batch_unit", "sequences"),
            lr_bounds=tuple(lr_b) if lr_b else None,  # type: ignore[arg-type]
            batch_bounds=tuple(batch_b) if batch_b else None,  # type: ignore[arg-type]
            batch_multiple=doc.get("batch_multiple"),
            round_batch=doc.get("round_batch", "none"),
            smaller_n=bool(doc.get("smaller_n")),
            ladder=doc.get("ladder"),
            drift=bool(doc.get("drift", True)),
            timeout_per_trial=doc.get("timeout_per_trial"),
            heartbeat_interval=doc.get("heartbeat_interval"),
            objective_spec=doc.get("objective"),
            time_budget=doc.get("time_budget"),
            gpu_hours=doc.get("gpu_hours"),
            gpus_per_run=int(doc.get("gpus_per_run") or 1),
        )


def default_bounds(
    law: Law, target: Scale, scales: Sequence[Scale], batch_unit: str
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Bounds that hold every planned scale's trust region with room to spare: the law's point
    at each scale ± max(2, 4 prior standard deviations) in ln units."""
    prior = Prior.from_law(law, target)
    reach = max(2.0, 4.0 * float(prior.sd.max()))
    lrs, batches = [], []
    for s in [target, *scales]:
        per_unit = 1.0 if batch_unit == "tokens" else float(s.seq_len)
        lrs.append(math.log(law.lr_at(s)))
        batches.append(math.log(law.batch_tokens_at(s) / per_unit))
    lr = (math.exp(min(lrs) - reach), min(1.0, math.exp(max(lrs) + reach)))
    batch = (max(1.0, math.exp(min(batches) - reach)), math.exp(max(batches) + reach))
    return lr, batch


def make_sampler(
    name: str,
    target: Scale,
    law: Law,
    batch_unit: str,
    seed: int | None,
    *,
    drift: bool = True,
) -> Any:
    """The study's sampler: :class:`PlateauSampler` or :class:`BoTorchPlateauSampler` on the
    parameters ``lr`` and ``batch_size`` (with the bowl's drift terms when ``drift``)."""
    from steplaw_opt import samplers

    if name not in SAMPLERS:
        raise SteplawInputError(f"unknown sampler {name!r}; choose plateau or botorch")
    cls = samplers.PlateauSampler if name == "plateau" else samplers.BoTorchPlateauSampler
    return cls(
        target,
        law=law,
        lr_param=LR_PARAM,
        batch_param=BATCH_PARAM,
        batch_unit=batch_unit,  # type: ignore[arg-type]
        seed=seed,
        drift=drift,
    )


def check_bounds(
    law: Law,
    target: Scale,
    schedule: Sequence[Scale],
    batch_unit: str,
    lr_bounds: tuple[float, float] | None,
    batch_bounds: tuple[float, float] | None,
) -> tuple[tuple[float, float], tuple[float, float]]:
    """The search bounds (the defaults where not given), refused in one line when they are
    not ``0 < low < high`` or hold none of the target's trust region."""
    default_lr, default_batch = default_bounds(law, target, schedule, batch_unit)
    lr_b = lr_bounds or default_lr
    batch_b = batch_bounds or default_batch
    for name, (lo, hi) in (("lr", lr_b), ("batch", batch_b)):
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
            raise SteplawInputError(f"{name} bounds must satisfy 0 < low < high, got [{lo}, {hi}]")
    # The whole trust region outside the bounds is a mistake worth stopping for.
    from steplaw_opt.priors import TrustRegion
    from steplaw_opt.space import LawSpace

    space = LawSpace(law, batch_unit)  # type: ignore[arg-type]
    box = space.bounds_uv(lr_b, batch_b, target)
    TrustRegion.from_prior(Prior.from_law(law, target), box=box)
    return (float(lr_b[0]), float(lr_b[1])), (float(batch_b[0]), float(batch_b[1]))


def batch_distribution(bounds: tuple[float, float], multiple: int | None) -> dict[str, Any]:
    """Keywords of ``trial.suggest_int`` for the batch: log-uniform whole numbers, or the
    multiples of ``multiple`` inside ``bounds``."""
    lo, hi = bounds
    if multiple is None:
        low, high = max(1, math.ceil(lo)), max(1, math.floor(hi))
        if high <= low:
            raise SteplawInputError(f"batch bounds [{lo:g}, {hi:g}] hold no whole batch size")
        return {"low": low, "high": high, "log": True}
    low = multiple * max(1, math.ceil(lo / multiple))
    high = multiple * math.floor(hi / multiple)
    if high < low:
        raise SteplawInputError(
            f"no multiple of --batch-multiple {multiple} lies in the batch bounds [{lo:g}, {hi:g}]"
        )
    return {"low": low, "high": high, "step": multiple}


@dataclass
class StudySetup:
    """What a config makes at a target: the plan, its schedule (one scale per planned run),
    the bounds, the batch distribution and the sampler."""

    target: Scale
    config: TuneConfig
    plan: ProxyPlan
    schedule: list[Scale]
    lr_bounds: tuple[float, float]
    batch_dist: dict[str, Any]
    sampler: Any

    @property
    def law(self) -> Law:
        return self.config.law_card

    @classmethod
    def build(
        cls,
        target: Scale,
        config: TuneConfig,
        allowed_tokens: Sequence[float] | None,
        allowed_scales: Sequence[Scale] | None = None,
    ) -> StudySetup:
        """The plan, bounds and sampler of a study; ``allowed_tokens`` are the token counts the
        objective can run at the target's N and ``allowed_scales`` the (N, D) it can run at
        all (a replayed grid), or ``None``."""
        law = config.law_card
        plan = config.plan(target, allowed_tokens, allowed_scales)
        schedule = list(plan.schedule())
        lr_b, batch_b = check_bounds(
            law, target, schedule, config.batch_unit, config.lr_bounds, config.batch_bounds
        )
        batch_dist = batch_distribution(batch_b, config.batch_multiple)
        sampler = make_sampler(
            config.sampler, target, law, config.batch_unit, config.seed, drift=bool(config.drift)
        )
        return cls(target, config, plan, schedule, lr_b, batch_dist, sampler)
