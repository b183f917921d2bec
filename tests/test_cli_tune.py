"""``steplaw-opt tune`` end to end on the replayed grids and on a command template."""

from __future__ import annotations

import json
import shutil
import sys

import optuna
import pytest

from tests.conftest import run_cli
from tests.test_tracking import mlflow_template  # noqa: F401

# End to end: the CLI in subprocesses, real files and servers (`-m 'not slow'` skips them).
pytestmark = pytest.mark.slow

N, D = "214663680", "1e11"


@pytest.fixture
def grid(steplaw_data):
    return str(steplaw_data / "dense_lr_bs_loss.csv")


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, grid):
    url = f"sqlite:///{tmp_path}/s.db"
    r = run_cli(
        "tune",
        "--params",
        N,
        "--tokens",
        D,
        "--replay",
        grid,
        "--dry-run",
        "--json",
        "--storage",
        url,
    )
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)["plan"]
    assert plan["runs"] == 13 and plan["compute"] <= 1.0
    assert not (tmp_path / "s.db").exists()


def test_replay_tune_json_and_resume(tmp_path, grid):
    url = f"sqlite:///{tmp_path}/s.db"
    args = [
        "tune",
        "--params",
        N,
        "--tokens",
        D,
        "--replay",
        grid,
        "--storage",
        url,
        "--seed",
        "0",
        "--json",
        "--round-batch",
        "pow2",
        "--no-mlflow",
    ]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["n_complete"] == 13 and doc["compute_spent"] == pytest.approx(0.988)
    opt = doc["refined_optimum"]
    assert opt["batch_sequences_rounded"] in (256, 512, 1024)
    assert opt["lr_interval_95"][0] < opt["lr"] < opt["lr_interval_95"][1]
    # The same command again finds the study complete: nothing more runs.
    again = json.loads(run_cli(*args).stdout)
    assert again["n_complete"] == 13
    study = optuna.load_study(study_name=doc["study_name"], storage=url)
    assert len(study.trials) == 13


def test_human_output(tmp_path, grid):
    r = run_cli(
        "tune",
        "--params",
        N,
        "--tokens",
        D,
        "--replay",
        grid,
        "--storage",
        f"sqlite:///{tmp_path}/h.db",
        "--n-trials",
        "4",
        "--no-mlflow",
    )
    assert r.returncode == 0, r.stderr
    assert "Proxy plan" in r.stdout and "Refined optimum at the target" in r.stdout
    assert "Recorded in study" in r.stdout
    assert "MLflow" not in r.stdout


