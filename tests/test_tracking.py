"""The MLflow record of a tuning study: parent and nested runs, metrics, artifacts, resume, no
run left RUNNING, and a tracking server that goes away (local SQLite and a real `mlflow server`)."""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
import pytest

from steplaw_opt import Scale, load_law
from steplaw_opt.objectives import CallableObjective, Objective, RunContext, TrialFailed
from steplaw_opt.tracking import ATTR_RUN_ID, MlflowTracker, TrackingWarning
from steplaw_opt.tune import tune

# End to end: the CLI in subprocesses, real files and servers (`-m 'not slow'` skips them).
pytestmark = pytest.mark.slow

TARGET = Scale(N=4.29e8, D=4e10)
LAW = load_law("step-law")


def bowl(lr: float, batch_size: float, scale: Scale) -> float:
    u = math.log(lr / LAW.lr_at(scale)) - 0.25
    v = math.log(batch_size * scale.seq_len / LAW.batch_tokens_at(scale)) + 0.2
    return (2.0 + 1e10 / float(scale.D or 1)) * math.exp(0.0064 * u * u + 0.006 * v * v)


class CurveObjective(Objective):
    """The bowl, reporting a falling loss curve of three steps first."""

    name = "curve"

    def run(self, lr: float, batch_size: float, scale: Scale, context: RunContext) -> float:
        final = bowl(lr, batch_size, scale)
        for step in range(3):
            if context.report is not None:
                context.report(step, final + 1.0 / (step + 1))
        return final


# ------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite database with its tables made once (the migrations take seconds)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracking_uri(tmp_path: Path, mlflow_template: Path) -> str:
    db = tmp_path / "mlflow.db"
    shutil.copy(mlflow_template, db)
    return f"sqlite:///{db}"


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def runs_of(uri: str, experiment: str = "steplaw-opt") -> tuple[object, list[object]]:
    """(the parent run, its nested runs) of the only study in the experiment."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], kids


def artifact_paths(uri: str, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for a in client(uri).list_artifacts(run_id, path):
        out |= artifact_paths(uri, run_id, a.path) if a.is_dir else {a.path}
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------- local SQLite
def test_parent_and_nested_runs_with_metrics_and_artifacts(tmp_path, tracking_uri):
    storage = f"sqlite:///{tmp_path}/s.db"
    with MlflowTracker(tracking_uri) as tracker:
        result = tune(TARGET, CurveObjective(), storage=storage, seed=0, tracker=tracker)
    parent, kids = runs_of(tracking_uri)
    assert parent.info.run_name == result.study_name and parent.info.status == "FINISHED"
    assert len(kids) == result.plan.total_runs == 10
    assert {k.info.status for k in kids} == {"FINISHED"}
    study = optuna.load_study(study_name=result.study_name, storage=storage)
    assert study.user_attrs[ATTR_RUN_ID] == parent.info.run_id
    kid = next(k for k in kids if k.data.tags["steplaw.trial_number"] == "3")
    trial = study.trials[3]
    assert kid.data.metrics["loss"] == pytest.approx(trial.value)
    assert float(kid.data.params["lr"]) == pytest.approx(trial.params["lr"], rel=1e-5)
    assert kid.data.params["batch_size"] == str(trial.params["batch_size"])
    assert float(kid.data.params["D"]) == trial.user_attrs["steplaw.D"]
    assert kid.data.tags["optuna.trial_id"] == str(trial._trial_id)
    assert kid.data.tags["optuna.storage"] == storage
    curve = client(tracking_uri).get_metric_history(kid.info.run_id, "loss_curve")
    assert [m.step for m in curve] == [0, 1, 2]
    m = parent.data.metrics
    assert m["refined.lr"] == pytest.approx(result.refined.lr)
    assert m["refined.lr_interval_95_lo"] < m["refined.lr"] < m["refined.lr_interval_95_hi"]
    assert m["compute_spent"] == pytest.approx(result.compute_spent)
    assert m["n_complete"] == 10
    history = client(tracking_uri).get_metric_history(parent.info.run_id, "refined.lr")
    assert len(history) >= 10  # updated as the study went
    assert parent.data.params["target.D"] == "40000000000.0"
    assert "prior.sd_u" in parent.data.params
    assert "Train with" in parent.data.tags["mlflow.note.content"]
    assert parent.data.tags["steplaw.outcome"] == "refined"
    assert artifact_paths(tracking_uri, parent.info.run_id) >= {
        "law-card.toml",
        "trials.csv",
        "plots/landscape.png",
        "plots/convergence.png",
        "plots/uv.png",
    }
    where = result.extras["mlflow"]
    assert where["run_id"] == parent.info.run_id and where["nested_runs"] == 10


def _stop_after(n: int):
    """An Optuna-style callback that stops the study (as Ctrl-C would) after ``n`` trials —
    a resume has a plan's worth of slots left to run (a resume with another budget is refused:
    the plan is the study's)."""

    def callback(study, trial) -> None:
        if trial.number + 1 >= n:
            raise KeyboardInterrupt

    return callback


