"""What tune prints before and while it runs: the plan's wall time with the built-in trainer
and a warning when it cannot finish on this machine."""

from __future__ import annotations

import io

from rich.console import Console

from steplaw_opt import Scale
from steplaw_opt.cli._render_tune import _duration, plan_seconds, print_wall_time
from steplaw_opt.tune import plan_proxies
from tests.test_tracking import mlflow_template  # noqa: F401


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


def test_the_demo_estimate_counts_its_final_check() -> None:
    # The demo runs two full target runs after the proxies: an estimate of the proxies alone
    # said "about 2 min" for a demo that took three times that.
    target = Scale(N=1e5, D=1e6)
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    print_wall_time(console, plan_proxies(target, 1.0), target, "cpu", final_runs=2)
    text = out.getvalue()
    full = 2 * 6.0 * 1e5 * 1e6 / 5e9
    assert "then 2 full runs at the target for the final check" in text
    assert _duration(full) in text


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


def test_the_demo_check_is_recorded_in_the_study_and_reused(tmp_path, monkeypatch) -> None:
    import json
    from types import SimpleNamespace

    import optuna

    import steplaw_opt.trainer
    from steplaw_opt.cli._tune import _demo_check

    calls = []

    def train(lr, batch, target, seed=0):  # a stand-in for the full target run
        calls.append((lr, batch))
        return SimpleNamespace(loss=3.0 if len(calls) % 2 else 2.7, seconds=1.0)

    monkeypatch.setattr(steplaw_opt.trainer, "train", train)
    storage = f"sqlite:///{tmp_path}/demo.db"
    optuna.create_study(study_name="demo", storage=storage)
    target = Scale(N=1e5, D=1e6, seq_len=128)
    result = SimpleNamespace(
        study_name="demo",
        law_lr=0.03,
        law_batch_tokens=12 * 128,
        refined=SimpleNamespace(lr=0.002, batch_sequences=2.2),
    )
    console = Console(file=io.StringIO())
    first = _demo_check(console, result, target, True, storage)
    assert len(calls) == 2 and first["refined"]["batch_size"] == 2
    study = optuna.load_study(study_name="demo", storage=storage)
    assert json.loads(study.user_attrs["steplaw.demo_check"]) == first
    again = _demo_check(console, result, target, True, storage)  # a repeated --demo
    assert again == first and len(calls) == 2
    result.refined.lr = 0.0025  # another refined point: trained again
    _demo_check(console, result, target, False, storage)
    assert len(calls) == 4


def test_the_demo_check_goes_to_the_mlflow_parent_run(tmp_path, mlflow_template) -> None:  # noqa: F811
    import shutil

    from mlflow import MlflowClient

    from steplaw_opt.objectives import CallableObjective
    from steplaw_opt.tracking import MlflowTracker
    from steplaw_opt.tune import tune

    shutil.copy(mlflow_template, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with MlflowTracker(uri, plots=False) as tracker:
        tune(Scale(N=4.29e8, D=4e10), CallableObjective(lambda lr, b, s: 3.0 + lr), n_trials=2,
             storage=":memory:", seed=0, tracker=tracker)  # fmt: skip
    check = {"law": {"loss": 3.0}, "refined": {"loss": 2.7}}
    tracker.log_demo_check(check)
    metrics = MlflowClient(uri).get_run(tracker.run_id).data.metrics
    assert metrics["demo.law_loss"] == 3.0 and metrics["demo.refined_loss"] == 2.7
    assert abs(metrics["demo.gain_pct"] - 10.0) < 1e-9


def test_lines_to_copy_are_never_wrapped() -> None:
    """At 80 columns (or into a pipe) the mlflow ui command and the storage URL stay whole."""
    from steplaw_opt.cli._render_tune import print_mlflow

    uri = "sqlite:////a/rather/long/path/to/some/project/folder/with/runs/in/it/mlflow.db"
    where = {"enabled": True, "run_id": "0123456789abcdef0123456789abcdef", "recorded": True,
             "experiment": "steplaw-opt", "nested_runs": 10, "tracking_uri": uri,
             "ui": f"mlflow ui --backend-store-uri {uri}"}  # fmt: skip
    out = io.StringIO()
    print_mlflow(Console(file=out, width=80, color_system=None), where)
    lines = out.getvalue().splitlines()
    assert f"  view with: mlflow ui --backend-store-uri {uri}" in lines
    assert f"  at {uri}" in lines


def _running(**changes: object) -> object:
    """A "progress" event of a run with a study's time budget in force (the longest line)."""
    from types import SimpleNamespace

    from steplaw_opt.tune._time import TimeBudget

    event = SimpleNamespace(
        index=0, planned=10, number=0, scale=Scale(N=1e5, D=62.5e3, seq_len=128), lr=0.0145,
        batch_size=2, budget=1.0, compute_spent=0.125, phase="progress", step=1080,
        total_steps=2429, loss=2.323, seconds=72.0, time_spent=190.0, time_left=242.0,
        time_budget=TimeBudget(seconds=2700.0, gpu_hours=2.0), gpu_hours=0.05,
    )  # fmt: skip
    return SimpleNamespace(**{**vars(event), **changes})


def _live(event: object, width: int) -> list[str]:
    """The live display of tune's running run, as a terminal of ``width`` columns shows it."""
    from steplaw_opt.cli._render_tune import TrialDisplay

    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None)
    display = TrialDisplay(console, 10)
    display.update(event)
    console.print(display.progress)
    return out.getvalue().splitlines()


