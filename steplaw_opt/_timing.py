"""How long a study's runs took, read back from what each trial records (its start,
``steplaw.started_at``, and its wall time, ``steplaw.seconds``): the wall time the study has
spent and the runs' time added up, and durations written as people say them.

The time budget (:mod:`steplaw_opt.tune._time`), the MLflow record (:mod:`steplaw_opt.tracking`)
and tune's display read the study's time from here, so none of them imports the others.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from steplaw_opt._records import ATTR_SECONDS, ATTR_STARTED

# Sustained training throughput of the built-in trainer, FLOP/s, for an order-of-magnitude wall
# time (6·N·D FLOPs a run): on CPU what its small models reach on two cores here, evaluation and
# start-up included (the demo: ~5e9); on a GPU a bf16 run at ~30 % of an A100's peak.
BUILTIN_FLOPS = {"cpu": 5e9, "cuda": 1e14}


def builtin_flops(device: str) -> float:
    return BUILTIN_FLOPS["cuda" if str(device).startswith("cuda") else "cpu"]


def duration_text(seconds: float) -> str:
    """``42 s``, ``2 min 05 s``, ``2 h 00 min``, ``10 days``, ``3 years``: as people say it."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"
    if seconds < 86400 * 3:
        return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:02.0f} min"
    if seconds < 86400 * 365:
        return f"{seconds / 86400:.0f} days"
    years = seconds / (86400 * 365)
    return f"{years:.2g} years" if years < 10 else f"{years:,.0f} years"


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def is_finished(t: Any) -> bool:
    return bool(t.state.is_finished())


def is_running(t: Any) -> bool:
    return getattr(t.state, "name", "") == "RUNNING"


def run_start(t: Any) -> float:
    """A running trial's start: its recorded one, but not before the trial itself began (a
    re-queued copy carries its lost original's start until its own run records one)."""
    started = float(t.user_attrs[ATTR_STARTED])
    begun = getattr(t, "datetime_start", None)
    return max(started, begun.timestamp()) if begun is not None else started


def intervals(trials: Iterable[Any], at: float) -> tuple[list[tuple[float, float]], float]:
    """The runs' [start, end] in epoch seconds (a running run: to ``at``), and the seconds of
    finished runs that recorded no start (made by an older version: counted one after the
    other)."""
    spans: list[tuple[float, float]] = []
    loose = 0.0
    for t in trials:
        started = t.user_attrs.get(ATTR_STARTED)
        seconds = t.user_attrs.get(ATTR_SECONDS)
        has_start = is_number(started)
        if is_running(t) and has_start:
            lo = run_start(t)
            spans.append((lo, max(lo, at)))
        elif is_finished(t) and isinstance(seconds, (int, float)):
            if has_start:
                spans.append((float(started), float(started) + max(0.0, float(seconds))))
            else:
                loose += max(0.0, float(seconds))
    return spans, loose


def wall_spent(trials: Iterable[Any], at: float) -> float:
    """Wall seconds during which the study had a run in progress, up to ``at``."""
    spans, loose = intervals(trials, at)
    total, end = loose, -math.inf
    for lo, hi in sorted(spans):
        if hi <= end:
            continue
        total += hi - max(lo, end)
        end = hi
    return total


def run_spent(trials: Iterable[Any], at: float) -> float:
    """The runs' wall seconds added up (what a device is busy for): finished runs' recorded
    seconds and running runs' time so far."""
    total = 0.0
    for t in trials:
        seconds = t.user_attrs.get(ATTR_SECONDS)
        started = t.user_attrs.get(ATTR_STARTED)
        if is_finished(t) and isinstance(seconds, (int, float)):
            total += max(0.0, float(seconds))
        elif is_running(t) and is_number(started):
            total += max(0.0, at - run_start(t))
    return total
