"""What tune prints before and while it runs: the plan's wall time with the built-in trainer
and a warning when it cannot finish on this machine."""

from __future__ import annotations

import io

from rich.console import Console

from steplaw_opt import Scale
from steplaw_opt.cli._render_tune import _duration, plan_seconds, print_wall_time
from steplaw_opt.tune import plan_proxies


def _printed(target: Scale, device: str) -> str:
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    print_wall_time(console, plan_proxies(target, 1.0), target, device)
    return out.getvalue()


def test_a_billion_parameter_plan_on_a_cpu_is_called_infeasible() -> None:
    text = _printed(Scale(N=1e9, D=1e11), "cpu")
    assert "years" in text and "not feasible on this machine (cpu)" in text


def test_the_demo_sized_plan_is_minutes_and_no_warning() -> None:
    text = _printed(Scale(N=1e5, D=1e6), "cpu")
    assert "min" in text and "not feasible" not in text


def test_a_gpu_is_assumed_faster_and_the_estimate_scales_with_compute() -> None:
    target = Scale(N=1e8, D=2e9)
    plan = plan_proxies(target, 1.0)
    assert plan_seconds(plan, target, "cuda") < plan_seconds(plan, target, "cpu") / 1000
    assert plan_seconds(plan_proxies(target, 2.0), target, "cpu") > plan_seconds(
        plan, target, "cpu"
    )


def test_durations_read_as_people_say_them() -> None:
    assert _duration(42) == "42 s"
    assert _duration(125) == "2 min 05 s"
    assert _duration(7200) == "2 h 00 min"
    assert _duration(86400 * 10) == "10 days"
    assert _duration(86400 * 365 * 3) == "3 years"
    assert _duration(86400 * 365 * 3804.2) == "3,804 years"
