"""Many workers on one study: slot claiming, PostgreSQL workers, a worker SIGKILLed mid-trial."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from steplaw_opt._records import ATTR_OWNER
from steplaw_opt.scale import Scale
from steplaw_opt.tune import ATTR_SLOT
from steplaw_opt.tune._study import make_storage
from steplaw_opt.tune._workers import _proc_stat, claim_slot

# End to end: the CLI in subprocesses, real files and servers (`-m 'not slow'` skips them).
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
GRID = Path(os.environ.get("STEPLAW_DATA", REPO.parent / "shared" / "data" / "steplaw"))
FINE = 0.15  # the plateau sampler's fine resolution in ln units


def _studies(tmp_path: Path, n: int = 2) -> list:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path / 'race.db'}"
    optuna.create_study(study_name="race", storage=url)
    return [
        optuna.load_study(study_name="race", storage=make_storage(optuna, url, 1)) for _ in range(n)
    ]


def _ask(study):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return study.ask()


SCHEDULE = [Scale(N=1e8, D=1e9), Scale(N=1e8, D=2e9)]


def test_interleaved_asks_claim_distinct_slots(tmp_path: Path) -> None:
    a, b = _studies(tmp_path)
    ta, tb = _ask(a), _ask(b)
    got: dict[str, int | None] = {}
    # b's trial is newer: it waits until a's older trial has claimed, whatever the timing.
    thread = threading.Thread(target=lambda: got.update(b=claim_slot(b, tb, SCHEDULE)))
    thread.start()
    time.sleep(0.3)
    assert thread.is_alive(), "the newer trial must wait for the older one to claim"
    slot_a = claim_slot(a, ta, SCHEDULE)
    ta.set_user_attr(ATTR_SLOT, slot_a)
    time.sleep(0.3)
    assert thread.is_alive(), "... and for its point (lr, batch), so the sampler sees it"
    ta.suggest_float("lr", 1e-4, 1e-1, log=True)
    ta.suggest_int("batch_size", 1, 1000, log=True)
    thread.join(10)
    assert (slot_a, got["b"]) == (0, 1)
    tb.set_user_attr(ATTR_SLOT, got["b"])
    tb.suggest_float("lr", 1e-4, 1e-1, log=True)
    tb.suggest_int("batch_size", 1, 1000, log=True)
    tc = _ask(a)
    assert claim_slot(a, tc, SCHEDULE) is None  # both slots held by running trials


def test_interrupted_trial_frees_its_slot_and_real_failure_holds_it(tmp_path: Path) -> None:
    import optuna

    a, b = _studies(tmp_path)
    t0 = _ask(a)
    t0.set_user_attr(ATTR_SLOT, 0)
    t0.set_user_attr("steplaw.failure", "interrupted")
    a.tell(t0, state=optuna.trial.TrialState.FAIL)
    t1 = _ask(b)
    t1.set_user_attr(ATTR_SLOT, 1)
    t1.set_user_attr("steplaw.failure", "diverged")
    b.tell(t1, state=optuna.trial.TrialState.FAIL)
    assert claim_slot(a, _ask(a), SCHEDULE) == 0


def test_dead_worker_trial_is_requeued_with_its_slot_and_params(tmp_path: Path) -> None:

    from steplaw_opt.tune._workers import fail_stale

    a, b = _studies(tmp_path)
    t = _ask(a)
    t.set_user_attr(ATTR_SLOT, 1)
    t.set_user_attr("steplaw.D", 2e9)
    lr = t.suggest_float("lr", 1e-4, 1e-1, log=True)
    a._storage.record_heartbeat(t._trial_id)  # then the worker "dies": no more beats
    time.sleep(3.5)  # sqlite timestamps have whole seconds; grace period 2 s
    fail_stale(b)
    trials = b.get_trials()
    assert [x.state.name for x in trials] == ["FAIL", "WAITING"]
    retry = trials[1]
    assert retry.params["lr"] == lr and retry.user_attrs[ATTR_SLOT] == 1
    assert retry.user_attrs["steplaw.D"] == 2e9
    assert retry.system_attrs["failed_trial"] == t.number
    # while the retry waits, neither the dead trial's slot nor another is given away twice
    assert claim_slot(b, _ask(b), SCHEDULE) in (0, None)


# ------------------------------------------------------------------ real processes, PostgreSQL
def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "steplaw_opt.cli", *args]


def _load(url: str, name: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=url)


def _near_duplicates(trials) -> int:
    pts = [
        (math.log(t.params["lr"]), math.log(t.params["batch_size"]), t.user_attrs.get("steplaw.D"))
        for t in trials
        if t.state.name == "COMPLETE"
    ]
    return sum(
        1
        for i in range(len(pts))
        for j in range(i)
        if pts[i][2] == pts[j][2]
        and abs(pts[i][0] - pts[j][0]) < FINE
        and abs(pts[i][1] - pts[j][1]) < FINE
    )


@pytest.mark.slow
def test_four_workers_on_postgresql_complete_40_distinct_trials(postgres_url: str) -> None:
    grid = GRID / "dense_lr_bs_loss.csv"
    if not grid.exists():
        pytest.skip(f"released Step Law data not found at {GRID}")
    name = f"workers-{os.getpid()}-{time.time_ns()}"
    create = subprocess.run(
        _cli("tune", "--replay", str(grid), "--params", "214663680", "--tokens", "1e11",
             "--budget", "5", "--n-trials", "40", "--storage", postgres_url, "--study-name",
             name, "--create-only", "--no-mlflow", "--heartbeat-interval", "2", "--seed", "0"),
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert create.returncode == 0, create.stderr
    procs = [
        subprocess.Popen(
            _cli("worker", "--storage", postgres_url, "--study-name", name, "--no-mlflow"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for _ in range(4)
    ]
    for p in procs:
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
    trials = _load(postgres_url, name).get_trials()
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 40
    slots = [t.user_attrs[ATTR_SLOT] for t in complete]
    assert sorted(slots) == list(range(40))
    assert _near_duplicates(trials) == 0


FAKE_TRAIN = textwrap.dedent(
    """
    import json, math, sys, time
    lr, batch = float(sys.argv[1]), float(sys.argv[2])
    time.sleep(float(sys.argv[3]))
    print(json.dumps({"loss": 3 + (math.log(lr) + 5) ** 2 / 4 + (math.log(batch) - 5) ** 2 / 8}))
    """
)


def _has_child(pid: int, needle: str) -> bool:
    """Whether process ``pid`` has a child whose command line contains ``needle``."""
    for entry in Path("/proc").iterdir():
        stat = _proc_stat(int(entry.name)) if entry.name.isdigit() else None
        if stat is None or stat[1] != str(pid):  # stat[1]: the parent's pid
            continue
        try:
            if needle in (entry / "cmdline").read_bytes().decode(errors="replace"):
                return True
        except OSError:
            continue  # gone meanwhile
    return False


@pytest.mark.slow
def test_sigkilled_worker_trial_is_retried_and_no_mlflow_run_stays_running(
    postgres_url: str, tmp_path: Path
) -> None:
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    name = f"kill-{os.getpid()}-{time.time_ns()}"
    command = f"{sys.executable} {script} {{lr}} {{batch_size}} 1.5"
    create = subprocess.run(
        _cli("tune", "--command", command, "--params", "1e8", "--tokens", "2e9", "--budget", "1",
             "--n-trials", "6", "--storage", postgres_url, "--study-name", name,
             "--create-only", "--tracking-uri", tracking, "--heartbeat-interval", "1",
             "--seed", "0"),
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert create.returncode == 0, create.stderr
    planned = 6
    procs = [
        subprocess.Popen(
            _cli("worker", "--storage", postgres_url, "--study-name", name),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        for _ in range(2)
    ]

    # Kill worker 0 inside a trial of its own, with its training job running (so the trial's
    # MLflow run exists), while worker 1 is busy too. Seeing two trials RUNNING is not enough:
    # under load worker 0's trial may be about to end, and a kill between its trials leaves
    # nothing to retry. So wait for a trial worker 0 starts after the first look (its owner
    # record names its pid) and for that trial's job, which then has most of its 1.5 s to run.
    def running_by_owner() -> dict[int, set[int]]:
        by_pid: dict[int, set[int]] = {}
        for t in _load(postgres_url, name).get_trials():
            owner = t.user_attrs.get(ATTR_OWNER)
            if t.state.name == "RUNNING" and t.params and isinstance(owner, dict):
                by_pid.setdefault(owner.get("pid"), set()).add(t.number)
        return by_pid

    seen_first = running_by_owner().get(procs[0].pid, set())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        by_pid = running_by_owner()
        fresh = by_pid.get(procs[0].pid, set()) - seen_first
        if fresh and by_pid.get(procs[1].pid) and _has_child(procs[0].pid, script.name):
            break
        time.sleep(0.05)
    else:
        pytest.fail("worker 0 never started a training job while worker 1 ran one")
    procs[0].send_signal(signal.SIGKILL)
    procs[0].wait(10)
    _out, err = procs[1].communicate(timeout=90)
    assert procs[1].returncode == 0, err[-2000:]
    trials = _load(postgres_url, name).get_trials()
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == planned
    dead = [t for t in trials if t.state.name == "FAIL" and "steplaw.failure" not in t.user_attrs]
    assert len(dead) == 1
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == dead[0].number]
    summary = [(t.number, t.state.name, t.system_attrs, t.user_attrs) for t in trials]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE", summary
    assert retry[0].params == dead[0].params
    for key in (ATTR_SLOT, "steplaw.N", "steplaw.D"):
        assert retry[0].user_attrs[key] == dead[0].user_attrs[key]
    from mlflow import MlflowClient

    runs = MlflowClient(tracking_uri=tracking).search_runs(
        [e.experiment_id for e in MlflowClient(tracking_uri=tracking).search_experiments()]
    )
    assert runs and not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    dead_run = [r for r in runs if r.info.run_name == f"trial-{dead[0].number}"]
    assert dead_run and dead_run[0].info.status == "FAILED"


# ------------------------------------------------------------------ database errors in setup
def _flaky(monkeypatch, method: str, failures: float) -> dict[str, int]:
    """Make ``RDBStorage.<method>`` raise SQLAlchemy's OperationalError (a database restarting,
    a lock held too long) on its first ``failures`` calls (``math.inf``: always)."""
    import optuna
    import sqlalchemy.exc

    real = getattr(optuna.storages.RDBStorage, method)
    calls = {"n": 0, "failed": 0}

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["failed"] < failures:
            calls["failed"] += 1
            raise sqlalchemy.exc.OperationalError(
                "INSERT INTO trial_params", {}, Exception("server closed the connection")
            )
        return real(self, *args, **kwargs)

    monkeypatch.setattr(optuna.storages.RDBStorage, method, flaky)
    return calls


def _bowl(lr: float, batch_size: float, scale: Scale) -> float:
    return 3.0 + math.log(lr / 1e-3) ** 2 + 0.1 * math.log(batch_size / 64) ** 2


@pytest.mark.parametrize("method", ["_set_trial_param", "set_trial_user_attr"])
def test_a_database_error_while_setting_up_a_trial_is_retried(
    tmp_path: Path, monkeypatch, method: str
) -> None:
    """Choosing a trial's point or recording its owner, slot and scale hits a database error
    a few times: the step is retried with backoff and the study completes."""
    from steplaw_opt.objectives import CallableObjective
    from steplaw_opt.tune import tune

    url = f"sqlite:///{tmp_path / 's.db'}"
    calls = _flaky(monkeypatch, method, failures=3)
    result = tune(Scale(N=1e8, D=2e9), CallableObjective(_bowl), n_trials=3, storage=url)
    assert calls["failed"] == 3
    assert result is not None and result.n_complete == 3 and result.n_failed == 0
    states = [t.state.name for t in _load(url, result.study_name).get_trials()]
    assert states == ["COMPLETE"] * 3


def test_a_database_that_stays_away_in_setup_is_one_line_and_leaves_no_running_trial(
    tmp_path: Path, monkeypatch
) -> None:
    from steplaw_opt.errors import SteplawInputError
    from steplaw_opt.objectives import CallableObjective
    from steplaw_opt.tune import _workers, tune

    monkeypatch.setattr(_workers, "TRANSIENT_WAIT", 1.0)
    url = f"sqlite:///{tmp_path / 's.db'}"
    _flaky(monkeypatch, "_set_trial_param", failures=math.inf)
    started = time.monotonic()
    with pytest.raises(SteplawInputError) as info:
        tune(Scale(N=1e8, D=2e9), CallableObjective(_bowl), n_trials=3, storage=url,
             study_name="away")  # fmt: skip
    assert time.monotonic() - started < 20
    message = str(info.value)
    assert "\n" not in message and "storage" in message, message
    assert "server closed the connection" in message, message
    trials = _load(url, "away").get_trials()
    assert trials and all(t.state.name != "RUNNING" for t in trials), trials
    assert trials[0].user_attrs["steplaw.failure"] == "interrupted"  # its slot runs again


def test_a_worker_whose_database_stays_away_exits_2_with_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    create = subprocess.run(
        _cli("tune", "--command", "echo '{{\"loss\": 3.0}}'", "--params", "1e8", "--tokens", "2e9",
             "--n-trials", "3", "--storage", url, "--study-name", "w", "--create-only",
             "--no-mlflow"),
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert create.returncode == 0, create.stderr
    worker = textwrap.dedent(
        f"""
        import optuna, sqlalchemy.exc
        from steplaw_opt.tune import _workers
        _workers.TRANSIENT_WAIT = 1.0
        def away(self, *args, **kwargs):
            raise sqlalchemy.exc.OperationalError("INSERT", {{}}, Exception("database is away"))
        optuna.storages.RDBStorage._set_trial_param = away
        from steplaw_opt.cli import main
        main(["worker", "--storage", {url!r}, "--study-name", "w", "--no-mlflow"])
        """
    )
    r = subprocess.run([sys.executable, "-c", worker], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "database is away" in lines[0], r.stderr[-2000:]
    trials = _load(url, "w").get_trials()
    assert all(t.state.name != "RUNNING" for t in trials), [t.state for t in trials]


def test_an_objectives_own_database_error_is_its_own_not_a_storage_that_went_away(
    tmp_path: Path,
) -> None:
    import sqlalchemy.exc

    from steplaw_opt.errors import SteplawStorageError
    from steplaw_opt.objectives import CallableObjective
    from steplaw_opt.tune import tune

    def reads_its_own_database(lr: float, batch_size: float, scale: Scale) -> float:
        raise sqlalchemy.exc.OperationalError("SELECT", {}, Exception("its data is locked"))

    url = f"sqlite:///{tmp_path / 's.db'}"
    started = time.monotonic()
    with pytest.raises(sqlalchemy.exc.OperationalError, match="its data is locked") as info:
        tune(Scale(N=1e8, D=2e9), CallableObjective(reads_its_own_database), n_trials=2,
             storage=url, study_name="own")  # fmt: skip
    assert not isinstance(info.value, SteplawStorageError)
    assert time.monotonic() - started < 20  # not retried as the study's storage
    trials = _load(url, "own").get_trials()
    assert [t.state.name for t in trials] == ["FAIL"]
    assert "its data is locked" in trials[0].user_attrs["steplaw.failure"]


def test_a_pruned_copy_whose_reply_was_lost_is_not_an_error(tmp_path: Path, monkeypatch) -> None:
    import optuna
    import sqlalchemy.exc

    from steplaw_opt.tune._loop import _tell

    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="p", storage=url)
    trial = study.ask()
    real = optuna.storages.RDBStorage.set_trial_state_values
    lost = {"n": 0}

    def committed_then_lost(self, *args, **kwargs):
        done = real(self, *args, **kwargs)
        if not lost["n"]:
            lost["n"] += 1
            raise sqlalchemy.exc.OperationalError("UPDATE", {}, Exception("connection reset"))
        return done

    monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_state_values", committed_then_lost)
    state = optuna.trial.TrialState.PRUNED
    assert _tell(study, trial, None, {"steplaw.failure": "no slot"}, state=state) is False
    assert lost["n"] == 1
    frozen = _load(url, "p").trials[0]
    assert frozen.state == state and frozen.user_attrs["steplaw.failure"] == "no slot"


def test_a_create_only_run_hands_its_study_over(tmp_path: Path, monkeypatch) -> None:
    from steplaw_opt.objectives import CommandObjective
    from steplaw_opt.tune import _tune, tune

    kept: list[str] = []
    real = _tune.keep_new_study
    monkeypatch.setattr(_tune, "keep_new_study", lambda s: (kept.append(s.study_name), real(s)))
    url = f"sqlite:///{tmp_path / 's.db'}"
    made = tune(Scale(N=1e8, D=2e9), CommandObjective("echo '{{\"loss\": 3.0}}'"), n_trials=2,
                storage=url, study_name="for-workers", create_only=True)  # fmt: skip
    assert made is None and kept == ["for-workers"]
    assert not any(name == "for-workers" for name in _tune._MADE_HERE.values())
    assert _load(url, "for-workers").user_attrs  # the study is there, with its settings
