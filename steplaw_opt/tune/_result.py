"""What a tuning run reports: one event per run (progress displays) and the final result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from steplaw_opt.scale import Scale
from steplaw_opt.tune._plan import ProxyPlan


@dataclass(frozen=True)
class TrialEvent:
    """What happened in one run, for progress displays (``on_trial`` callback)."""

    number: int
    index: int  # position in the plan (0-based)
    planned: int
    scale: Scale
    lr: float
    batch_size: float
    loss: float | None
    failure: str | None
    best: float | None  # the best loss so far at this run's scale
    compute_spent: float
    seconds: float  # the run's wall time so far ("progress") or in all ("end")
    phase: Literal["start", "progress", "end"]
    step: int | None = None  # "progress": the step of the latest intermediate loss
    total_steps: int | None = None  # the run's steps (its tokens ÷ its batch in tokens)
    budget: float | None = None  # the study's budget, in target-run equivalents
    time_spent: float | None = None  # wall seconds the study has spent (steplaw_opt.tune._time)
    time_left: float | None = None  # predicted seconds of the rest (None: nothing to go on)
    time_budget: Any = None  # the TimeBudget in force (None or unlimited: no limit)
    gpu_hours: float | None = None  # GPU-hours the study's runs have spent
    notes: tuple[str, ...] = ()  # "end": what to say now, while the plan still runs


@dataclass
class TuneResult:
    """The outcome of :func:`~steplaw_opt.tune.tune`: the refined optimum and where everything
    was recorded."""

    study_name: str
    storage: str
    target: Scale
    law: str
    plan: ProxyPlan
    refined: Any  # steplaw_opt.samplers.RefinedOptimum
    n_complete: int
    n_failed: int
    compute_spent: float
    law_lr: float
    law_batch_tokens: float
    extras: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "study_name": self.study_name,
            "storage": self.storage,
            "target": {"N": self.target.N, "D": self.target.D, "seq_len": self.target.seq_len},
            "law": self.law,
            "law_lr": self.law_lr,
            "law_batch_tokens": self.law_batch_tokens,
            "plan": self.plan.to_dict(),
            "n_complete": self.n_complete,
            "n_failed": self.n_failed,
            "compute_spent": self.compute_spent,
            "refined_optimum": self.refined.to_dict(),
            **self.extras,
        }
