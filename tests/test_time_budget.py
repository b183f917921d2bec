"""Time budgets (issue 17): ``--time-budget`` / ``--gpu-hours`` parsing, the stop rule, the
estimate arithmetic, what the study and the result record, and what tune prints.

No test here times anything: the run loop reads its clocks from :mod:`steplaw_opt.tune._time`,
and the objectives below advance a fake clock by the seconds a run "takes"."""

from __future__ import annotations

import io
import json
import math
from types import SimpleNamespace

import optuna
import pytest
from rich.console import Console

from steplaw_opt import Scale, SteplawInputError
from steplaw_opt._records import (
    ATTR_SECONDS,
    ATTR_STARTED,
    ATTR_TIME_BUDGET,
    ATTR_TIME_SPENT,
    ATTR_TIME_STOP,
)
from steplaw_opt.cli._render_tune import print_time_plan, run_line, time_summary
from steplaw_opt.objectives import CallableObjective
from steplaw_opt.tune import TuneConfig, _time, plan_proxies, run_cost, run_worker, tune
from steplaw_opt.tune._time import (
    RunTimes,
    TimeBudget,
    check_time,
    fit_run_times,
    parse_duration,
    parse_gpu_hours,
    run_spent,
    runs_that_fit,
    time_plan,
    wall_spent,
)
from tests.test_tracking import mlflow_template, runs_of  # noqa: F401

TARGET = Scale(N=1e9, D=1e11)
T0 = 1_700_000_000.0  # the fake clock's start (seconds since the epoch)


# ------------------------------------------------------------------ parsing
@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("90s", 90.0),
        ("45m", 2700.0),
        ("1.5h", 5400.0),
        ("1h30m", 5400.0),
        (" 2H ", 7200.0),
        ("1d", 86400.0),
        ("1h 0m 30s", 3630.0),
        (30, 30.0),
        (2.5, 2.5),
    ],
)
def test_durations_parse_with_s_m_h_d_suffixes_or_as_plain_seconds(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("0", "more than zero, got '0'"),
        ("-5m", "more than zero, got '-5m'"),
        ("abc", "a duration such as 45m"),
        ("", "a duration such as 45m"),
        ("1h30", "give every unit"),
        ("5x", "got '5x'"),
        ("1e3", "got '1e3'"),
        ("400d", "more than a year: a typo?"),
        (True, "got True"),
        (math.nan, "more than zero"),
    ],
)
def test_a_bad_duration_is_one_line_naming_it(text, says):
    with pytest.raises(SteplawInputError, match=r"^--time-budget ") as err:
        parse_duration(text)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_gpu_hours_and_devices_are_checked():
    assert parse_gpu_hours("0.5") == 0.5 and parse_gpu_hours(8) == 8.0
    for bad, says in (("x", "a number of GPU-hours, got 'x'"), ("0", "positive"), ("-1", "-1")):
        with pytest.raises(SteplawInputError, match=says):
            parse_gpu_hours(bad)
    assert _time.check_gpus(4) == 4
    with pytest.raises(SteplawInputError, match="whole number of devices >= 1, got 0"):
        _time.check_gpus(0)


def test_the_config_stores_the_time_budget_and_names_its_fields():
    config = TuneConfig(time_budget="45m", gpu_hours=8, gpus_per_run=2)
    assert config.time == TimeBudget(seconds=2700.0, gpu_hours=8.0, gpus_per_run=2)
    assert TuneConfig.from_dict(config.to_dict()) == config
    assert TuneConfig.from_dict({"budget": 1.0}).time == TimeBudget()  # an older study's
    with pytest.raises(SteplawInputError, match=r"^time_budget must be more than zero"):
        TuneConfig(time_budget=0)
    with pytest.raises(SteplawInputError, match=r"^gpus_per_run must be"):
        TuneConfig(gpus_per_run=0)


# ------------------------------------------------------------------ the arithmetic
def test_run_times_fit_an_overhead_and_a_rate_once_two_costs_are_measured():
    runs = [(0.1, 10.0 + 50 * 0.1), (0.1, 10.0 + 50 * 0.1), (0.2, 10.0 + 50 * 0.2)]
    model = fit_run_times(runs)
    assert model.overhead == pytest.approx(10.0) and model.rate == pytest.approx(50.0)
    assert model.predict(0.4) == pytest.approx(30.0) and model.runs == 3
    one_cost = fit_run_times([(0.1, 12.0), (0.1, 8.0)])  # no overhead to tell: scaled by compute
    assert one_cost == RunTimes(0.0, 100.0, 2)
    assert one_cost.predict(0.2) == pytest.approx(20.0)
    flat = fit_run_times([(0.1, 20.0), (0.2, 10.0)])  # larger runs were not slower
    assert flat.rate == 0 and flat.overhead == pytest.approx(15.0)
    origin = fit_run_times([(0.1, 1.0), (0.2, 10.0)])  # a negative overhead: through the origin
    assert origin.overhead == 0 and origin.predict(0.2) == pytest.approx(0.2 * 2.1 / 0.05)
    assert fit_run_times([]) is None


