"""optuna-dashboard reads a ``steplaw-opt tune`` study from the same storage (docs/dashboard.md):
a small real study made by the CLI (a command objective: three finished runs with intermediate
losses, one failed run), opened by optuna-dashboard's WSGI app in this process and by its real
server on 127.0.0.1; the study, its trials (state, lr, batch_size, loss, intermediate losses) and
the steplaw.* user attributes (numbers, strings, JSON strings, dicts) are what Optuna reads, and
a note written through the dashboard leaves the study readable by ``steplaw-opt report``."""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import optuna
import pytest

from tests.conftest import run_cli

# Slower: real studies, reports and figures (`-m 'not slow'` skips them).
pytestmark = pytest.mark.slow

NAME = "dashboard-study"
FAILS_AT = 2  # the trial number whose run fails

TRAIN = textwrap.dedent(
    f"""
    import json, math, sys
    lr, batch, number = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    if number == {FAILS_AT}:
        sys.exit("diverged: loss is nan")
    loss = 3 + (math.log(lr) + 6) ** 2 / 4 + (math.log(batch) - 3) ** 2 / 8
    print(json.dumps({{"step": 10, "loss": loss + 1.0}}))
    print(json.dumps({{"step": 20, "loss": loss + 0.5}}))
    print(json.dumps({{"loss": loss}}))
    """
)


def _need_dashboard() -> None:
    """optuna-dashboard is in the [test] extra: skipped without it locally, a failure in CI."""
    try:
        import optuna_dashboard  # noqa: F401
    except ImportError:
        message = "optuna-dashboard is not installed (pip install -e '.[test]')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def study_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished four-run study made by ``steplaw-opt tune`` in a SQLite file."""
    _need_dashboard()
    folder = tmp_path_factory.mktemp("dashboard")
    script = folder / "train.py"
    script.write_text(TRAIN)
    db = folder / "steplaw-opt.db"
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} "
    r = run_cli(
        "tune", "--command", command + "{lr} {batch_size} {trial_number}",
        "--params", "1e8", "--tokens", "2e9", "--n-trials", "4", "--seed", "0",
        "--storage", f"sqlite:///{db}", "--study-name", NAME, "--no-mlflow", "--json",
        cwd=folder,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    return db


def _url(db: Path) -> str:
    return f"sqlite:///{db}"


def _study(db: Path) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=NAME, storage=_url(db))


def _attr_as_dashboard_shows_it(value: Any) -> str:
    """optuna-dashboard shows a string as it is, a number with str(), anything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value)


def _check_study_summary(summaries: list[dict[str, Any]], study: optuna.Study) -> int:
    """The study is listed under its name with every user attribute; returns its id."""
    (mine,) = [s for s in summaries if s["study_name"] == NAME]
    shown = {a["key"]: a["value"] for a in mine["user_attrs"]}
    assert set(shown) == set(study.user_attrs)
    assert any(k.startswith("steplaw.target.") for k in shown)
    for key, value in study.user_attrs.items():
        assert shown[key] == _attr_as_dashboard_shows_it(value), key
    # the dict and the JSON string the study records read back whole
    assert json.loads(shown["steplaw.objective"]) == study.user_attrs["steplaw.objective"]
    assert json.loads(shown["steplaw.config"])["objective"]["kind"] == "command"
    assert mine["directions"] == ["minimize"]
    return mine["study_id"]


def _check_study_detail(detail: dict[str, Any], study: optuna.Study) -> None:
    """The dashboard's trials are Optuna's: state, lr and batch_size, loss, intermediate losses,
    user attributes; the best trial and the search space too."""
    trials = study.get_trials()
    assert detail["name"] == NAME
    assert [t["number"] for t in detail["trials"]] == [t.number for t in trials]
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 3 and states.count("FAIL") == 1
    assert trials[FAILS_AT].state.name == "FAIL"
    for shown, trial in zip(detail["trials"], trials, strict=True):
        assert shown["state"].upper() == trial.state.name
        params = {p["name"]: p["param_external_value"] for p in shown["params"]}
        assert set(params) == set(trial.params)
        if trial.state.name == "COMPLETE":
            assert set(params) == {"lr", "batch_size"}
            assert shown["values"] == trial.values
            steps = {v["step"]: v["value"] for v in shown["intermediate_values"]}
            assert steps == trial.intermediate_values and set(steps) == {10, 20}
        else:
            assert "values" not in shown and trial.values is None
        for name, value in trial.params.items():
            assert params[name] == str(value)
        attrs = {a["key"]: a["value"] for a in shown["user_attrs"]}
        assert attrs == {k: _attr_as_dashboard_shows_it(v) for k, v in trial.user_attrs.items()}
    assert "steplaw.failure" in trials[FAILS_AT].user_attrs
    assert [t["number"] for t in detail["best_trials"]] == [study.best_trial.number]
    space = {p["name"]: p["distribution"]["type"] for p in detail["union_search_space"]}
    assert space == {"lr": "FloatDistribution", "batch_size": "IntDistribution"}
    user_attr_keys = {a["key"] for a in detail["union_user_attrs"]}
    assert {"steplaw.slot", "steplaw.N", "steplaw.D", "steplaw.owner"} <= user_attr_keys
    assert detail["has_intermediate_values"] is True


def _check_csv(text: str, study: optuna.Study) -> None:
    header, *rows = text.strip().splitlines()
    assert header.startswith("Number,State,")
    assert "Param lr" in header and "Param batch_size" in header
    assert "UserAttribute steplaw.slot" in header
    assert len(rows) == len(study.get_trials())


def _snapshot(db: Path) -> list[tuple[Any, ...]]:
    return [
        (t.number, t.state.name, t.params, t.values, t.user_attrs, t.intermediate_values)
        for t in _study(db).get_trials()
    ]


# ------------------------------------------------------------------ the WSGI app, in process
def _call(app: Any, path: str, method: str = "GET", body: Any = None) -> tuple[int, bytes]:
    """One request to a WSGI app, without a socket."""
    from wsgiref.util import setup_testing_defaults

    data = b"" if body is None else json.dumps(body).encode()
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(data)),
        "wsgi.input": io.BytesIO(data),
    }
    setup_testing_defaults(environ)
    status: list[str] = []
    chunks = app(environ, lambda s, headers, exc_info=None: status.append(s))
    out = b"".join(chunks)
    return int(status[0].split()[0]), out


def _check_api(get: Any, study: Any) -> int:
    """The dashboard's study list, study page and CSV export (``get(path) -> (code, body)``)
    against what Optuna reads; the study's id in the dashboard."""
    code, body = get("/api/studies")
    assert code == 200, body[:500]
    study_id = _check_study_summary(json.loads(body)["study_summaries"], study)
    code, body = get(f"/api/studies/{study_id}")
    assert code == 200, body[:500]
    _check_study_detail(json.loads(body), study)
    code, body = get(f"/csv/{study_id}")
    assert code == 200
    _check_csv(body.decode(), study)
    return study_id


