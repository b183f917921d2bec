r"""Proxy plans: spend a compute budget on short runs at smaller scales.

A run at scale :math:`(N, D)` costs :math:`N D / (N_t D_t)` target-run equivalents, where
:math:`(N_t, D_t)` is the target. The plan picks proxy scales — smaller D at the target's N
first (fractions 1/16, 1/8 and 1/4 of the target's tokens by default, or the token counts an
objective allows), smaller N only when asked — and how many runs each gets: the budget is shared
equally between the stages, each stage gets as many runs as its share buys, and what is left
buys extra runs at the largest scale that still fits (closest to the target, so most
informative). The sampler pools all of them in law-normalised coordinates with one loss offset
per scale, so the plan only decides where compute goes, not how results are combined.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from steplaw_opt.errors import SteplawInputError
from steplaw_opt.scale import Scale

DEFAULT_FRACTIONS = (1 / 16, 1 / 8, 1 / 4)
# Far beyond any real plan: a typo (1e9 for 1.0) is refused up front instead of planned.
MAX_BUDGET = 1e4  # target-run equivalents
MAX_RUNS = 100_000
# The smallest ladder rung, as a fraction of the target's N: a 1B target's rungs stop at 1M.
# Far below it a size is more likely a unit slip (1K for 1M) than a proxy worth running.
MIN_RUNG_FRACTION = 1e-3


@dataclass(frozen=True)
class ProxyStage:
    """``runs`` proxy runs at ``scale``, each costing ``cost`` target-run equivalents."""

    scale: Scale
    runs: int
    cost: float

    @property
    def compute(self) -> float:
        return self.runs * self.cost


@dataclass(frozen=True)
class ProxyPlan:
    """The stages in the order they run (cheapest first)."""

    target: Scale
    budget: float
    stages: tuple[ProxyStage, ...]

    @property
    def total_runs(self) -> int:
        return sum(s.runs for s in self.stages)

    @property
    def compute(self) -> float:
        return sum(s.compute for s in self.stages)

    def purposes(self) -> list[str]:
        """What each stage is for, in order: the cheapest locates the bowl (its offset from
        the law), each one closer to the target measures how that offset moves with N and D
        (the drift the sampler carries to the target), and runs at the target measure it
        there."""
        out = []
        for i, stage in enumerate(self.stages):
            if stage.cost >= 1 - 1e-9:
                out.append("the target itself")
            elif i == 0:
                out.append("locate the bowl")
            else:
                out.append("measure the drift")
        return out

    def schedule(self) -> list[Scale]:
        """One scale per planned run, in order."""
        return [s.scale for s in self.stages for _ in range(s.runs)]

    def to_dict(self) -> dict[str, object]:
        return {
            "target": {"N": self.target.N, "D": self.target.D, "seq_len": self.target.seq_len},
            "budget": self.budget,
            "compute": self.compute,
            "runs": self.total_runs,
            "stages": [
                {
                    "N": s.scale.N,
                    "D": s.scale.D,
                    "runs": s.runs,
                    "cost_each": s.cost,
                    "purpose": purpose,
                }
                for s, purpose in zip(self.stages, self.purposes(), strict=True)
            ],
        }


def run_cost(scale: Scale, target: Scale) -> float:
    """Compute of one run at ``scale`` in target-run equivalents: N·D / (N_t·D_t)."""
    return float(scale.N or 0) * float(scale.D or 0) / (float(target.N or 0) * float(target.D or 0))


def check_budget(budget: float, n_trials: int | None, target_runs: int) -> None:
    """One line naming the bad value for a budget, run cap or number of target runs that no
    plan can honour (before a target is known: :class:`~steplaw_opt.tune.TuneConfig` checks
    them at construction)."""
    if (
        isinstance(budget, bool)
        or not isinstance(budget, (int, float))
        or not (math.isfinite(budget) and budget >= 0)
    ):
        raise SteplawInputError(f"budget must be a non-negative number, got {budget!r}")
    if budget > MAX_BUDGET:
        raise SteplawInputError(
            f"budget {budget:g} target-run equivalents is more than {MAX_BUDGET:g}: a typo?"
        )
    if n_trials is not None and (isinstance(n_trials, bool) or n_trials < 1):
        raise SteplawInputError(f"n_trials must be a positive integer, got {n_trials!r}")
    if n_trials is not None and n_trials > MAX_RUNS:
        raise SteplawInputError(f"n_trials {n_trials} is more than {MAX_RUNS:,} runs: a typo?")
    if isinstance(target_runs, bool) or target_runs < 0:
        raise SteplawInputError(f"target_runs must be a non-negative integer, got {target_runs!r}")
    if target_runs > budget + 1e-9:
        raise SteplawInputError(
            f"{target_runs} target run(s) cost {target_runs:.2f} but the budget is {budget:g}"
        )


def plan_proxies(
    target: Scale,
    budget: float = 1.0,
    *,
    n_trials: int | None = None,
    allowed_tokens: Sequence[float] | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    smaller_n: bool = False,
    target_runs: int = 0,
    allowed_scales: Sequence[Scale] | None = None,
) -> ProxyPlan:
    """Plan the proxy runs for ``target`` within ``budget`` target-run equivalents.

    Args:
        budget: compute of all proxy runs together, in target-run equivalents (1.0 = as much
            as one full target run).
        n_trials: cap on the number of runs (the cheapest stages give way first).
        allowed_tokens: the only token counts a run may use (a replayed grid, say); those
            below the target's are the proxy stages.
        fractions: proxy token counts as fractions of the target's, when not restricted.
        smaller_n: also plan stages at a quarter of the target's N (same token fractions).
        target_runs: runs at the target scale itself, each costing 1.0 of the budget.
        allowed_scales: the only proxy scales (any N and D: a ladder of smaller models, or
            the settings of a replayed grid); those cheaper than the target are the stages,
            and ``allowed_tokens``, ``fractions`` and ``smaller_n`` are not used.
    """
    check_budget(budget, n_trials, target_runs)
    for f in fractions:
        if not 0 < f < 1:
            raise SteplawInputError(f"proxy fractions must be in (0, 1), got {f!r}")
    # Checked before any cost: every run_cost divides by it.
    target_compute = float(target.N or 0) * float(target.D or 0)
    if not (math.isfinite(target_compute) and target_compute > 0):
        raise SteplawInputError(
            f"the target's compute N·D = {float(target.N or 0):g} × {float(target.D or 0):g} "
            "is not a finite positive number: no run can be costed against it"
        )
    if allowed_scales is not None:
        scales = [
            Scale(N=float(s.N or 0), D=float(s.D or 0), seq_len=target.seq_len)
            for s in allowed_scales
            if run_cost(s, target) < 1 - 1e-9
        ]
    else:
        scales = _token_scales(target, allowed_tokens, fractions, smaller_n)
    stages = sorted(((s, run_cost(s, target)) for s in scales), key=lambda sc: sc[1])
    for s, cost in stages:
        # A cost this small overflows the run count (budget / cost), and no plan could run it.
        if not (math.isfinite(cost) and cost > 0 and math.isfinite(max(budget, 1.0) / cost)):
            raise SteplawInputError(
                f"a proxy at N={float(s.N or 0):g}, D={float(s.D or 0):g} costs {cost:g} of a "
                "target run: not a usable proxy scale"
            )
    proxy_budget = budget - target_runs
    runs = _allocate([c for _, c in stages], proxy_budget)
    planned = [ProxyStage(s, r, c) for (s, c), r in zip(stages, runs, strict=True) if r > 0]
    if target_runs:
        planned.append(ProxyStage(target, target_runs, 1.0))
    if n_trials is not None:
        planned = _cap(planned, n_trials)
    total = sum(stage.runs for stage in planned)
    if total > MAX_RUNS:
        raise SteplawInputError(
            f"budget {budget:g} plans {total:,} runs, more than {MAX_RUNS:,}: give --n-trials "
            "or a smaller budget"
        )
    if not planned:
        cheapest = stages[0][1] if stages else 1.0
        raise SteplawInputError(
            f"budget {budget:g} buys no run: the cheapest proxy costs {cheapest:.3g} "
            "target-run equivalents"
        )
    return ProxyPlan(target, float(budget), tuple(planned))


def ladder_scales(target: Scale, sizes: Sequence[float]) -> list[Scale]:
    r"""The rungs of a ladder across model size: one scale per size :math:`N_r`, trained on
    the target's tokens per parameter, :math:`D_r = D_t N_r / N_t` (as labs' scaling ladders
    keep tokens in proportion to parameters), so a rung costs :math:`(N_r / N_t)^2` of a
    target run. Each size must be smaller than the target's N and at least 1/1000 of it.

    >>> [str(s) for s in ladder_scales(Scale(N=1e9, D=2e10), [2.5e8, 6.25e7])]
    ['N=250M D=5B', 'N=62.5M D=1.25B']
    """
    n_target, d_target = float(target.N or 0), float(target.D or 0)
    rungs = []
    for size in sizes:
        n = float(size)
        if not 0 < n < n_target * (1 - 1e-9):
            raise SteplawInputError(
                f"ladder size N={n:.4g} is not smaller than the target's N={n_target:.4g}"
            )
        if n < n_target * MIN_RUNG_FRACTION * (1 - 1e-9):
            raise SteplawInputError(
                f"ladder size N={n:.4g} is less than 1/{1 / MIN_RUNG_FRACTION:.0f} of the "
                f"target's N={n_target:.4g}: a typo? (a rung that small says little about "
                "the target's optimum)"
            )
        rungs.append(Scale(N=n, D=d_target * n / n_target, seq_len=target.seq_len))
    return rungs


def _token_scales(
    target: Scale,
    allowed_tokens: Sequence[float] | None,
    fractions: Sequence[float],
    smaller_n: bool,
) -> list[Scale]:
    """Proxy scales at smaller token counts (the allowed ones below the target's, or the
    fractions of it), at the target's N and, with ``smaller_n``, at a quarter of it."""
    d_target = float(target.D or 0)
    if allowed_tokens is not None:
        token_counts = sorted(
            {float(d) for d in allowed_tokens if float(d) < d_target * (1 - 1e-9)}
        )
    else:
        token_counts = sorted(d_target * f for f in fractions)
    scales = [target.with_tokens(d) for d in token_counts]
    if smaller_n:
        scales += [
            Scale(N=float(target.N or 0) / 4, D=d, seq_len=target.seq_len) for d in token_counts
        ]
    return scales


