"""Stops and process lifetime, with real processes and real signals: a per-trial timeout, Ctrl-C,
SIGTERM and SIGHUP to ``tune``, SIGTERM to a worker and SIGKILL of the tuner each end the job's
whole process group (SIGKILL after the grace period for a job that ignores SIGTERM); the trial is
recorded failed with the reason, no trial and no MLflow run is left RUNNING, and after a rerun
the lost slot runs again with its (lr, batch, scale)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest

from steplaw_opt import Scale
from steplaw_opt.objectives import CommandObjective, RunContext, TrialFailed
from tests.test_tracking import mlflow_template  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
GRACE = 1.0  # STEPLAW_STOP_GRACE for these tests: a stubborn job gets SIGKILL after 1 s
SCALE = Scale(N=1e6, D=2e8, seq_len=512)

# A training job that ignores SIGTERM, writes "<tag> <pid>" to a file, sleeps, prints a loss.
STUBBORN = textwrap.dedent(
    """
    import json, math, os, signal, sys, time
    pids, tag, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    if os.environ.get("JOB_IGNORES_TERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(pids, "a") as f:
        f.write(f"{tag} {os.getpid()}\\n")
    if os.path.exists(pids + ".long"):  # the test removes it to let the rerun finish quickly
        time.sleep(seconds)
    else:
        time.sleep(0.05)
    lr, batch = float(sys.argv[4]), float(sys.argv[5])
    print(json.dumps({"loss": 3 + (math.log(lr) + 6) ** 2 / 4 + (math.log(batch) - 4) ** 2 / 8}))
    """
)


def _as_from_a_terminal() -> None:
    """SIGINT as a shell in a terminal leaves it: the default action. A test run started in the
    background of a non-interactive shell (``cmd &``, as CI may be) inherits SIGINT ignored,
    and an ignored SIGINT stays ignored by design (``nohup``); Ctrl-C tests need a real one."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def wait_dead(pids: list[int], seconds: float) -> list[int]:
    """The pids still alive after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def read_pids(path: Path) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            tag, pid = line.split()
            out.setdefault(tag, []).append(int(pid))
    return out


def wait_for(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def kill_all(pids: list[int]) -> None:
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


@pytest.fixture
def job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """(script path, pid file): the stubborn job; its processes are SIGKILLed after the test
    whatever happened, so a failing test leaves nothing behind either."""
    script = tmp_path / "job.py"
    script.write_text(STUBBORN)
    pids = tmp_path / "pids.txt"
    (tmp_path / "pids.txt.long").write_text("")
    monkeypatch.setenv("STEPLAW_STOP_GRACE", str(GRACE))
    monkeypatch.setenv("JOB_IGNORES_TERM", "1")
    yield script, pids
    kill_all([p for ps in read_pids(pids).values() for p in ps])


# ------------------------------------------------------------------ the command objective
def test_timeout_kills_a_job_that_ignores_sigterm_behind_its_shell(job) -> None:
    script, pids = job
    # "; echo" keeps the shell as the job's parent: SIGTERM kills the shell, not the job.
    obj = CommandObjective(f"{PY} {script} {pids} t 60 {{lr}} {{batch_size}}; echo", timeout=1)
    started = time.monotonic()
    with pytest.raises(TrialFailed, match="timeout after 1 s"):
        obj.run(3e-3, 64, SCALE, RunContext())
    job_pids = read_pids(pids)["t"]
    assert wait_dead(job_pids, 0.5) == [], "the job outlived the timeout"
    assert time.monotonic() - started < 1 + GRACE + 3


def test_a_job_left_in_the_background_is_stopped_when_the_run_ends(job) -> None:
    script, pids = job
    template = (
        f"{PY} {script} {pids} bg 60 {{lr}} {{batch_size}} & "
        f"while [ ! -s {pids} ]; do sleep 0.05; done; echo '{{{{\"loss\": 2.5}}}}'"
    )
    started = time.monotonic()
    assert CommandObjective(template).run(3e-3, 64, SCALE, RunContext()) == 2.5
    assert wait_dead(read_pids(pids)["bg"], 0.5) == [], "a background job outlived its run"
    assert time.monotonic() - started < GRACE + 3


def test_sigkill_of_the_tuner_still_stops_the_job(job, tmp_path: Path) -> None:
    script, pids = job
    runner = tmp_path / "runner.py"
    runner.write_text(
        "from steplaw_opt import Scale\n"
        "from steplaw_opt.objectives import CommandObjective, RunContext\n"
        f"CommandObjective({f'{PY} {script} {pids} k 60 1e-3 64; echo'!r})"
        ".run(1e-3, 64, Scale(N=1e6, D=2e8), RunContext())\n"
    )
    proc = subprocess.Popen([PY, str(runner)], cwd=REPO)
    try:
        job_pids = wait_for(lambda: read_pids(pids).get("k"), 30, "the job to start")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # SIGKILL cannot be caught: the tuner's watchdog stops the job's group.
        assert wait_dead(job_pids, GRACE + 4) == [], "the job outlived its SIGKILLed tuner"
    finally:
        proc.kill()


# ------------------------------------------------------------------ the tune command
def _tune_args(script: Path, pids: Path, tmp_path: Path, tracking: str, n: int = 3) -> list[str]:
    return [
        PY, "-m", "steplaw_opt.cli", "tune", "--params", "1e8", "--tokens", "2e9",
        "--command", f"{PY} {script} {pids} {{trial_number}} 60 {{lr}} {{batch_size}}; echo",
        "--n-trials", str(n), "--seed", "0", "--storage", f"sqlite:///{tmp_path / 's.db'}",
        "--study-name", "s", "--tracking-uri", tracking,
    ]  # fmt: skip


def _mlflow_running(tracking: str) -> list[str]:
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=tracking)
    runs = c.search_runs([e.experiment_id for e in c.search_experiments()], max_results=1000)
    assert runs, "nothing was recorded in MLflow"
    return [r.info.run_name for r in runs if r.info.status == "RUNNING"]


def _trials(tmp_path: Path) -> list[optuna.trial.FrozenTrial]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}").trials


@pytest.fixture
def tracking(tmp_path: Path, mlflow_template: Path) -> str:  # noqa: F811
    shutil.copy(mlflow_template, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)]
)
def test_a_signal_to_tune_stops_the_job_group_and_fails_the_trial(
    job, tmp_path: Path, tracking: str, sig: signal.Signals, code: int
) -> None:
    script, pids = job
    proc = subprocess.Popen(
        _tune_args(script, pids, tmp_path, tracking), cwd=tmp_path, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_as_from_a_terminal,
    )  # fmt: skip
    try:
        job_pids = wait_for(lambda: read_pids(pids).get("0"), 60, "the first job to start")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=GRACE + 30)
    finally:
        proc.kill()
    assert proc.returncode == code, err[-2000:]
    assert "marked failed" in out + err
    assert wait_dead(job_pids, 0.5) == [], f"the job outlived {sig.name} to tune"
    trials = _trials(tmp_path)
    assert [t.state.name for t in trials] == ["FAIL"]
    assert trials[0].user_attrs["steplaw.failure"] == "interrupted"
    assert trials[0].user_attrs["steplaw.interrupted_by"] == sig.name
    assert _mlflow_running(tracking) == []


@pytest.mark.slow
def test_sigkill_of_tune_then_a_rerun_retries_the_lost_slot(
    job, tmp_path: Path, tracking: str
) -> None:
    script, pids = job
    args = _tune_args(script, pids, tmp_path, tracking, n=4)
    (tmp_path / "pids.txt.long").unlink()  # quick trials until trial 2 ...
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: read_pids(pids).get("1"), 60, "trial 1 to start")
        (tmp_path / "pids.txt.long").write_text("")  # ... which runs until the tuner is killed
        job_pids = wait_for(lambda: read_pids(pids).get("2"), 60, "trial 2 to start")
        running = [t for t in _trials(tmp_path) if t.state.name == "RUNNING"]
        assert len(running) == 1 and running[0].number == 2
        lost = running[0]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    assert wait_dead(job_pids, GRACE + 4) == [], "the job outlived its SIGKILLed tuner"
    (tmp_path / "pids.txt.long").unlink()
    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    trials = _trials(tmp_path)
    assert [t for t in trials if not t.state.is_finished()] == []
    assert trials[2].state.name == "FAIL"
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == 2]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE"
    assert retry[0].params == lost.params
    for key in ("steplaw.slot", "steplaw.N", "steplaw.D", "steplaw.seq_len"):
        assert retry[0].user_attrs[key] == lost.user_attrs[key]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert sorted(t.user_attrs["steplaw.slot"] for t in complete) == [0, 1, 2, 3]
    assert _mlflow_running(tracking) == []


# A real SIGINT that lands between two runs: the process sends it to itself from inside the
# sampler's proposal or the MLflow tracker's "trial started", deterministically on trial 2.
DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    from steplaw_opt.cli._app import main
    hook = sys.argv[1]
    if hook == "sampler":
        from steplaw_opt.samplers import PlateauSampler as cls
        name = "sample_relative"
    else:
        from steplaw_opt.tracking import MlflowTracker as cls
        name = "trial_started"
    original, calls = getattr(cls, name), []

    def hooked(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args, **kwargs)

    setattr(cls, name, hooked)
    main(sys.argv[2:])
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("hook", ["sampler", "tracker"])
def test_ctrl_c_between_two_runs_leaves_nothing_running(
    job, tmp_path: Path, tracking: str, hook: str
) -> None:
    script, pids = job
    (tmp_path / "pids.txt.long").unlink()
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    args = _tune_args(script, pids, tmp_path, tracking, n=4)[3:]
    first = subprocess.run(
        [PY, str(driver), hook, *args], cwd=tmp_path, capture_output=True, text=True,
        timeout=120, preexec_fn=_as_from_a_terminal,
    )  # fmt: skip
    assert first.returncode == 130, first.stderr[-2000:]
    assert "marked failed" in first.stdout + first.stderr
    trials = _trials(tmp_path)
    assert [t.state.name for t in trials if not t.state.is_finished()] == []
    stopped = [t for t in trials if t.state.name == "FAIL"]
    assert len(stopped) == 1 and stopped[0].user_attrs["steplaw.failure"] == "interrupted"
    assert _mlflow_running(tracking) == []
    again = subprocess.run(
        [PY, "-m", "steplaw_opt.cli", *args, "--json"], cwd=tmp_path, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout)["n_complete"] == 4  # the interrupted slot ran again
    assert _mlflow_running(tracking) == []


# ------------------------------------------------------------------ a worker
@pytest.mark.slow
def test_sigterm_to_a_worker_stops_the_job_group(job, tmp_path: Path) -> None:
    script, pids = job
    url = f"sqlite:///{tmp_path / 'w.db'}"
    cli = [PY, "-m", "steplaw_opt.cli"]
    create = subprocess.run(
        [*cli, "tune", "--params", "1e8", "--tokens", "2e9", "--command",
         f"{PY} {script} {pids} {{trial_number}} 60 {{lr}} {{batch_size}}; echo",
         "--n-trials", "3", "--storage", url, "--study-name", "w", "--create-only",
         "--no-mlflow", "--heartbeat-interval", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert create.returncode == 0, create.stderr
    proc = subprocess.Popen(
        [*cli, "worker", "--storage", url, "--study-name", "w", "--no-mlflow"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        job_pids = wait_for(lambda: read_pids(pids).get("0"), 60, "the first job to start")
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=GRACE + 30)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert wait_dead(job_pids, 0.5) == [], "the job outlived SIGTERM to its worker"
    study = optuna.load_study(study_name="w", storage=url)
    assert [t.state.name for t in study.trials] == ["FAIL"]
    assert study.trials[0].user_attrs["steplaw.failure"] == "interrupted"
    assert study.trials[0].user_attrs["steplaw.interrupted_by"] == "SIGTERM"


# ------------------------------------------------------------------ owners (fast, in-process)
def _study_with_running_trial(
    tmp_path: Path, owner: dict, name: str = "o"
) -> tuple[optuna.Study, int]:
    import warnings

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{tmp_path / 'o.db'}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    for key, value in {"steplaw.slot": 3, "steplaw.D": 2e9, "steplaw.owner": owner}.items():
        trial.set_user_attr(key, value)
    return study, trial.number


def test_a_trial_whose_process_is_gone_is_failed_and_requeued(tmp_path: Path) -> None:
    from steplaw_opt.tune._workers import owner_record, recover_lost

    dead = subprocess.Popen([PY, "-c", "pass"])
    dead.wait()
    owner = {**owner_record(0), "pid": dead.pid, "start": 1}  # this machine, a finished pid
    study, number = _study_with_running_trial(tmp_path, owner)
    assert recover_lost(study) == [number]
    lost, retry = study.get_trials()
    assert lost.state.name == "FAIL" and "is gone" in lost.user_attrs["steplaw.lost"]
    assert "steplaw.failure" not in lost.user_attrs  # lost, not failed: its slot runs again
    assert retry.state.name == "WAITING" and retry.params == lost.params
    assert retry.user_attrs["steplaw.slot"] == 3 and retry.user_attrs["steplaw.D"] == 2e9
    assert retry.system_attrs["failed_trial"] == number
    assert "steplaw.owner" not in retry.user_attrs
    assert recover_lost(study) == []  # once


def test_a_trial_owned_elsewhere_or_alive_is_left_running(tmp_path: Path) -> None:
    from steplaw_opt.tune._workers import owner_record, recover_lost

    alive_proc = subprocess.Popen([PY, "-c", "import time; time.sleep(30)"])
    try:
        me = owner_record(0)
        with open(f"/proc/{alive_proc.pid}/stat") as f:
            start = int(f.read().rsplit(")", 1)[1].split()[19])
        for name, owner in (
            ("elsewhere", {**me, "host": "another-machine"}),  # heartbeats' job, not ours
            ("alive", {**me, "pid": alive_proc.pid, "start": start}),  # alive on this machine
        ):
            study, _ = _study_with_running_trial(tmp_path, owner, name)
            assert recover_lost(study) == []
            assert [t.state.name for t in study.get_trials()] == ["RUNNING"]
    finally:
        alive_proc.kill()
        alive_proc.wait()


# ------------------------------------------------------------------ where a stop is raised
def _signal_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)  # the handler runs at the next bytecode; give it one


def test_a_stop_outside_an_objective_waits_for_a_safe_point() -> None:
    """Inside stop_signals, a signal raises only at check_stop (never inside a storage or
    MLflow call, where it could leave a lock held): the code in between runs to its end."""
    from steplaw_opt.tune._workers import Stopped, check_stop, stop_signals

    reached = []
    with pytest.raises(Stopped) as info, stop_signals():
        _signal_self()
        reached.append("after the signal")  # a library call in progress is not cut
        check_stop()
        reached.append("after check_stop")
    assert reached == ["after the signal"]
    assert info.value.signame == "SIGTERM" and info.value.exit_code == 143


def test_a_stop_no_safe_point_saw_is_raised_when_the_block_ends() -> None:
    from steplaw_opt.tune._workers import Stopped, stop_signals

    done = []
    with pytest.raises(Stopped), stop_signals():
        _signal_self()
        done.append(True)
    assert done == [True]
    assert signal.getsignal(signal.SIGTERM) is not None  # the handler is back


def test_a_stop_interrupts_an_objectives_own_code_at_once() -> None:
    from steplaw_opt.tune._workers import Stopped, interruptible, stop_signals

    t0 = time.monotonic()
    with pytest.raises(Stopped), stop_signals(), interruptible():
        _signal_self()
        time.sleep(5)  # a training step: interrupted, as Ctrl-C interrupts Python code
    assert time.monotonic() - t0 < 2


def test_a_second_signal_does_not_wait() -> None:
    from steplaw_opt.tune._workers import Stopped, stop_signals

    t0 = time.monotonic()
    with pytest.raises(Stopped), stop_signals():
        _signal_self()
        _signal_self()
        time.sleep(5)  # not reached to its end: the second signal raises where it lands
    assert time.monotonic() - t0 < 2


def test_a_stop_inside_a_storage_write_waits_for_its_end() -> None:
    from steplaw_opt.tune._workers import Stopped, deferred_stops, interruptible, stop_signals

    written = []
    with pytest.raises(Stopped), stop_signals(), interruptible():
        with deferred_stops():  # the objective reports a loss: the write is completed
            _signal_self()
            written.append(True)
        written.append("after")  # not reached: raised as the write ends
    assert written == [True]


def test_a_command_objective_polls_and_the_others_are_interrupted() -> None:
    from steplaw_opt.objectives import BuiltinTrainerObjective, CallableObjective

    assert CommandObjective("true {lr} {batch_size}").checks_stops is True
    assert BuiltinTrainerObjective.checks_stops is False
    assert CallableObjective.checks_stops is False