def _trial(state, started=None, seconds=None, cost=None, failure=None, number=0):
    attrs = {}
    if started is not None:
        attrs[ATTR_STARTED] = started
    if seconds is not None:
        attrs[ATTR_SECONDS] = seconds
    if cost is not None:
        attrs["steplaw.compute"] = cost
    if failure is not None:
        attrs["steplaw.failure"] = failure
    return SimpleNamespace(
        state=getattr(optuna.trial.TrialState, state),
        user_attrs=attrs,
        datetime_start=None,
        number=number,
    )


def test_wall_time_counts_overlapping_runs_once_and_a_running_run_up_to_now():
    trials = [
        _trial("COMPLETE", T0, 100.0),  # [0, 100]
        _trial("COMPLETE", T0 + 50, 100.0),  # [50, 150]: side by side with the first
        _trial("FAIL", T0 + 300, 20.0, failure="interrupted"),  # [300, 320]: time spent too
        _trial("RUNNING", T0 + 400),  # [400, now]
        _trial("COMPLETE", None, 7.0),  # an older study's run: no start, counted on its own
        _trial("WAITING", T0 + 10, 999.0),  # a re-queued copy: not running yet
    ]
    at = T0 + 430
    assert wall_spent(trials, at) == pytest.approx(150 + 20 + 30 + 7)
    assert run_spent(trials, at) == pytest.approx(100 + 100 + 20 + 30 + 7)


def test_the_rule_stops_when_spent_plus_the_next_run_would_pass_the_budget():
    trials = [_trial("COMPLETE", T0, 100.0, cost=0.1), _trial("COMPLETE", T0 + 100, 100.0, 0.1)]
    model = fit_run_times(_time.measured_runs(trials))  # 1000 s per target-run equivalent
    at = T0 + 200
    fits = check_time(TimeBudget(seconds=300), trials, 0.1, model, at)
    assert fits.stop is None and fits.wall == 200 and fits.next_seconds == pytest.approx(100)
    over = check_time(TimeBudget(seconds=299), trials, 0.1, model, at)
    assert over.stop == (
        "wall time spent 3 min 20 s of the budget 4 min 59 s, and the next run needs about "
        "1 min 40 s"
    )
    # without a model only the time spent is compared: the first run always starts
    assert check_time(TimeBudget(seconds=250), trials, 0.1, None, at).stop is None
    assert "spent 3 min 20 s" in check_time(TimeBudget(seconds=150), trials, 0.1, None, at).stop


def test_gpu_hours_count_every_device_and_what_running_runs_still_need():
    budget = TimeBudget(gpu_hours=0.9, gpus_per_run=4)  # 810 wall seconds of runs
    done = [_trial("COMPLETE", T0, 300.0, cost=0.1)]  # 300 s × 4 GPUs = 1/3 GPU-hour
    model = fit_run_times(_time.measured_runs(done))
    at = T0 + 300
    assert check_time(budget, done, 0.1, model, at).stop is None  # 300 + 300 ≤ 810
    assert check_time(budget, done, 0.1, model, at).gpu_hours == pytest.approx(1 / 3)
    # another worker's run of the same size started 100 s ago: it will use 200 s more
    running = [*done, _trial("RUNNING", at - 100, cost=0.1, number=1)]
    stop = check_time(budget, running, 0.1, model, at).stop  # 300 + 100 + 200 + 300 > 810
    assert stop is not None and stop.startswith("GPU-hours spent 0.444 of the budget 0.9,")


def test_the_plan_in_time_and_how_many_runs_the_budget_fits():
    plan = plan_proxies(TARGET, 1.0)
    schedule = plan.schedule()
    model = RunTimes(5.0, 100.0, 3)
    costs = [run_cost(s, TARGET) for s in schedule]
    assert runs_that_fit(model, costs, 1e9) == len(costs)
    assert runs_that_fit(model, costs, model.predict(costs[0]) * 2.5) == 2

    doc = time_plan(schedule, TARGET, TimeBudget(seconds=60), hint=lambda s: 100.0, at=T0)
    assert doc["estimate_seconds"] == pytest.approx(100.0 * plan.compute)
    assert doc["estimate_from"] == "the objective's own estimate"
    assert doc["fits_runs"] == runs_that_fit(RunTimes(0, 100.0, 0), costs, 60)
    assert time_plan(schedule, TARGET, TimeBudget(), at=T0)["estimate_seconds"] is None