def test_resume_continues_the_same_parent_run(tmp_path, tracking_uri):
    storage = f"sqlite:///{tmp_path}/s.db"
    with pytest.raises(KeyboardInterrupt):
        tune(
            TARGET,
            CallableObjective(bowl),
            storage=storage,
            budget=0.6,
            seed=0,
            callbacks=[_stop_after(3)],
            tracker=MlflowTracker(tracking_uri),
        )
    first_parent, first_kids = runs_of(tracking_uri)
    again = tune(
        TARGET,
        CallableObjective(bowl),
        storage=storage,
        budget=0.6,
        seed=0,
        tracker=MlflowTracker(tracking_uri),
    )
    assert again.extras["mlflow"]["run_id"] == first_parent.info.run_id
    parent, kids = runs_of(tracking_uri)
    assert parent.info.status == "FINISHED"
    assert len(kids) == again.n_complete > len(first_kids) >= 3
    assert len({k.data.tags["steplaw.trial_number"] for k in kids}) == len(kids)


def test_a_raising_objective_leaves_no_running_run(tmp_path, tracking_uri):
    calls = {"n": 0}

    def broken(lr, batch_size, scale):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("bug in the training script")
        return bowl(lr, batch_size, scale)

    with pytest.raises(RuntimeError), MlflowTracker(tracking_uri) as tracker:
        tune(TARGET, CallableObjective(broken), storage=":memory:", seed=0, tracker=tracker)
    parent, kids = runs_of(tracking_uri)
    assert parent.info.status == "FAILED"
    assert "RuntimeError" in parent.data.tags["steplaw.stopped_by"]
    assert [k.info.status for k in sorted(kids, key=lambda r: r.info.start_time)] == [
        "FINISHED",
        "FINISHED",
        "FAILED",
    ]


def test_ctrl_c_ends_the_runs_killed(tmp_path, tracking_uri):
    calls = {"n": 0}

    def interrupted(lr, batch_size, scale):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return bowl(lr, batch_size, scale)

    tracker = MlflowTracker(tracking_uri)  # no context manager: tune() itself ends the runs
    with pytest.raises(KeyboardInterrupt):
        tune(TARGET, CallableObjective(interrupted), storage=":memory:", tracker=tracker)
    parent, kids = runs_of(tracking_uri)
    assert parent.info.status == "KILLED"
    assert sorted(k.info.status for k in kids) == ["FINISHED", "KILLED"]


