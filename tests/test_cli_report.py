"""``steplaw-opt report``: from the study (refitted, plots redrawn) or from its MLflow run."""

from __future__ import annotations

import json
import shutil

import pytest

from steplaw_opt.objectives import CallableObjective
from steplaw_opt.tracking import MlflowTracker
from steplaw_opt.tune import tune
from tests.conftest import run_cli
from tests.test_tracking import TARGET, bowl, mlflow_template  # noqa: F401

# End to end: the CLI in subprocesses, real files and servers (`-m 'not slow'` skips them).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, mlflow_template):  # noqa: F811
    """A study in SQLite, recorded in a local MLflow database (made once for the module)."""
    folder = tmp_path_factory.mktemp("report")
    shutil.copy(mlflow_template, folder / "mlflow.db")
    tracking_uri = f"sqlite:///{folder}/mlflow.db"
    storage = f"sqlite:///{folder}/s.db"
    # MLflow puts a new SQLite store's artifacts in ./mlruns of the working folder: this one.
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        with MlflowTracker(tracking_uri, plots=True) as tracker:
            result = tune(TARGET, CallableObjective(bowl), storage=storage, budget=0.5, seed=0,
                          tracker=tracker)  # fmt: skip
    return result, storage, tracking_uri


def test_report_from_the_study_json_and_plots(tmp_path, tuned):
    result, storage, _ = tuned
    out = tmp_path / "plots"
    r = run_cli("report", result.study_name, "--storage", storage, "--format", "json",
                "--out", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["refined_optimum"]["lr"] == pytest.approx(result.refined.lr)
    assert len(doc["trials"]) == result.n_complete + result.n_failed
    assert doc["mlflow"]["run_id"] == result.extras["mlflow"]["run_id"]
    assert sorted(p.name for p in out.iterdir()) == ["convergence.png", "landscape.png", "uv.png"]


def test_report_markdown(tuned, tmp_path):
    result, storage, _ = tuned
    r = run_cli("report", result.study_name, "--storage", storage, "--format", "markdown",
                "--no-plots")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"# {result.study_name}")
    assert "| learning rate |" in r.stdout and "| trial | state |" in r.stdout
    assert r.stdout.count("| COMPLETE |") == result.n_complete


def test_report_prints_the_optimum_as_tune_does(tuned):
    """lr to three significant digits as tune prints it, the batch as whole sequences, and a
    predicted loss that says why it is missing (only proxy runs: no loss at the target)."""
    result, storage, _ = tuned
    r = run_cli("report", result.study_name, "--storage", storage, "--no-plots")
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert f"{result.refined.lr:.3g}" in text
    assert f"{result.refined.batch_sequences_rounded:,.0f}" in text
    if result.refined.predicted_loss is None:
        assert "no run at the target scale" in text
    else:
        assert f"{result.refined.predicted_loss:.4f}" in text


def test_report_from_the_mlflow_run(tuned, tmp_path):
    result, _, uri = tuned
    out = tmp_path / "from-run"
    r = run_cli("report", "--run-id", result.extras["mlflow"]["run_id"], "--tracking-uri", uri,
                "--format", "json", "--out", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    opt = doc["refined_optimum"]
    assert opt["lr"] == pytest.approx(result.refined.lr)
    assert opt["lr_interval_95"] == pytest.approx(list(result.refined.lr_interval_95))
    assert opt["notes"] == list(result.refined.notes)  # tune's notes, from the run's tag
    assert len(doc["trials"]) == result.n_complete
    assert doc["mlflow"]["status"] == "FINISHED"
    assert (out / "landscape.png").stat().st_size > 0
    text = run_cli("report", "--run-id", result.extras["mlflow"]["run_id"], "--tracking-uri", uri,
                   "--no-plots")  # fmt: skip
    assert text.returncode == 0 and "Refined optimum" in text.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["nosuch"], "no study 'nosuch'"),
        ([], "STUDY name"),
        (["x", "--run-id", "abc"], "not both"),
        (["x", "--format", "html"], "--format"),
        (["x", "--storage", "sqlite:////no/such.db"], "no such study database"),
    ],
)
def test_bad_input_exits_2_with_one_line(tuned, args, needle):
    _, storage, _ = tuned
    if "--storage" not in args:
        args = [*args, "--storage", storage]
    r = run_cli("report", *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr


def test_unknown_run_id_exits_2(tuned):
    _, _, uri = tuned
    r = run_cli("report", "--run-id", "0" * 32, "--tracking-uri", uri)
    assert r.returncode == 2 and "no MLflow run" in r.stderr


def test_report_says_when_the_rounded_batch_lies_outside_its_interval(tuned):
    """A --round-batch whose multiple lies past the batch's 95 % interval: the same note as tune
    prints (the refined optimum's), under the table, in text and Markdown."""
    result, storage, _ = tuned
    hi = result.refined.batch_tokens_interval_95[1] / result.refined.seq_len
    k = int(2 * hi) + 1  # the nearest positive multiple of k is k itself: outside
    args = ("report", result.study_name, "--storage", storage, "--no-plots", "--round-batch")
    r = run_cli(*args, str(k))
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert f"note: the rounded batch {k} lies outside the batch's 95 % interval" in text
    assert max(len(line) for line in r.stdout.splitlines()) <= 80  # piped: 80 columns
    md = run_cli(*args, str(k), "--format", "markdown")
    assert f"- note: the rounded batch {k} lies outside" in md.stdout
    plain = run_cli(*args[:-1])
    assert plain.returncode == 0 and "lies outside" not in plain.stdout