# ------------------------------------------------------------------ through tune()
class FakeClock:
    """The loop's clocks: each run advances it by the seconds the objective says."""

    def __init__(self, monkeypatch):
        self.t = T0
        monkeypatch.setattr(_time, "now", lambda: self.t)
        monkeypatch.setattr(_time, "monotonic", lambda: self.t)


def timed_bowl(clock, overhead=10.0, rate=600.0):
    def run(lr, batch_size, scale):
        clock.t += overhead + rate * run_cost(scale, TARGET)
        return 3.0 + math.log(lr / 2e-3) ** 2 + 0.1 * math.log(batch_size / 256) ** 2

    return CallableObjective(run)


def _expected_runs(schedule, budget, overhead, rate):
    """What the rule does, by hand: run i starts when spent + its prediction ≤ budget, its
    prediction fitted to the runs before it (the first always starts)."""
    spent, done = 0.0, []
    for scale in schedule:
        cost = run_cost(scale, TARGET)
        model = fit_run_times(done)
        if model is not None and spent + model.predict(cost) > budget:
            break
        seconds = overhead + rate * cost
        done.append((cost, seconds))
        spent += seconds
    return len(done), spent


def test_tune_stops_starting_runs_at_the_time_budget_and_records_it(tmp_path, monkeypatch):
    clock = FakeClock(monkeypatch)
    storage = f"sqlite:///{tmp_path}/t.db"
    events = []
    result = tune(TARGET, timed_bowl(clock), storage=storage, seed=0, budget=0.5,
                  time_budget="3m", on_trial=events.append)  # fmt: skip
    planned = result.plan.total_runs
    n_runs, spent = _expected_runs(result.plan.schedule(), 180.0, 10.0, 600.0)
    assert 1 < n_runs < planned and result.n_complete == n_runs
    doc = result.extras["time"]
    assert doc["limited"] and doc["skipped_runs"] == planned - n_runs
    assert doc["wall_seconds"] == pytest.approx(spent) and doc["budget"]["seconds"] == 180
    assert doc["stop"].startswith("wall time spent ")
    study = optuna.load_study(study_name=result.study_name, storage=storage)
    assert study.user_attrs[ATTR_TIME_SPENT] == pytest.approx(spent)
    assert study.user_attrs[ATTR_TIME_STOP] == doc["stop"]
    assert json.loads(study.user_attrs[ATTR_TIME_BUDGET])["seconds"] == 180
    states = {t.state for t in study.trials}
    assert states == {optuna.trial.TrialState.COMPLETE}  # nothing half-run, nothing RUNNING
    assert all(t.user_attrs[ATTR_STARTED] >= T0 for t in study.trials)
    # the live events: time spent grows run by run; what is left is measured once a run is
    ends = [e for e in events if e.phase == "end"]
    assert [e.time_spent for e in ends] == pytest.approx(
        [sum(10 + 600 * run_cost(e2.scale, TARGET) for e2 in ends[: i + 1]) for i in range(n_runs)]
    )
    assert events[0].time_left is None and ends[-1].time_left is not None
    assert all(e.time_left <= 180 - e.time_spent + 1e-9 for e in ends)

    # the same study with a larger budget resumes and runs the rest
    again = tune(TARGET, timed_bowl(clock), storage=storage, seed=0, budget=0.5, time_budget="2h")
    assert again.n_complete == planned and not again.extras["time"]["limited"]
    study = optuna.load_study(study_name=result.study_name, storage=storage)
    assert study.user_attrs[ATTR_TIME_STOP] == ""


def test_without_a_time_budget_every_planned_run_runs(monkeypatch):
    clock = FakeClock(monkeypatch)
    result = tune(TARGET, timed_bowl(clock), storage=":memory:", seed=0, budget=0.5)
    doc = result.extras["time"]
    assert result.n_complete == result.plan.total_runs and not doc["limited"]
    assert doc["wall_seconds"] == pytest.approx(clock.t - T0)
    assert time_summary(doc, result.plan.total_runs) == []