def test_a_failed_trial_is_a_failed_nested_run_and_the_study_goes_on(tracking_uri):
    def sometimes(lr, batch_size, scale):
        if lr > LAW.lr_at(scale) * 1.2:
            raise TrialFailed("diverged")
        return bowl(lr, batch_size, scale)

    with MlflowTracker(tracking_uri) as tracker:
        result = tune(TARGET, CallableObjective(sometimes), storage=":memory:", seed=1,
                      tracker=tracker)  # fmt: skip
    parent, kids = runs_of(tracking_uri)
    failed = [k for k in kids if k.info.status == "FAILED"]
    assert parent.info.status == "FINISHED"
    assert len(failed) == result.n_failed >= 1
    assert {k.data.tags["steplaw.failure"] for k in failed} == {"diverged"}
    assert all("loss" not in k.data.metrics for k in failed)


def test_a_study_in_which_every_trial_failed_records_no_optimum(tracking_uri):
    """Nothing measured: the record says so plainly and logs no refined optimum (the law's
    point is a prior, not a result) — no refined.* metric or tag, no "Train with" note."""

    def broken(lr, batch_size, scale):
        raise TrialFailed("exit code 3: no GPU")

    with MlflowTracker(tracking_uri) as tracker:
        result = tune(TARGET, CallableObjective(broken), storage=":memory:", n_trials=3,
                      tracker=tracker)  # fmt: skip
    assert result.n_complete == 0 and result.n_failed == 3
    parent, kids = runs_of(tracking_uri)
    assert parent.info.status == "FINISHED" and len(kids) == 3
    tags, metrics = parent.data.tags, parent.data.metrics
    assert tags["steplaw.outcome"] == "no trial finished"
    assert "No trial finished" in tags["mlflow.note.content"]
    assert "Train with" not in tags["mlflow.note.content"]
    assert not [k for k in (*tags, *metrics) if k.startswith("refined.")], (tags, metrics)
    assert metrics["n_complete"] == 0 and metrics["n_failed"] == 3
    assert not any(p.startswith("plots/") for p in artifact_paths(tracking_uri, parent.info.run_id))


def test_the_tracker_is_an_optuna_callback(tracking_uri):
    from steplaw_opt.samplers import PlateauSampler

    sampler = PlateauSampler(TARGET, seed=0)
    study = optuna.create_study(sampler=sampler, study_name="own-loop")

    def objective(trial):
        lr = trial.suggest_float("lr", 1e-4, 3e-2, log=True)
        batch = trial.suggest_int("batch_size", 16, 2048, log=True)
        return bowl(lr, batch, TARGET)

    tracker = MlflowTracker(tracking_uri, experiment="mine", plots=False)
    study.optimize(objective, n_trials=4, callbacks=[tracker])
    tracker.finish()
    parent, kids = runs_of(tracking_uri, "mine")
    assert parent.info.run_name == "own-loop" and parent.info.status == "FINISHED"
    assert len(kids) == 4 and "refined.lr" in parent.data.metrics


def test_disabled_tracker_records_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tracker = MlflowTracker(enabled=False)
    result = tune(TARGET, CallableObjective(bowl), storage=":memory:", budget=0.2, tracker=tracker)
    assert result.extras["mlflow"] == {"enabled": False}
    assert list(tmp_path.iterdir()) == []


def test_tracking_uri_defaults_to_mlflows_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    import mlflow

    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", None)
    assert MlflowTracker().tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert MlflowTracker().tracking_uri == "http://127.0.0.1:1"
    assert MlflowTracker("sqlite:///x.db").tracking_uri == "sqlite:///x.db"


@pytest.mark.parametrize("uri", ["foo://x", "htp://127.0.0.1:5000"])
def test_a_tracking_uri_mlflow_cannot_use_is_an_input_error(uri):
    from steplaw_opt.errors import SteplawInputError

    with pytest.raises(SteplawInputError, match="tracking URI"):
        MlflowTracker(uri).open()