def _allocate(costs: Sequence[float], budget: float) -> list[int]:
    """Equal share per stage, then leftovers to the largest stage that still fits."""
    if not costs or budget <= 0:
        return [0] * len(costs)
    runs = [0] * len(costs)
    active = list(range(len(costs)))
    # Drop the most expensive stages while the budget cannot give each one run.
    while active and sum(costs[i] for i in active) > budget + 1e-12:
        active.pop()
    if not active:
        return runs
    # A stage whose one run costs more than an equal share gets that one run; the others
    # share what is left equally (so the plan never spends past the budget).
    fixed = [i for i in active if costs[i] > budget / len(active)]
    while True:
        rest = [i for i in active if i not in fixed]
        share = (budget - sum(costs[i] for i in fixed)) / max(len(rest), 1)
        more = [i for i in rest if costs[i] > share]
        if not more:
            break
        fixed += more
    for i in active:
        runs[i] = 1 if i in fixed else max(1, int(share / costs[i] + 1e-9))
    left = budget - sum(r * c for r, c in zip(runs, costs, strict=True))
    # Leftovers, largest stage first, as many runs at once as fit: after its turn a stage no
    # longer fits, so this takes one pass per stage however cheap the stages are.
    for i in sorted(active, key=lambda j: costs[j], reverse=True):
        extra = int(max(left, 0.0) / costs[i] + 1e-9)
        runs[i] += extra
        left -= extra * costs[i]
    return runs


def _cap(stages: list[ProxyStage], n_trials: int) -> list[ProxyStage]:
    """At most ``n_trials`` runs: remove runs from the cheapest stages first, keeping one run
    per stage as long as the cap allows."""
    runs = [s.runs for s in stages]
    excess = sum(runs) - n_trials
    # Down to one run per stage, cheapest first; then whole stages, cheapest first.
    for keep in (1, 0):
        for i, r in enumerate(runs):
            take = min(max(excess, 0), r - keep)
            if take > 0:
                runs[i] -= take
                excess -= take
    return [ProxyStage(s.scale, r, s.cost) for s, r in zip(stages, runs, strict=True) if r > 0]
