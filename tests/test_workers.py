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

from steplaw_opt.scale import Scale
from steplaw_opt.tune import ATTR_SLOT
from steplaw_opt.tune._study import make_storage
from steplaw_opt.tune._workers import claim_slot

REPO = Path(__file__).resolve().parents[1]
GRID = Path(os.environ.get("STEPLAW_DATA", REPO.parent / "shared" / "data" / "steplaw"))
FINE = 0.15  # the plateau sampler's fine resolution in ln units


def _studies(tmp_path: Path, n: int = 2) -> list:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path / 'race.db'}"
    optuna.create_study(study_name="race", storage=url)
    return [
        optuna.load_study(study_name="race", storage=make_storage(optuna, url, 1))
        for _ in range(n)
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
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # both busy: worker 0 is mid-trial
        running = [t for t in _load(postgres_url, name).get_trials() if t.state.name == "RUNNING"]
        if len([t for t in running if t.params]) == 2:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the workers never ran two trials at once")
    time.sleep(0.3)
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
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE"
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