def test_mlflow_record_and_where_it_is(tmp_path, grid, mlflow_template):  # noqa: F811
    shutil.copy(mlflow_template, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = [
        "tune",
        "--params",
        N,
        "--tokens",
        D,
        "--replay",
        grid,
        "--storage",
        f"sqlite:///{tmp_path}/m.db",
        "--n-trials",
        "3",
        "--tracking-uri",
        uri,
        "--experiment",
        "cli",
    ]
    r = run_cli(*args, "--json")
    assert r.returncode == 0, r.stderr
    where = json.loads(r.stdout)["mlflow"]
    assert where["experiment"] == "cli" and where["nested_runs"] == 3 and where["recorded"]
    human = run_cli(*args)  # resumes: the same parent run
    assert human.returncode == 0, human.stderr
    assert f"MLflow: run {where['run_id']}" in " ".join(human.stdout.split())
    assert "mlflow ui --backend-store-uri" in human.stdout


def test_mlflow_defaults_on_and_a_bad_tracking_uri_stops_before_any_run(tmp_path, grid):
    r = run_cli(
        "tune",
        "--params",
        N,
        "--tokens",
        D,
        "--replay",
        grid,
        "--storage",
        f"sqlite:///{tmp_path}/b.db",
        "--tracking-uri",
        "foo://nowhere",
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "foo://nowhere" in r.stderr
    assert not (tmp_path / "b.db").exists()


def test_command_template_with_failures(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        "import json, math, sys\n"
        "lr, b = float(sys.argv[1]), float(sys.argv[2])\n"
        "if lr > 5e-3:\n"
        "    sys.exit('diverged: loss is nan')\n"
        "print(json.dumps({'step': 1, 'loss': 9.0}))\n"
        "print(json.dumps({'loss': 3 + math.log(lr / 2e-3) ** 2 + math.log(b / 200) ** 2}))\n"
    )
    r = run_cli(
        "tune",
        "--params",
        "400M",
        "--tokens",
        "40B",
        "--command",
        f"{sys.executable} {script} {{lr}} {{batch_size}}",
        "--storage",
        f"sqlite:///{tmp_path}/c.db",
        "--json",
        "--n-trials",
        "6",
        "--seed",
        "1",
        "--no-mlflow",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["n_complete"] >= 4


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--params", "1B", "--tokens", "1T"], "exactly one of"),
        (["--params", "1B", "--tokens", "1T", "--command", "x", "--builtin"], "exactly one of"),
        (["--params", "1B", "--command", "echo"], "--tokens"),
        (["--params", "1B", "--tokens", "1T", "--command", "run {learning_rate}"], "learning_rate"),
        (["--params", "1B", "--tokens", "1T", "--command", "x", "--budget", "-1"], "budget"),
        (
            ["--params", "1B", "--tokens", "1T", "--command", "x", "--budget", "0.001"],
            "buys no run",
        ),
        (["--params", "1B", "--tokens", "1T", "--replay", "/no/grid.csv"], "/no/grid.csv"),
        (["--params", "1B", "--tokens", "1T", "--command", "x", "--sampler", "magic"], "magic"),
        (["--params", "1B", "--tokens", "1T", "--command", "x", "--batch-unit", "bytes"], "bytes"),
        (["--params", "-1", "--tokens", "1T", "--command", "x"], "'-1'"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, needle, tmp_path):
    r = run_cli("tune", *args, "--storage", f"sqlite:///{tmp_path}/bad.db", "--no-mlflow")
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr


def test_bench_proxy_mode_json():
    r = run_cli(
        "bench", "--proxy", "--seeds", "1", "--budgets", "0.5", "--prior", "published",
        "--target-runs", "1", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)["summary"]
    assert len(summary) == 1 and summary[0]["targets"] == 5 and summary[0]["target_runs"] == 1
    assert 0 < summary[0]["compute"] <= 0.5
    # One target run only: with no proxy run it is the law's own point.
    assert summary[0]["target_only"] == pytest.approx(summary[0]["law"])
    # The one run after the proxies goes to the pooled optimum: on these grids, with the
    # published prior, its measured loss is never worse than the law's point's. (On the
    # noise-free surfaces it is: 0.065 % against 0.042 % — the bench reports it, docs/bench.md.)
    assert summary[0]["proxies"] <= summary[0]["law"] + 1e-9
    assert {"law_surfaces", "refined_surfaces", "gap_refined_gp", "cover95_lr"} <= set(summary[0])


def test_refit_law_closes_the_loop(tmp_path, grid):
    card = tmp_path / "refined.toml"
    r = run_cli(
        "tune",
        "--params",
        N,
        "--tokens",
        D,
        "--replay",
        grid,
        "--no-mlflow",
        "--storage",
        f"sqlite:///{tmp_path}/r.db",
        "--seed",
        "0",
        "--refit-law",
        str(card),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["refit_law"]["path"] == str(card) and card.exists()
    p = run_cli("predict", "--params", N, "--tokens", D, "--law", str(card), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["lr"] == pytest.approx(doc["refit_law"]["lr"], rel=1e-9)


def test_bench_proxy_with_target_runs_keeps_the_best_target_run():
    r = run_cli(
        "bench", "--proxy", "--seeds", "1", "--budgets", "1", "--prior", "published",
        "--target-runs", "0,2", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    runs = json.loads(r.stdout)["runs"]
    assert {row["target_runs"] for row in runs} == {0, 2}
    assert all(0 < row["compute"] <= 1.0 for row in runs)  # proxy compute only
    for row in runs:
        if row["target_runs"] == 0:  # no target run: the refined optimum is the answer
            assert row["gap"] == row["gap_refined"]
            assert row["gap_target_only"] == row["gap_law"]
        else:  # the best of two target runs, the first at the law's point: never worse
            assert row["gap_target_only"] <= row["gap_law"] + 1e-12
    for bad in ("-1", "one"):
        out = run_cli("bench", "--proxy", "--target-runs", bad)
        assert out.returncode == 2 and "--target-runs" in out.stderr


def test_drift_flag_is_stored_in_the_study_and_used(tmp_path, grid):
    url = f"sqlite:///{tmp_path}/s.db"
    base = ["tune", "--params", N, "--tokens", D, "--replay", grid, "--storage", url,
            "--seed", "0", "--json", "--no-mlflow", "--budget", "0.5"]  # fmt: skip
    plain = json.loads(run_cli(*base, "--study-name", "plain", "--no-drift").stdout)
    r = run_cli(*base, "--study-name", "drift")  # on by default
    assert r.returncode == 0, r.stderr
    drifting = json.loads(r.stdout)
    study = optuna.load_study(study_name="drift", storage=url)
    assert json.loads(study.user_attrs["steplaw.config"])["drift"] is True
    # proxies at three D of one N: the drift terms change the refined optimum, not the plan
    assert drifting["n_complete"] == plain["n_complete"]
    assert drifting["refined_optimum"]["lr"] != plain["refined_optimum"]["lr"]
