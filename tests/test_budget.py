"""Concurrency and budget, with real processes: any number of `tune` and `worker` processes on
one study (SQLite or PostgreSQL) run each planned slot once and never spend more than the
budget; a fresh database survives two processes creating it at once; a resume with another plan
or another objective is refused in one line."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest

from steplaw_opt import Scale, SteplawInputError
from steplaw_opt._files import folder_lock
from steplaw_opt.objectives import CallableObjective, CommandObjective
from steplaw_opt.tune import tune

# End to end: the CLI in subprocesses, real files and servers (`-m 'not slow'` skips them).
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
CLI = [PY, "-m", "steplaw_opt.cli"]
JOB = textwrap.dedent(
    """
    import json, math, sys, time
    lr, batch = float(sys.argv[1]), float(sys.argv[2])
    time.sleep(float(sys.argv[3]))
    print(json.dumps({"loss": 3 + (math.log(lr) + 6) ** 2 / 4 + (math.log(batch) - 4) ** 2 / 8}))
    """
)
TARGET = ["--params", "1e8", "--tokens", "2e9"]


@pytest.fixture
def job(tmp_path: Path) -> Path:
    script = tmp_path / "job.py"
    script.write_text(JOB)
    return script


def command(script: Path, seconds: float) -> str:
    return f"{PY} {script} {{lr}} {{batch_size}} {seconds}"


def load(url: str, name: str) -> optuna.Study:
    """The study; an SQLite one is read the way steplaw-opt opens the file: under the folder's
    lock, and only once the file exists. A bare ``optuna.load_study`` would create the file or
    its tables itself, racing a `tune` that is initialising them (UNIQUE constraint failed on
    alembic_version, seen in CI)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not url.startswith("sqlite:///"):  # a server: these tests read it only once it exists
        return optuna.load_study(study_name=name, storage=url)
    path = Path(url.removeprefix("sqlite:///"))
    with folder_lock(path.parent):
        if not path.exists():
            raise KeyError(f"no database yet at {path}")
        return optuna.load_study(study_name=name, storage=url)


def check_once_within_budget(study: optuna.Study, planned: int) -> None:
    """Every planned slot ran exactly once (one finished run per slot), nothing is left running,
    and the runs that count cost no more than the study's budget."""
    trials = study.get_trials()
    assert [t.number for t in trials if not t.state.is_finished()] == []
    done = [
        t
        for t in trials
        if t.state.name == "COMPLETE"
        or (
            t.state.name == "FAIL"
            and t.user_attrs.get("steplaw.failure") not in (None, "interrupted")
        )
    ]
    slots = sorted(t.user_attrs["steplaw.slot"] for t in done)
    assert slots == list(range(planned)), slots
    spent = sum(t.user_attrs["steplaw.compute"] for t in done)
    assert spent <= study.user_attrs["steplaw.budget"] + 1e-9


def planned_runs(*args: str) -> int:
    r = subprocess.run([*CLI, "tune", *args, "--dry-run", "--json"], capture_output=True,
                       text=True, timeout=60, cwd=REPO)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return int(json.loads(r.stdout)["plan"]["runs"])


def no_traceback(err: str) -> None:
    assert "Traceback" not in err, err[-3000:]