def test_a_dead_server_warns_once_and_costs_little():
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with MlflowTracker(uri) as tracker:
            result = tune(TARGET, CallableObjective(bowl), storage=":memory:", tracker=tracker)
    elapsed = time.perf_counter() - started
    ours = [w for w in caught if issubclass(w.category, TrackingWarning)]
    assert result.n_complete == 10
    assert 1 <= len(ours) <= 2, [str(w.message) for w in ours]  # the outage, the summary
    assert "the study goes on" in str(ours[0].message)
    assert result.extras["mlflow"]["run_id"] is None
    assert elapsed < 60


def test_importing_tracking_and_plots_does_not_import_mlflow_or_matplotlib():
    code = (
        "import sys, steplaw_opt, steplaw_opt.tracking, steplaw_opt.plots;"
        "print(','.join(m for m in ('mlflow', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# ------------------------------------------------------------------------------- real server
class Server:
    """A real ``mlflow server`` on 127.0.0.1 with a SQLite backend and a temporary artifact
    folder; stopped (its whole process group) in teardown."""

    def __init__(self, folder: Path, template: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        db = folder / "server.db"
        shutil.copy(template, db)
        mlflow_bin = Path(sys.executable).with_name("mlflow")
        command = [str(mlflow_bin) if mlflow_bin.exists() else "mlflow"]
        self.log = open(folder / "server.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*command, "server", "--backend-store-uri", f"sqlite:///{db}",
             "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def wait(self, timeout: float = 90) -> bool:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return True
            except OSError:
                time.sleep(0.5)
        return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


@pytest.fixture
def mlflow_server(tmp_path: Path, mlflow_template: Path):
    server = Server(tmp_path, mlflow_template)
    try:
        if not server.wait():
            log = (tmp_path / "server.log").read_text()[-2000:]
            message = f"mlflow server did not start on 127.0.0.1:{server.port}:\n{log}"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_a_real_tracking_server_records_the_study(tmp_path, mlflow_server):
    storage = f"sqlite:///{tmp_path}/s.db"
    with MlflowTracker(mlflow_server.url, experiment="served") as tracker:  # noqa: SIM117
        with pytest.raises(KeyboardInterrupt):
            tune(TARGET, CurveObjective(), storage=storage, seed=0, tracker=tracker,
                 callbacks=[_stop_after(4)])  # fmt: skip
    # Resume: the same parent run goes on.
    with MlflowTracker(mlflow_server.url, experiment="served") as tracker:
        result = tune(TARGET, CurveObjective(), storage=storage, seed=0, tracker=tracker)
    parent, kids = runs_of(mlflow_server.url, "served")
    assert result.extras["mlflow"]["run_id"] == parent.info.run_id
    assert parent.info.status == "FINISHED" and len(kids) == 10
    assert {k.info.status for k in kids} == {"FINISHED"}
    assert parent.data.metrics["refined.lr"] == pytest.approx(result.refined.lr)
    assert artifact_paths(mlflow_server.url, parent.info.run_id) >= {
        "law-card.toml",
        "trials.csv",
        "plots/landscape.png",
    }
    assert result.extras["mlflow"]["run_url"].startswith(mlflow_server.url)


@pytest.mark.slow
def test_the_server_stopped_mid_study_warns_and_the_study_finishes(mlflow_server):
    calls = {"n": 0}

    def stopping(lr, batch_size, scale):
        calls["n"] += 1
        if calls["n"] == 4:
            mlflow_server.stop()
        return bowl(lr, batch_size, scale)

    messages: list[str] = []
    tracker = MlflowTracker(mlflow_server.url, on_warning=messages.append)
    started = time.perf_counter()
    result = tune(TARGET, CallableObjective(stopping), storage=":memory:", tracker=tracker)
    assert result.n_complete == 10
    assert messages and "the study goes on" in messages[0]
    assert sum("the study goes on" in m for m in messages) == 1  # warned once
    assert result.extras["mlflow"]["run_id"] is not None  # the parent was made before
    assert not result.extras["mlflow"]["recorded"]
    assert time.perf_counter() - started < 90