def test_the_running_run_is_readable_at_80_and_60_columns() -> None:
    """Narrow, the run's line becomes lines of its own (what runs; how it goes; the study's
    compute and time), none cut: the loss, elapsed time and estimate always show."""
    for event in (_running(), _running(time_budget=None, time_left=None, time_spent=2.0)):
        for width in (80, 60):
            lines = _live(event, width)
            text = " ".join(line.strip() for line in lines)
            assert all(len(line.rstrip()) <= width for line in lines), (width, lines)
            assert "…" not in text
            assert lines[0].startswith("run 1/10 (trial 0) at D=62.5K: lr 0.0145, batch 2")
            assert "step 1,080/2,429, loss 2.3230, 1 min 12 s, ~1 min 30 s left" in text
            assert "compute spent 0.125 of 1" in text and "0/10" in lines[-1]
            if event.time_budget is not None:  # broken between phrases, not inside one
                assert "time spent 3 min 10 s of 45 min 00 s," in text
                assert "0.05 of 2 GPU-hours, about 4 min 02 s left" in text


def test_a_wide_terminal_keeps_the_run_on_one_line() -> None:
    from steplaw_opt.cli._render_tune import run_line

    event = _running(time_budget=None, time_left=None, time_spent=2.0)
    line = run_line(event, "D=62.5K")
    assert _live(event, 200)[0] == line  # beside the bar when both fit, or above it
    started = _running(phase="start", step=None, time_budget=None, time_left=None)
    (row,) = _live(started, 200)
    assert row.startswith(run_line(started, "D=62.5K")) and row.rstrip().endswith("0:00:00")


def test_a_note_of_a_finished_run_is_printed_below_its_row() -> None:
    from steplaw_opt.cli._render_tune import TrialDisplay

    note = "warning: 3 of the 4 runs so far sat at the lower batch bound (2) and 9 s of their 10 s"
    event = _running(phase="end", failure=None, best=2.3, notes=(note,))
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    TrialDisplay(console, 10).update(event)
    lines = out.getvalue().splitlines()
    row = next(i for i, line in enumerate(lines) if line.strip().startswith("0 "))
    assert lines[row + 1] == note


def test_a_ladder_study_shows_each_run_model_size_as_well_as_its_tokens() -> None:
    from steplaw_opt.cli._render_tune import TrialDisplay

    event = _running(phase="end", failure=None, best=2.3)
    rows = {}
    for show_n in (False, True):
        out = io.StringIO()
        console = Console(file=out, width=200, color_system=None)
        TrialDisplay(console, 10, show_n=show_n).update(event)
        rows[show_n] = next(
            line for line in out.getvalue().splitlines() if line.strip().startswith("0 ")
        )
    assert "D=62.5K" in rows[False] and "N=" not in rows[False]
    assert "N=100K D=62.5K" in rows[True]
    assert len(rows[True].rstrip()) <= 80  # a log or a plain terminal does not wrap it
