"""Hostile or broken input (issue 14): command templates and what a job writes back, values a
Python caller passes, passwords in URLs, paths read from MLflow, and the command a worker runs.

Each test here failed on the code before the fix: a format spec that crashed the first trial, a
temporary folder with a space or a ``;`` in its name, a binary metrics file, a 2 MB stderr line
stored whole, a tag with ``../`` that chose where ``report`` writes, a worker that ran whatever
the database said.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from steplaw_opt import Scale, SteplawInputError
from steplaw_opt._records import mask_url
from steplaw_opt.objectives import CallableObjective, CommandObjective, RunContext, TrialFailed
from tests.conftest import SHARED_DATA, run_cli
from tests.test_tracking import mlflow_template  # noqa: F401  (a fixture)

PY = sys.executable
SCALE = Scale(N=1e6, D=2e8, seq_len=512)
GRID = str(SHARED_DATA / "dense_lr_bs_loss.csv")


def run(template: str, **kw) -> float:
    return CommandObjective(template, **kw).run(3e-3, 64, SCALE, RunContext(trial_number=1))


# ------------------------------------------------------------------------------- templates
@pytest.mark.parametrize(
    "template",
    [
        "train {lr:d}",
        "train {batch_size:d}",
        "train {lr[0]}",
        "train {lr.real}",
        "train {lr!z}",
        "train {lr!r}",
        "train {lr:>99999999999}",
        "train {lr:>100000000}",
        "train {lr:.3}",
        "train {lr:{batch_size}}",
    ],
)
def test_a_placeholder_with_a_format_spec_is_refused_up_front(template):
    with pytest.raises(SteplawInputError) as info:
        CommandObjective(template)
    message = str(info.value)
    assert "\n" not in message and ("{lr" in message or "{batch_size" in message), message
    assert len(message) < 400


def test_numbers_are_not_quoted_and_paths_are():
    obj = CommandObjective("train --lr {lr} --bs {batch_size} --out {metrics_file}")
    command = obj.render(3e-3, 64, SCALE, 2, "/tmp/a b/metrics.json")
    assert command == "train --lr 0.003 --bs 64 --out '/tmp/a b/metrics.json'"


WRITE_LOSS = f"{PY} -c \"import sys; open(sys.argv[1], 'w').write('{{{{\\\"loss\\\": 1.5}}}}')\""


@pytest.mark.parametrize(
    "folder_name", ["with space", "semi;touch pwned;x", "it's", 'dq"$HOME`id`', "back\\slash"]
)
@pytest.mark.parametrize("form", ["bare", "single", "double"])
def test_a_hostile_temporary_folder_neither_breaks_nor_runs_anything(
    tmp_path, monkeypatch, folder_name, form
):
    """The metrics file lives in the temporary folder: its name must reach the job as one word,
    whether the template quotes the placeholder itself or not."""
    tmp_root = tmp_path / folder_name
    tmp_root.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_root))
    placeholder = {"bare": "{metrics_file}", "single": "'{metrics_file}'",
                   "double": '"{metrics_file}"'}[form]  # fmt: skip
    assert run(f"{WRITE_LOSS} {placeholder}", workdir=work) == 1.5
    assert list(work.iterdir()) == []  # no "pwned"
    assert sorted(p.name for p in tmp_root.iterdir()) == []  # the trial folder was removed


def test_quoting_in_a_temporary_folder_through_the_cli(tmp_path):
    tmp_root = tmp_path / "tmp dir;touch pwned"
    tmp_root.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp_root)}
    import subprocess

    r = subprocess.run(
        [PY, "-m", "steplaw_opt.cli", "tune", "--params", "1M", "--tokens", "2e8",
         "--command", f"{WRITE_LOSS} {{metrics_file}}", "--n-trials", "2", "--no-mlflow",
         "--json", "--storage", ":memory:"],
        capture_output=True, text=True, timeout=120, cwd=work, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["n_complete"] == 2
    assert list(work.iterdir()) == []


# ------------------------------------------------------------------------------- job output
def test_a_binary_metrics_file_is_a_failed_run_not_a_crash():
    code = "import sys; open(sys.argv[1], 'wb').write(bytes(range(256)) * 64)"
    with pytest.raises(TrialFailed) as info:
        run(f'{PY} -c "{code}" {{metrics_file}}')
    assert "no loss" in info.value.reason


def test_a_binary_metrics_file_falls_back_to_the_json_line():
    code = (
        "import sys; open(sys.argv[1], 'wb').write(b'\\xff\\xfe\\x00' * 1000); "
        "print('{{\\\"loss\\\": 2.25}}')"
    )
    assert run(f'{PY} -c "{code}" {{metrics_file}}') == 2.25


@pytest.mark.parametrize("kind", ["devzero", "fifo", "folder"])
def test_a_metrics_file_that_is_not_a_file_does_not_hang(kind):
    make = {
        "devzero": "ln -s /dev/zero {metrics_file}",
        "fifo": "mkfifo {metrics_file}",
        "folder": "mkdir {metrics_file}",
    }[kind]
    started = time.monotonic()
    with pytest.raises(TrialFailed):
        run(make, timeout=60)
    assert time.monotonic() - started < 15


def test_binary_stdout_is_read_and_the_loss_line_still_counts():
    code = (
        "import os, sys; os.write(1, os.urandom(300000).replace(b'\\n', b'x') + b'\\n'); "
        "sys.stdout.write('{{\\\"loss\\\": 1.75}}\\n')"
    )
    started = time.monotonic()
    assert run(f'{PY} -c "{code}"', timeout=60) == 1.75
    assert time.monotonic() - started < 15


@pytest.mark.parametrize(
    "line", ['{{"loss": 1e999}}', '{{"loss": ' + "9" * 400 + "}}", '{{"loss": "1e999"}}']
)
def test_an_overflowing_loss_is_a_failed_run(line):
    with pytest.raises(TrialFailed):
        run(f"echo '{line}'")


def test_a_2mb_stderr_line_is_cut_to_a_tail_quickly():
    code = "import sys; sys.stderr.write('x' * 2_000_000 + 'THE END\\n'); sys.exit(3)"
    started = time.monotonic()
    with pytest.raises(TrialFailed) as info:
        run(f'{PY} -c "{code}"', timeout=60)
    reason = info.value.reason
    assert time.monotonic() - started < 15
    assert reason.startswith("exit code 3")
    assert "THE END" in reason  # the tail is what a person needs
    assert len(reason) <= 4096


def test_a_huge_failure_reason_is_stored_cut(tmp_path):
    from steplaw_opt._records import ATTR_FAILURE
    from steplaw_opt.tune import tune

    code = "import sys; sys.stderr.write(('y' * 1000 + '\\n') * 3000); sys.exit(1)"
    storage = f"sqlite:///{tmp_path}/s.db"
    tune(Scale(N=1e6, D=2e8), CommandObjective(f'{PY} -c "{code}"'), n_trials=1,
         storage=storage, study_name="s")  # fmt: skip
    import optuna

    (trial,) = optuna.load_study(study_name="s", storage=storage).trials
    assert 0 < len(trial.user_attrs[ATTR_FAILURE]) <= 4096


def test_a_user_trial_failed_reason_is_cut():
    assert len(TrialFailed("z" * 10_000_000).reason) <= 4096


# ------------------------------------------------------------------------------- Python API
@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"env": {"A": 1}}, "env"),
        ({"env": {1: "x"}}, "env"),
        ({"env": ["A=1"]}, "env"),
        ({"env": {"A=B": "x"}}, "env"),
        ({"workdir": "/nonexistent/folder"}, "/nonexistent/folder"),
        ({"workdir": "/etc/hostname"}, "/etc/hostname"),
        ({"workdir": 5}, "workdir"),
        ({"timeout": True}, "timeout"),
    ],
)
def test_command_objective_options_are_checked_up_front(kw, needle):
    with pytest.raises(SteplawInputError) as info:
        CommandObjective("echo", **kw)
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("value", ["abc", None, [1.0], 1j, np.array([1.0, 2.0]), True, "3.2"])
def test_a_callable_returning_no_number_is_an_input_error(value):
    obj = CallableObjective(lambda lr, batch_size, scale: value)
    with pytest.raises(SteplawInputError) as info:
        obj.run(1e-3, 8, SCALE, RunContext())
    assert "\n" not in str(info.value) and "number" in str(info.value)


@pytest.mark.parametrize("value", [np.float32(2.5), np.float64(2.5), np.array(2.5), 2, 2.5])
def test_a_callable_returning_a_number_like_is_accepted(value):
    obj = CallableObjective(lambda lr, batch_size, scale: value)
    assert obj.run(1e-3, 8, SCALE, RunContext()) == pytest.approx(float(value))


def test_a_callable_returning_a_string_stops_tune_with_one_line():
    from steplaw_opt.tune import tune

    with pytest.raises(SteplawInputError):
        tune(Scale(N=1e9, D=1e11), CallableObjective(lambda lr, b, s: "x"), n_trials=1,
             storage=":memory:")  # fmt: skip


def test_numpy_integers_are_accepted_where_python_integers_are():
    from steplaw_opt import load_law

    s = Scale(N=np.int64(10**9), D=np.int64(10**11), seq_len=np.int64(2048))
    assert s.seq_len == 2048 and isinstance(s.seq_len, int)
    shaped = Scale(d_model=np.int32(64), d_ff=np.int64(256), n_layers=np.int64(2), D=1e9)
    assert shaped.N == 2 * (4 * 64 * 64 + 3 * 64 * 256)
    law = load_law("step-law")
    p = law.predict(s, round_batch=np.int64(64))
    assert p.batch_rounded_sequences % 64 == 0


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: Scale(N=10**400, D=1e11), "N"),
        (lambda: Scale(N=1e9, D=1e11, seq_len=np.float64(2048.5)), "seq_len"),
        (lambda: _law().predict(SCALE, round_batch=10**400), "rounding"),
        (lambda: _law().predict(SCALE, round_batch=True), "rounding"),
        (lambda: _law().predict(SCALE, round_batch=64.0), "rounding"),
        (lambda: _law().predict(SCALE, round_batch="POW2 "), "rounding"),
        (lambda: _space().bounds_uv((0.0, 1.0), (1.0, 2.0), SCALE), "lr"),
        (lambda: _space().bounds_uv(("a", 1.0), (1.0, 2.0), SCALE), "lr"),
        (lambda: _space().bounds_uv((1e-3, 1.0), (1.0,), SCALE), "batch"),
        (lambda: _space().to_uv(0.0, 8, SCALE), "lr"),
        (lambda: _space().to_uv(1e-3, -8, SCALE), "batch"),
    ],
)
def test_python_api_bad_values_are_one_line_input_errors(call, needle):
    with pytest.raises(SteplawInputError) as info:
        call()
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert len(str(info.value)) < 400  # a huge value is shown cut


def _law():
    from steplaw_opt import load_law

    return load_law("step-law")


def _space():
    from steplaw_opt.space import LawSpace

    return LawSpace(_law())


# ------------------------------------------------------------------------------- passwords
@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("postgresql://user:hunter2@db.example/steplaw", "hunter2"),
        ("postgresql+psycopg2://user:pa/ss@127.0.0.1:5432/db", "pa/ss"),
        ("postgresql://user:p@ss@127.0.0.1/db", "p@ss"),
        ("postgresql://user:a?b@127.0.0.1/db", "a?b"),
        ("postgresql://user@127.0.0.1/db?password=hunter2", "hunter2"),
        ("postgresql://user@127.0.0.1/db?sslmode=require&password=hun/ter", "hun/ter"),
        ("mysql://u@h/db?PASSWORD=Secret1&x=1", "Secret1"),
        ("http://user:tok/en@mlflow.local:5000", "tok/en"),
    ],
)
def test_mask_url_hides_every_password(url, secret):
    masked = mask_url(url)
    assert secret not in masked and "***" in masked, masked
    for part in secret.split("/"):
        assert part not in masked.split("//", 1)[1].split("@")[0] or len(part) < 3


def test_mask_url_keeps_what_has_no_password():
    plain = ("sqlite:///steplaw-opt.db", "sqlite:////tmp/a@b:c.db",
             "postgresql://steplaw@127.0.0.1:5432/steplaw", "http://127.0.0.1:5000")  # fmt: skip
    for url in plain:
        assert mask_url(url) == url


def test_a_password_with_a_slash_never_reaches_a_message(tmp_path):
    port = _free_port()
    url = f"postgresql+psycopg2://steplaw:se/cr?et@127.0.0.1:{port}/db"
    r = run_cli("tune", "--replay", GRID, "--params", "214663680", "--tokens", "1e11",
                "--no-mlflow", "--storage", url, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 2, r.stderr[-1000:]
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "se/cr" not in r.stderr and "cr?et" not in r.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------- report paths
@pytest.fixture
def hostile_run(tmp_path, mlflow_template):  # noqa: F811
    """An MLflow run whose study-name tag tries to climb out of the output folder."""
    import shutil

    from mlflow import MlflowClient

    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(mlflow_template, store / "mlflow.db")
    uri = f"sqlite:///{store}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("steplaw-opt", artifact_location=str(store / "artifacts"))
    name = "a/../../../escaped"
    run = client.create_run(exp, run_name=name, tags={"steplaw.study_name": name})
    png = store / "landscape.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    client.log_artifact(run.info.run_id, str(png), "plots")
    client.set_terminated(run.info.run_id)
    return uri, run.info.run_id


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.slow
def test_report_from_mlflow_writes_only_inside_its_folder(tmp_path, hostile_run):
    uri, run_id = hostile_run
    work = tmp_path / "x" / "y" / "work"
    work.mkdir(parents=True)
    before = _tree(tmp_path)
    r = run_cli("report", "--run-id", run_id, "--tracking-uri", uri, "--format", "json",
                cwd=work)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    new = _tree(tmp_path) - before
    assert new, "the plot was written somewhere"
    outside = [p for p in new if not p.startswith(("x/y/work/", "store/"))]
    assert outside == [], outside
    doc = json.loads(r.stdout)
    assert doc["plots"]
    for path in doc["plots"]:
        assert Path(work, path).resolve().is_relative_to(work.resolve()), path


@pytest.mark.slow  # end to end: the CLI in subprocesses
def test_report_from_a_study_keeps_its_folder_inside(tmp_path):
    from steplaw_opt.tune import tune

    storage = f"sqlite:///{tmp_path}/s.db"
    name = "a/../../../climb"
    tune(Scale(N=1e9, D=1e11), CallableObjective(lambda lr, b, s: 3.0 + math.log(lr) ** 2 / 100),
         n_trials=3, storage=storage, study_name=name)  # fmt: skip
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    r = run_cli("report", name, "--storage", storage, "--format", "json", cwd=work)
    assert r.returncode == 0, r.stderr[-2000:]
    for path in json.loads(r.stdout)["plots"]:
        assert Path(work, path).resolve().is_relative_to(work.resolve()), path
    assert not (tmp_path / "climb").exists()


# ------------------------------------------------------------------------------- the worker
def _made_study(folder: Path, command: str) -> str:
    storage = f"sqlite:///{folder / 'w.db'}"
    r = run_cli("tune", "--params", "1M", "--tokens", "2e8", "--command", command,
                "--n-trials", "1", "--storage", storage, "--study-name", "w", "--create-only",
                "--no-mlflow", cwd=folder)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return storage


def _rewrite_stored_command(db: Path, command: str) -> None:
    """What anyone who can write the database can do."""
    con = sqlite3.connect(db)
    (raw,) = con.execute(
        "select value_json from study_user_attributes where key = 'steplaw.config'"
    ).fetchone()
    doc = json.loads(json.loads(raw))
    doc["objective"]["command"] = command
    con.execute(
        "update study_user_attributes set value_json = ? where key = 'steplaw.config'",
        (json.dumps(json.dumps(doc)),),
    )
    con.commit()
    con.close()


@pytest.mark.slow  # end to end: the CLI in subprocesses
def test_a_worker_with_its_own_command_refuses_a_changed_study(tmp_path):
    honest = "echo '{{\"loss\": 1.0}}'"
    storage = _made_study(tmp_path, honest)
    _rewrite_stored_command(tmp_path / "w.db", "touch pwned; echo '{{\"loss\": 1.0}}'")
    r = run_cli("worker", "--storage", storage, "--study-name", "w", "--command", honest,
                "--no-mlflow", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 2, r.stderr[-1000:]
    assert len(r.stderr.strip().splitlines()) == 1 and "differs" in r.stderr, r.stderr
    assert not (tmp_path / "pwned").exists()


@pytest.mark.slow  # end to end: the CLI in subprocesses
def test_a_worker_with_the_same_command_runs(tmp_path):
    honest = "echo '{{\"loss\": 1.0}}'"
    storage = _made_study(tmp_path, honest)
    r = run_cli("worker", "--storage", storage, "--study-name", "w", "--command", honest,
                "--no-mlflow", "--json", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-1000:]
    assert json.loads(r.stdout)["n_complete"] == 1


# ------------------------------------------------------------------------------- huge plans
@pytest.mark.parametrize("kw", [{"budget": 1e9}, {"budget": 1e5}, {"n_trials": 10**10}])
def test_huge_budgets_and_trial_counts_are_refused_up_front(kw):
    from steplaw_opt.tune import plan_proxies

    with pytest.raises(SteplawInputError, match="a typo"):
        plan_proxies(Scale(N=1e9, D=1e11), kw.get("budget", 1.0), n_trials=kw.get("n_trials"))


def test_a_budget_that_plans_too_many_runs_is_refused() -> None:
    from steplaw_opt.tune import plan_proxies

    # 1e3 target-run equivalents of runs at 1/1024 of the tokens: about a million runs
    target = Scale(N=1e9, D=1e11)
    with pytest.raises(SteplawInputError, match=r"plans .* runs, more than 100,000"):
        plan_proxies(target, 1e3, fractions=(1 / 1024,))
    assert plan_proxies(target, 1e3, fractions=(1 / 1024,), n_trials=50).total_runs == 50
