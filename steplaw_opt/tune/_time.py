r"""Time budgets: the study stops starting runs when the time it has spent plus the predicted
time of the next run would pass the budget.

Two budgets, either or both (the first one reached stops the study):

- **wall time** (``time_budget``, seconds; the CLI's ``--time-budget 45m``): the time during
  which the study had a run in progress — the union over its runs of [start, end], each run's
  start recorded on its trial (``steplaw.started_at``, seconds since the epoch) and its end
  ``steplaw.seconds`` later. It is the study's, whatever runs it: a resume goes on from what
  the study has spent (the hours between two sessions do not count), and workers running at
  once spend it together (two runs side by side for ten minutes spend ten minutes). Time
  between runs (a process starting, MLflow writes) is not counted: seconds, usually.
- **GPU-hours** (``gpu_hours``, with ``gpus_per_run`` devices a run): the sum of the runs' wall
  times × ``gpus_per_run`` ÷ 3600 — what an allocation is charged, across every worker and
  resume; the runs still in progress count for at least their predicted time.

The next run's time is predicted from the study's measured runs: ``seconds = overhead +
rate × compute`` (compute in target-run equivalents, N·D of the run ÷ N·D of the target), least
squares with both terms ≥ 0 once the runs have two costs or more (the overhead is the floor a
run pays whatever its size: start-up, evaluation), else the seconds scale with compute. Before
any run has finished, the objective's own estimate is used when it has one (the built-in
trainer's FLOP rate, :data:`BUILTIN_FLOPS`); otherwise the first run always starts.

Every function takes the time ``now`` as an argument, and the run loop reads it from
:func:`now` and :func:`monotonic` here, so tests drive the rule with a clock of their own.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from steplaw_opt._records import (
    ATTR_COMPUTE,
    ATTR_FAILURE,
    ATTR_SECONDS,
    ATTR_STARTED,
    ATTR_TIME_BUDGET,
    INTERRUPTED,
)
from steplaw_opt._timing import (
    duration_text,
    is_finished,
    is_number,
    is_running,
    run_spent,
    run_start,
    wall_spent,
)
from steplaw_opt.errors import SteplawInputError
from steplaw_opt.scale import Scale

MAX_SECONDS = 366 * 86400.0  # a time budget beyond a year is a typo (45 for 45m, say)
MAX_GPU_HOURS = 1e7
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)")


def now() -> float:
    """Seconds since the epoch: the start of a run, comparable across processes."""
    return time.time()


def monotonic() -> float:
    """A clock for durations (a run's wall time)."""
    return time.perf_counter()


# ------------------------------------------------------------------ parsing and checking
def parse_duration(value: Any, option: str = "--time-budget") -> float:
    """Seconds from ``90``, ``"90"``, ``"90s"``, ``"45m"``, ``"1.5h"``, ``"1h30m"`` or ``"2d"``
    (one or more number-unit parts, a bare number is seconds); one line naming the value when
    it is anything else, zero, negative or more than a year.

    >>> parse_duration("1h30m"), parse_duration("45m"), parse_duration(90)
    (5400.0, 2700.0, 90.0)
    """
    shown = repr(value) if not isinstance(value, str) else repr(value.strip())
    what = "a duration such as 45m, 1.5h, 1h30m or 90 (seconds)"
    if isinstance(value, bool):
        raise SteplawInputError(f"{option} must be {what}, got {shown}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        negative = text.startswith("-")
        body = text[1:] if negative else text
        parts = list(_PART.finditer(body))
        if not body or "".join(p.group(0) for p in parts) != body:
            raise SteplawInputError(f"{option} must be {what}, got {shown}")
        if len(parts) > 1 and any(not p.group(2) for p in parts):
            raise SteplawInputError(f"{option} must be {what}, got {shown} (give every unit)")
        seconds = sum(float(p.group(1)) * _UNITS[p.group(2) or "s"] for p in parts)
        seconds = -seconds if negative else seconds
    else:
        raise SteplawInputError(f"{option} must be {what}, got {shown}")
    return _within(option, shown, seconds, "more than zero", MAX_SECONDS, "a year")


def parse_gpu_hours(value: Any, option: str = "--gpu-hours") -> float:
    """A positive number of GPU-hours (``8``, ``"0.5"``), or one line naming the value."""
    shown = repr(value) if not isinstance(value, str) else repr(value.strip())
    try:
        hours = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        raise SteplawInputError(f"{option} must be a number of GPU-hours, got {shown}") from None
    positive = "a positive number of GPU-hours"
    return _within(option, shown, hours, positive, MAX_GPU_HOURS, f"{MAX_GPU_HOURS:g}")


def _within(option: str, shown: str, value: float, positive: str, limit: float, big: str) -> float:
    """``value`` when it is finite, above zero and at most ``limit``; else one line."""
    if not math.isfinite(value) or value <= 0:
        raise SteplawInputError(f"{option} must be {positive}, got {shown}")
    if value > limit:
        raise SteplawInputError(f"{option} {shown} is more than {big}: a typo?")
    return value


def check_gpus(value: Any, option: str = "--gpus-per-run") -> int:
    """A whole number of devices ≥ 1."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    if not ok and isinstance(value, float) and value.is_integer() and value >= 1:
        return int(value)
    if not ok:
        raise SteplawInputError(f"{option} must be a whole number of devices >= 1, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class TimeBudget:
    """A study's time budget: wall seconds and / or GPU-hours (``None``: no limit)."""

    seconds: float | None = None
    gpu_hours: float | None = None
    gpus_per_run: int = 1

    @property
    def limited(self) -> bool:
        return self.seconds is not None or self.gpu_hours is not None

    def describe(self) -> str:
        """``45 min 00 s of wall time``, ``8 GPU-hours (2 GPUs a run)``, or both."""
        parts = []
        if self.seconds is not None:
            parts.append(f"{duration_text(self.seconds)} of wall time")
        if self.gpu_hours is not None:
            gpus = "GPU" if self.gpus_per_run == 1 else "GPUs"
            parts.append(f"{self.gpu_hours:g} GPU-hours ({self.gpus_per_run} {gpus} a run)")
        return " and ".join(parts) if parts else "none"

    def to_dict(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "gpu_hours": self.gpu_hours,
            "gpus_per_run": self.gpus_per_run,
        }

    @classmethod
    def from_dict(cls, doc: Any) -> TimeBudget:
        if not isinstance(doc, dict):
            return cls()
        return cls(
            seconds=doc.get("seconds"),
            gpu_hours=doc.get("gpu_hours"),
            gpus_per_run=int(doc.get("gpus_per_run") or 1),
        )


# ------------------------------------------------------------------ measuring
def measured_runs(trials: Iterable[Any]) -> list[tuple[float, float]]:
    """(compute, seconds) of the finished runs that tell a run's time: complete or failed for
    a reason of their own, with a compute above zero (not an interrupted run, whose recorded
    compute is its plan, nor a pruned copy)."""
    out = []
    for t in trials:
        seconds, cost = t.user_attrs.get(ATTR_SECONDS), t.user_attrs.get(ATTR_COMPUTE)
        if not is_finished(t) or t.user_attrs.get(ATTR_FAILURE) == INTERRUPTED:
            continue
        if isinstance(seconds, (int, float)) and isinstance(cost, (int, float)) and cost > 0:
            out.append((float(cost), max(0.0, float(seconds))))
    return out


@dataclass(frozen=True)
class RunTimes:
    """Predicted wall seconds of a run: ``overhead + rate × compute``; ``runs`` measured runs
    it is fitted to (0: the objective's own estimate)."""

    overhead: float
    rate: float  # seconds per target-run equivalent
    runs: int

    def predict(self, cost: float) -> float:
        return self.overhead + self.rate * max(0.0, float(cost))

    def describe(self) -> str:
        if self.runs == 0:
            return "the objective's own estimate"
        runs = "run" if self.runs == 1 else "runs"
        return f"measured on {self.runs} {runs}"


def fit_run_times(pairs: Sequence[tuple[float, float]]) -> RunTimes | None:
    """``seconds = overhead + rate × compute`` fitted to measured (compute, seconds): least
    squares with both terms ≥ 0 when the runs have two costs or more, else ``rate`` = Σ seconds
    ÷ Σ compute (no overhead: a larger run is predicted as much longer, which errs long)."""
    pairs = [(c, s) for c, s in pairs if c > 0 and math.isfinite(c) and math.isfinite(s)]
    if not pairs:
        return None
    costs = [c for c, _ in pairs]
    if max(costs) <= min(costs) * (1 + 1e-9):
        return RunTimes(0.0, sum(s for _, s in pairs) / sum(costs), len(pairs))
    n = len(pairs)
    mc = sum(costs) / n
    ms = sum(s for _, s in pairs) / n
    sxx = sum((c - mc) ** 2 for c in costs)
    sxy = sum((c - mc) * (s - ms) for c, s in pairs)
    rate = sxy / sxx
    overhead = ms - rate * mc
    if rate < 0:  # the larger runs were not slower: a flat time per run
        return RunTimes(ms, 0.0, n)
    if overhead < 0:  # through the origin
        return RunTimes(0.0, sum(c * s for c, s in pairs) / sum(c * c for c in costs), n)
    return RunTimes(overhead, rate, n)


def hinted_run_times(
    hint: Callable[[Scale], float | None] | None, target: Scale
) -> RunTimes | None:
    """The objective's own estimate as a model: its seconds for one target run, per compute."""
    if hint is None:
        return None
    seconds = hint(target)
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        return None
    return RunTimes(0.0, float(seconds), 0)


# ------------------------------------------------------------------ the rule
@dataclass(frozen=True)
class TimeCheck:
    """What the rule saw before a run: the time spent, the next run's predicted seconds, and
    the reason to start no more runs (``None``: start it)."""

    wall: float
    gpu_hours: float
    next_seconds: float | None
    stop: str | None


def check_time(
    budget: TimeBudget,
    trials: Sequence[Any],
    next_cost: float,
    model: RunTimes | None,
    at: float,
) -> TimeCheck:
    """Whether a run of ``next_cost`` may start at ``at``: not when the wall time spent plus its
    predicted time would pass ``budget.seconds``, nor when the GPU-hours spent (the running runs
    counted for at least their predicted time) plus its
    own would pass ``budget.gpu_hours``. Without a model (nothing measured, no estimate) only
    the time already spent is compared."""
    wall = wall_spent(trials, at)
    ran = run_spent(trials, at)
    nxt = model.predict(next_cost) if model is not None else None
    gpus = budget.gpus_per_run
    gpu_h = ran * gpus / 3600.0
    stop = None
    if budget.seconds is not None and wall + (nxt or 0.0) > budget.seconds:
        stop = _reason("wall time", duration_text(wall), duration_text(budget.seconds), nxt)
    if stop is None and budget.gpu_hours is not None:
        owed = 0.0  # running runs: their predicted time where it is more than their time so far
        for t in trials:
            started, cost = t.user_attrs.get(ATTR_STARTED), t.user_attrs.get(ATTR_COMPUTE)
            if model is not None and is_running(t) and is_number(started) and is_number(cost):
                owed += max(0.0, model.predict(float(cost)) - (at - run_start(t)))
        committed = (ran + owed + (nxt or 0.0)) * gpus / 3600.0
        if committed > budget.gpu_hours:
            stop = _reason("GPU-hours", f"{gpu_h:.3g}", f"{budget.gpu_hours:g}", nxt, gpus / 3600)
    return TimeCheck(wall, gpu_h, nxt, stop)


def _reason(
    what: str, spent: str, budget: str, nxt: float | None, per_second: float | None = None
) -> str:
    if nxt is None:
        return f"{what} spent {spent} of the budget {budget}"
    need = f"{nxt * per_second:.3g} GPU-hours" if per_second else duration_text(nxt)
    return f"{what} spent {spent} of the budget {budget}, and the next run needs about {need}"


def plan_seconds_left(model: RunTimes | None, costs: Iterable[float]) -> float | None:
    """Predicted seconds of the runs of ``costs`` one after the other (``None``: no model)."""
    if model is None:
        return None
    return float(sum(model.predict(c) for c in costs))


def runs_that_fit(model: RunTimes, costs: Sequence[float], seconds: float) -> int:
    """How many of the planned runs (in order, one after the other) fit in ``seconds``."""
    total, n = 0.0, 0
    for c in costs:
        total += model.predict(c)
        if total > seconds:
            break
        n += 1
    return n


# ------------------------------------------------------------------ the run loop's bookkeeping
def budget_of(study_attrs: dict[str, Any], default: TimeBudget) -> TimeBudget:
    """The budget in force on a study: the one the last ``tune`` on it recorded
    (:data:`ATTR_TIME_BUDGET`), else ``default`` (the study's stored settings)."""
    import json

    raw = study_attrs.get(ATTR_TIME_BUDGET)
    if isinstance(raw, str):
        try:
            return TimeBudget.from_dict(json.loads(raw))
        except (ValueError, TypeError):
            return default
    return default


def scale_of(t: Any, target: Scale) -> Scale:
    """The scale a trial runs at (its attributes; the target when it has none)."""
    attrs = t.user_attrs
    return Scale(
        N=float(attrs.get("steplaw.N", target.N or 0)),
        D=float(attrs.get("steplaw.D", target.D or 0)),
        seq_len=int(attrs.get("steplaw.seq_len", target.seq_len)),
    )


class TimeKeeper:
    """The time budget in a run loop: the model of a run's time, the rule before each new run
    (:func:`check_time`), and what the live display shows (time spent, time left)."""

    def __init__(
        self,
        budget: TimeBudget,
        target: Scale,
        hint: Callable[[Scale], float | None] | None = None,
    ) -> None:
        self.budget = budget
        self.target = target
        self._hint = hinted_run_times(hint, target)
        self.stop: str | None = None  # why this process started no more runs
        self.skipped = 0  # planned runs not started because of it
        self.next_seconds: float | None = None

    def model(self, trials: Sequence[Any]) -> RunTimes | None:
        return fit_run_times(measured_runs(trials)) or self._hint

    def cost(self, scale: Scale) -> float:
        from steplaw_opt.tune._plan import run_cost

        return run_cost(scale, self.target)

    def check(
        self, trials: Sequence[Any], next_scale: Scale, unstarted: int, at: float
    ) -> str | None:
        """The reason to start no more runs (recorded, with ``unstarted`` skipped runs), or
        ``None``."""
        if not self.budget.limited:
            return None
        seen = check_time(self.budget, trials, self.cost(next_scale), self.model(trials), at)
        if seen.stop is not None:
            self.stop, self.skipped, self.next_seconds = seen.stop, unstarted, seen.next_seconds
        return seen.stop

    def left(self, trials: Sequence[Any], scales: Iterable[Scale]) -> float | None:
        """Predicted seconds of the runs at ``scales``, one after the other."""
        return plan_seconds_left(self.model(trials), (self.cost(s) for s in scales))

    def summary(self, trials: Sequence[Any], at: float) -> dict[str, Any]:
        """The study's time, for the result, the study and MLflow."""
        gpus = self.budget.gpus_per_run
        return {
            "budget": self.budget.to_dict(),
            "wall_seconds": round(wall_spent(trials, at), 3),
            "run_seconds": round(run_spent(trials, at), 3),
            "gpu_hours": run_spent(trials, at) * gpus / 3600.0,
            "limited": self.stop is not None,
            "stop": self.stop,
            "skipped_runs": self.skipped,
            "next_seconds": self.next_seconds,
        }


def time_plan(
    schedule: Sequence[Scale],
    target: Scale,
    budget: TimeBudget,
    trials: Sequence[Any] = (),
    hint: Callable[[Scale], float | None] | None = None,
    at: float | None = None,
) -> dict[str, Any]:
    """The plan in time, before it runs (``tune``'s header, ``--dry-run``): the study's time
    spent so far (``trials``: a resumed study's), the predicted time of its runs still to go
    (from its measured runs, else ``hint``: the objective's own estimate) and how many of them
    the time budget fits, one after the other."""
    from steplaw_opt.tune._plan import run_cost
    from steplaw_opt.tune._workers import slots

    at = now() if at is None else at
    keeper = TimeKeeper(budget, target, hint)
    final = slots(trials, schedule, None)[1] if trials else set()
    todo = [s for i, s in enumerate(schedule) if i not in final]
    costs = [run_cost(s, target) for s in todo]
    model = keeper.model(trials)
    spent = wall_spent(trials, at)
    gpu_h = run_spent(trials, at) * budget.gpus_per_run / 3600.0
    doc: dict[str, Any] = {
        "budget": budget.to_dict(),
        "wall_seconds": spent,
        "gpu_hours": gpu_h,
        "runs_left": len(todo),
        "estimate_seconds": plan_seconds_left(model, costs),
        "estimate_from": None if model is None else model.describe(),
        "fits_runs": None,
    }
    if model is not None and budget.limited:
        room = math.inf
        if budget.seconds is not None:
            room = budget.seconds - spent
        if budget.gpu_hours is not None:
            room = min(room, (budget.gpu_hours - gpu_h) * 3600.0 / budget.gpus_per_run)
        doc["fits_runs"] = runs_that_fit(model, costs, max(0.0, room))
    return doc