def test_gpu_hours_stop_the_study_too(monkeypatch):
    clock = FakeClock(monkeypatch)
    # 8 GPUs a run: 0.1 GPU-hours is 45 wall seconds of runs
    result = tune(TARGET, timed_bowl(clock), storage=":memory:", seed=0, gpu_hours=0.1,
                  gpus_per_run=8)  # fmt: skip
    n_runs, spent = _expected_runs(result.plan.schedule(), 45.0, 10.0, 600.0)
    assert result.n_complete == n_runs < result.plan.total_runs
    doc = result.extras["time"]
    assert doc["stop"].startswith("GPU-hours spent")
    assert doc["gpu_hours"] == pytest.approx(spent * 8 / 3600)


def test_workers_share_the_studys_time_budget(tmp_path, monkeypatch):
    """A study made for workers records the budget; a worker reads it from the study and stops
    where the study's time is spent, and a second worker finds it spent and starts nothing."""
    clock = FakeClock(monkeypatch)
    storage = f"sqlite:///{tmp_path}/w.db"
    tune(TARGET, timed_bowl(clock), storage=storage, study_name="shared", seed=0,
         time_budget=240, create_only=True)  # fmt: skip
    first = run_worker("shared", storage, objective=timed_bowl(clock))
    n_runs, _ = _expected_runs(first.plan.schedule(), 240.0, 10.0, 600.0)
    assert first.n_complete == n_runs and first.extras["time"]["limited"]
    second = run_worker("shared", storage, objective=timed_bowl(clock))
    assert second.n_complete == n_runs and second.extras["time"]["limited"]


# ------------------------------------------------------------------ what tune prints
def test_the_summary_says_the_study_was_time_limited_and_what_it_skipped():
    doc = {
        "budget": {"seconds": 2700.0, "gpu_hours": None, "gpus_per_run": 1},
        "wall_seconds": 2650.0,
        "gpu_hours": 0.7,
        "limited": True,
        "stop": "wall time spent 44 min 10 s of the budget 45 min 00 s, and the next run needs "
        "about 5 min 00 s",
        "skipped_runs": 3,
    }
    (line,) = time_summary(doc, 12)
    assert "Time-limited:" in line and "(45 min 00 s of wall time)" in line
    assert "3 of the 12 planned runs were not started" in line and "larger time budget" in line
    ok = time_summary({**doc, "limited": False, "stop": None, "skipped_runs": 0}, 12)
    assert ok == ["Time budget 45 min 00 s of wall time: spent 44 min 10 s of wall time; it did "
                  "not stop a run."]  # fmt: skip


def test_the_progress_line_shows_time_spent_and_left():
    event = SimpleNamespace(
        index=2, planned=10, number=2, lr=1e-3, batch_size=64, budget=1.0, compute_spent=0.2,
        phase="progress", step=50, total_steps=100, loss=3.1, seconds=30.0, time_spent=190.0,
        time_left=242.0, time_budget=TimeBudget(seconds=2700.0), gpu_hours=0.05,
    )  # fmt: skip
    line = run_line(event, "D=1B")
    assert "time spent 3 min 10 s of 45 min 00 s, about 4 min 02 s left" in line
    bare = SimpleNamespace(**{**vars(event), "time_budget": None, "time_left": None})
    assert line.endswith("~30 s left · compute spent 0.2 of 1 · time spent 3 min 10 s of 45 min "
                         "00 s, about 4 min 02 s left")  # fmt: skip
    assert run_line(bare, "D=1B").endswith(
        "~30 s left · compute spent 0.2 of 1 · time spent 3 min 10 s"
    )


def test_the_plan_says_how_many_runs_the_time_budget_fits():
    out = io.StringIO()
    doc = {
        "budget": {"seconds": 60.0, "gpu_hours": None, "gpus_per_run": 1},
        "wall_seconds": 30.0,
        "gpu_hours": 0.0,
        "runs_left": 8,
        "estimate_seconds": 200.0,
        "estimate_from": "measured on 2 runs",
        "fits_runs": 2,
    }
    print_time_plan(Console(file=out, width=300, color_system=None), doc)
    text = out.getvalue()
    assert "time spent so far: 30 s" in text
    assert "time of the 8 runs to go: about 3 min 20 s, one after the other (measured on 2 runs)"
    assert "time budget 1 min 00 s of wall time" in text
    assert "it fits about 2 of the 8 runs to go" in text


# ------------------------------------------------------------------ the command line
def _cli(argv, capsys):
    from steplaw_opt.cli._app import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err