# ------------------------------------------------------------------ two tunes, one study
@pytest.mark.slow
def test_a_second_tune_on_a_running_study_runs_no_slot_twice(job: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    args = ["tune", *TARGET, "--command", command(job, 0.4), "--budget", "1", "--storage", url,
            "--study-name", "s", "--no-mlflow", "--seed", "0", "--json"]  # fmt: skip
    planned = planned_runs(*args[1:-1])
    first = subprocess.Popen([*CLI, *args], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the study exists and its first trial runs
        try:
            if any(t.state.name == "COMPLETE" for t in load(url, "s").trials):
                break
        except KeyError:
            pass
        time.sleep(0.1)
    second = subprocess.run([*CLI, *args], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    _out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-2000:]
    assert second.returncode == 0, second.stderr[-2000:]
    check_once_within_budget(load(url, "s"), planned)


@pytest.mark.slow
def test_three_tunes_on_a_fresh_database_at_once(job: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    args = ["tune", *TARGET, "--command", command(job, 0.2), "--budget", "0.5", "--storage",
            url, "--study-name", "s", "--no-mlflow", "--seed", "0"]  # fmt: skip
    planned = planned_runs(*args[1:])
    procs = [
        subprocess.Popen(
            [*CLI, *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    for p in procs:
        _out, err = p.communicate(timeout=180)
        no_traceback(err)
        assert p.returncode == 0, err[-2000:]
    check_once_within_budget(load(url, "s"), planned)


def _mixed_processes(url: str, name: str, script: Path, cwd: Path, heartbeat: str) -> None:
    args = [*TARGET, "--command", command(script, 0.3), "--budget", "2", "--n-trials", "12",
            "--storage", url, "--study-name", name, "--seed", "0", "--no-mlflow"]  # fmt: skip
    create = subprocess.run(
        [*CLI, "tune", *args, "--create-only", "--heartbeat-interval", heartbeat],
        capture_output=True, text=True, timeout=60, cwd=cwd,
    )  # fmt: skip
    assert create.returncode == 0, create.stderr
    worker = [*CLI, "worker", "--storage", url, "--study-name", name, "--no-mlflow"]
    procs = [
        subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for cmd in (worker, worker, [*CLI, "tune", *args], [*CLI, "tune", *args])
    ]
    for p in procs:
        _out, err = p.communicate(timeout=240)
        no_traceback(err)
        assert p.returncode == 0, err[-2000:]
    check_once_within_budget(load(url, name), 12)


@pytest.mark.slow
def test_tunes_and_workers_on_sqlite_run_each_slot_once(job: Path, tmp_path: Path) -> None:
    _mixed_processes(f"sqlite:///{tmp_path / 'm.db'}", "m", job, tmp_path, "1")


@pytest.mark.slow
def test_tunes_and_workers_on_postgresql_run_each_slot_once(
    job: Path, tmp_path: Path, postgres_url: str
) -> None:
    _mixed_processes(postgres_url, f"mixed-{os.getpid()}-{time.time_ns()}", job, tmp_path, "1")


# ------------------------------------------------------------------ the study's own settings
def _tune_cli(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``tune`` on the study 'r'; with --json among ``extra`` the header goes to stderr."""
    return subprocess.run(
        [*CLI, "tune", *TARGET, "--storage", f"sqlite:///{tmp_path / 'r.db'}", "--study-name",
         "r", "--no-mlflow", "--seed", "0", *extra],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (["--budget", "0.6"], "budget"),
        (["--n-trials", "2"], "n_trials"),
        (["--target-runs", "0", "--smaller-n"], "smaller_n"),
    ],
)
def test_a_resume_with_another_plan_is_refused_in_one_line(
    job: Path, tmp_path: Path, change: list[str], needle: str
) -> None:
    base = ["--command", command(job, 0), "--budget", "0.3"]
    first = _tune_cli(tmp_path, *base, "--json")
    assert first.returncode == 0, first.stderr
    n = json.loads(first.stdout)["n_complete"]
    again = _tune_cli(tmp_path, *base, *change)
    assert again.returncode == 2, again.stderr[-2000:]
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "'r'" in lines[0], again.stderr
    assert len(load(f"sqlite:///{tmp_path / 'r.db'}", "r").trials) == n  # nothing more ran
    same = _tune_cli(tmp_path, *base, "--json")  # the study's own settings resume it
    assert same.returncode == 0 and json.loads(same.stdout)["n_complete"] == n


def test_a_resume_with_another_command_is_refused_naming_both(job: Path, tmp_path: Path) -> None:
    first = _tune_cli(tmp_path, "--command", command(job, 0), "--budget", "0.3")
    assert first.returncode == 0, first.stderr
    other = f"{PY} {job} {{lr}} {{batch_size}} 0.01"
    again = _tune_cli(tmp_path, "--command", other, "--budget", "0.3")
    assert again.returncode == 2, again.stderr[-2000:]
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and command(job, 0) in lines[0] and other in lines[0], again.stderr


def test_a_resume_on_another_grid_is_refused(tmp_path: Path, steplaw_data: Path) -> None:
    grid = steplaw_data / "dense_lr_bs_loss.csv"
    rows = grid.read_text().splitlines()
    other = tmp_path / "other.csv"  # the same settings, one measured run fewer
    other.write_text("\n".join(rows[:1] + rows[2:]) + "\n")
    args = ["--params", "214663680", "--tokens", "1e11", "--n-trials", "3"]
    url = f"sqlite:///{tmp_path / 'g.db'}"
    run = [*CLI, "tune", *args, "--storage", url, "--study-name", "g", "--no-mlflow"]
    first = subprocess.run([*run, "--replay", str(grid)], capture_output=True, text=True,
                           timeout=120, cwd=tmp_path)  # fmt: skip
    assert first.returncode == 0, first.stderr
    again = subprocess.run([*run, "--replay", str(other)], capture_output=True, text=True,
                           timeout=120, cwd=tmp_path)  # fmt: skip
    assert again.returncode == 2, again.stderr[-2000:]
    lines = again.stderr.strip().splitlines()
    # the study records resolved paths (a data folder may be a symbolic link)
    assert len(lines) == 1, again.stderr
    assert str(grid.resolve()) in lines[0] and str(other.resolve()) in lines[0], again.stderr


def test_the_python_api_refuses_another_objective_kind(tmp_path: Path) -> None:
    target = Scale(N=1e8, D=2e9)
    url = f"sqlite:///{tmp_path / 'p.db'}"

    def bowl(lr: float, batch_size: float, scale: Scale) -> float:
        return 3 + (math.log(lr) + 6) ** 2 + (math.log(batch_size) - 4) ** 2

    tune(target, CallableObjective(bowl), storage=url, study_name="p", budget=0.3)
    with pytest.raises(SteplawInputError, match=r"'p' tunes .*callable.*not command"):
        tune(target, CommandObjective("echo 1"), storage=url, study_name="p", budget=0.3)


def test_two_queued_copies_of_one_slot_run_it_once(tmp_path: Path) -> None:
    """Two processes that find one trial lost at the same moment may both queue its copy: the
    lower-numbered copy runs, the other is pruned unrun, and every other slot runs once."""
    from optuna.distributions import FloatDistribution, IntDistribution

    from steplaw_opt.tune import StudySetup, TuneConfig

    target = Scale(N=1e8, D=2e9)
    url = f"sqlite:///{tmp_path / 'q.db'}"
    calls: list[tuple[float, float]] = []

    def bowl(lr: float, batch_size: float, scale: Scale) -> float:
        calls.append((lr, batch_size))
        return 3 + (math.log(lr) + 6) ** 2 + (math.log(batch_size) - 4) ** 2

    kw = {"storage": url, "study_name": "q", "budget": 0.3}
    assert tune(target, CallableObjective(bowl), create_only=True, **kw) is None
    setup = StudySetup.build(target, TuneConfig(budget=0.3), None)
    lo, hi = setup.lr_bounds
    params = {"lr": math.sqrt(lo * hi), "batch_size": setup.batch_dist["low"] * 2}
    dists = {
        "lr": FloatDistribution(lo, hi, log=True),
        "batch_size": IntDistribution(**setup.batch_dist),
    }
    s0 = setup.schedule[0]
    attrs = {"steplaw.slot": 0, "steplaw.N": s0.N, "steplaw.D": s0.D, "steplaw.seq_len": s0.seq_len}
    study = load(url, "q")
    for _ in range(2):  # the same lost run, queued twice
        study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.WAITING, params=params, distributions=dists,
                user_attrs=attrs, system_attrs={"failed_trial": 99},
            )
        )  # fmt: skip
    result = tune(target, CallableObjective(bowl), **kw)
    assert result is not None and result.n_complete == len(setup.schedule)
    trials = load(url, "q").trials
    assert [t.state.name for t in trials[:2]] == ["COMPLETE", "PRUNED"]
    assert calls.count((params["lr"], params["batch_size"])) == 1
    check_once_within_budget(load(url, "q"), len(setup.schedule))


# ------------------------------------------------------------------ what a cut run spent
def test_a_run_cut_short_counts_the_compute_it_recorded_using(tmp_path: Path) -> None:
    """A run that stops early (it diverged at a quarter of its tokens, as the built-in trainer
    records) counts a quarter of its cost; a run that records nothing counts in full."""
    from steplaw_opt.objectives import Objective, RunContext, TrialFailed
    from steplaw_opt.tune._study import compute_spent

    class CutShort(Objective):
        name = "cut-short"

        def __init__(self) -> None:
            self.calls = 0

        def run(self, lr: float, batch_size: float, scale: Scale, context: RunContext) -> float:
            self.calls += 1
            if self.calls == 1:  # stopped at a quarter of its tokens, and says so
                context.notes["tokens"] = float(scale.D or 0) / 4
                raise TrialFailed("diverged")
            if self.calls == 2:  # failed without saying how far it got
                raise TrialFailed("exit code 1")
            context.notes["tokens"] = float(scale.D or 0)
            return 3.0 + math.log(lr / 1e-3) ** 2

    url = f"sqlite:///{tmp_path / 's.db'}"
    result = tune(Scale(N=1e8, D=2e9), CutShort(), n_trials=4, storage=url, study_name="cut")
    assert result is not None
    costs = [s.cost for s in result.plan.stages for _ in range(s.runs)]
    trials = optuna.load_study(study_name="cut", storage=url).trials
    assert [t.state.name for t in trials] == ["FAIL", "FAIL", "COMPLETE", "COMPLETE"]
    slot = [t.user_attrs["steplaw.slot"] for t in trials]
    assert trials[0].user_attrs["steplaw.compute"] == pytest.approx(costs[slot[0]] / 4)
    assert trials[0].user_attrs["steplaw.note.tokens"] > 0  # a failed run's notes are kept
    assert trials[1].user_attrs["steplaw.compute"] == pytest.approx(costs[slot[1]])
    expected = sum(costs) - 0.75 * costs[slot[0]]
    study = optuna.load_study(study_name="cut", storage=url)
    assert compute_spent(study) == pytest.approx(expected)
    assert result.compute_spent == pytest.approx(expected) and expected < result.plan.compute