def test_the_dashboard_app_reads_a_tune_study(study_db: Path, tmp_path: Path) -> None:
    import optuna_dashboard

    db = tmp_path / "copy.db"  # this test writes a note: its own copy of the study
    shutil.copy(study_db, db)
    study = _study(db)
    before = _snapshot(db)
    app = optuna_dashboard.wsgi(_url(db))
    study_id = _check_api(lambda path: _call(app, path), study)
    assert _snapshot(db) == before  # reading changed nothing

    # The dashboard writes notes (the study's system attributes): steplaw-opt still reads it.
    code, body = _call(app, f"/api/studies/{study_id}/note", "PUT",
                       {"version": 1, "body": "lr looks flat above 1e-3"})  # fmt: skip
    assert code == 204, body[:500]
    trial_id = json.loads(_call(app, f"/api/studies/{study_id}")[1])["trials"][0]["trial_id"]
    code, body = _call(app, f"/api/studies/{study_id}/{trial_id}/note", "PUT",
                       {"version": 1, "body": "first run"})  # fmt: skip
    assert code == 204, body[:500]
    assert optuna_dashboard.get_note(_study(db)) == "lr looks flat above 1e-3"
    assert _snapshot(db) == before
    r = run_cli("report", NAME, "--storage", _url(db), "--format", "json", "--no-plots",
                cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["study_name"] == NAME


# ------------------------------------------------------------------ the real server, 127.0.0.1
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Straight to 127.0.0.1, whatever HTTP_PROXY says.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with _OPENER.open(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _dashboard_command() -> list[str]:
    script = Path(sys.executable).with_name("optuna-dashboard")
    if script.exists():
        return [str(script)]
    found = shutil.which("optuna-dashboard")
    if found is None:
        pytest.fail("optuna-dashboard is importable but its command is not on PATH")
    return [found]


@pytest.mark.slow
def test_optuna_dashboard_serves_the_study_on_localhost(study_db: Path, tmp_path: Path) -> None:
    study = _study(study_db)
    before = _snapshot(study_db)
    port = _free_port()
    log = tmp_path / "dashboard.log"
    with log.open("wb") as out:
        # wsgiref: one process, nothing written outside tmp_path (gunicorn keeps a control
        # socket in ~/.gunicorn); the command the docs show, with the same storage URL.
        server = subprocess.Popen(
            [*_dashboard_command(), _url(study_db), "--host", "127.0.0.1", "--port", str(port),
             "--server", "wsgiref", "--quiet"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp_path,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, log.read_text()[-2000:]
            try:
                code, _ = _get(port, "/api/meta")
                if code == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "no answer in 30 s: " + log.read_text()[-2000:]
            time.sleep(0.2)
        study_id = _check_api(lambda path: _get(port, path), study)
        code, body = _get(port, f"/dashboard/studies/{study_id}")  # the page a browser opens
        assert code == 200 and b"<html" in body.lower()
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
    assert _snapshot(study_db) == before  # serving it changed nothing