PLAN = ["tune", "--params", "1B", "--tokens", "100B", "--command", "echo {lr}", "--dry-run"]


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--time-budget", "0"], "--time-budget must be more than zero, got '0'"),
        (["--time-budget", "-45m"], "--time-budget must be more than zero, got '-45m'"),
        (["--time-budget", "soon"], "--time-budget must be a duration such as 45m"),
        (["--gpu-hours", "lots"], "--gpu-hours must be a number of GPU-hours, got 'lots'"),
        (["--gpu-hours", "-2"], "--gpu-hours must be a positive number of GPU-hours, got '-2'"),
        (["--gpu-hours", "1", "--gpus-per-run", "0"], "--gpus-per-run must be a whole number"),
    ],
)
def test_bad_time_budgets_are_one_line_and_exit_2(extra, says, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = _cli([*PLAN, *extra], capsys)
    assert code == 2 and err == f"steplaw-opt: error: {err.split('error: ', 1)[1]}"
    assert says in err and err.count("\n") == 1 and out == ""
    assert list(tmp_path.iterdir()) == []  # nothing made


def test_the_dry_run_gives_the_time_budget_in_its_plan(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = _cli([*PLAN, "--time-budget", "1h30m", "--json"], capsys)
    assert code in (0, None)
    doc = json.loads(out)
    assert doc["time"]["budget"] == {"seconds": 5400.0, "gpu_hours": None, "gpus_per_run": 1}
    assert doc["time"]["estimate_seconds"] is None  # a command: nothing measured yet
    assert "time budget 1 h 30 min of wall time" in " ".join(err.split())
    assert "the first run always starts" in " ".join(err.split())


def test_a_resumed_study_prints_its_time_spent_and_the_measured_rest(capsys, tmp_path,
                                                                     monkeypatch):  # fmt: skip
    """The plan printed at the start of a resume (and by --dry-run) gives the study's time so
    far and predicts the runs to go from its measured runs."""
    from steplaw_opt import load_law
    from steplaw_opt.tune import default_study_name

    clock = FakeClock(monkeypatch)
    monkeypatch.chdir(tmp_path)
    target = Scale(N=1e9, D=1e11, seq_len=2048)
    storage = f"sqlite:///{tmp_path}/r.db"
    name = default_study_name(target, load_law("step-law"))
    tune(target, timed_bowl(clock), storage=storage, study_name=name, seed=0, time_budget=100,
         objective_spec=None)  # fmt: skip
    code, out, err = _cli([*PLAN, "--storage", storage, "--time-budget", "10m", "--json"], capsys)
    assert code in (0, None)
    doc = json.loads(out)["time"]
    assert doc["wall_seconds"] > 0 and doc["estimate_from"].startswith("measured on ")
    assert doc["runs_left"] < len(plan_proxies(target, 1.0).schedule())
    text = " ".join(err.split())
    assert "time spent so far: " in text and "runs to go: about" in text


# ------------------------------------------------------------------ MLflow
@pytest.fixture
def mlflow_uri(tmp_path, mlflow_template):  # noqa: F811
    import shutil

    shutil.copy(mlflow_template, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"


@pytest.mark.slow  # MLflow's store: seconds to set up
def test_mlflow_records_the_time_budget_the_time_spent_and_the_stop(
    tmp_path, monkeypatch, mlflow_uri
):
    from steplaw_opt.tracking import MlflowTracker

    tracking_uri = mlflow_uri
    clock = FakeClock(monkeypatch)
    storage = f"sqlite:///{tmp_path}/m.db"
    with MlflowTracker(tracking_uri) as tracker:
        result = tune(TARGET, timed_bowl(clock), storage=storage, seed=0, budget=0.5,
                      time_budget="3m", tracker=tracker)  # fmt: skip
    parent, kids = runs_of(tracking_uri)
    assert parent.info.status == "FINISHED" and len(kids) == result.n_complete
    metrics, tags = parent.data.metrics, parent.data.tags
    assert metrics["time_budget_seconds"] == 180
    assert metrics["time_spent_seconds"] == pytest.approx(result.extras["time"]["wall_seconds"])
    assert metrics["time_skipped_runs"] == result.plan.total_runs - result.n_complete
    assert tags["steplaw.time_limited"] == result.extras["time"]["stop"]
    with MlflowTracker(tracking_uri) as tracker:  # resumed with room: the stop tag goes
        tune(TARGET, timed_bowl(clock), storage=storage, seed=0, budget=0.5, time_budget="2h",
             tracker=tracker)  # fmt: skip
    parent, _ = runs_of(tracking_uri)
    assert "steplaw.time_limited" not in parent.data.tags
