"""The Slurm recipe (examples/slurm/, docs/workers.md "On a Slurm cluster"): the array script is
valid bash with its #SBATCH header where sbatch reads it; every ``steplaw-opt`` command in the
script, the docs section and the example's README parses with the real CLI (``tune`` commands
also plan with ``--dry-run``) and they name one study; and the script, run by bash outside Slurm
with the variables an array task gets, is a real worker on a study made by ``tune
--create-only``: it runs the plan, refuses a study that stores another command, and on SIGTERM
fails its trial "interrupted" and exits 143."""

from __future__ import annotations

import itertools
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli
from tests.test_nanogpt_recipe import console_commands

SCRIPT = REPO / "examples" / "slurm" / "workers.sbatch"
README = REPO / "examples" / "slurm" / "README.md"
SECTION = (REPO / "docs" / "workers.md").read_text(encoding="utf-8")
SECTION = SECTION.split("\n## On a Slurm cluster\n", 1)[1].split("\n## ", 1)[0]

# What the script's shell words stand for when the tests parse its command line.
STORAGE, STUDY, TEMPLATE = "postgresql://tuner@db-host:5432/steplaw", "llm-1b3", "python t.py {lr}"
WORDS = {
    "$STEPLAW_STORAGE": [STORAGE],
    "$STEPLAW_STUDY": [STUDY],
    "${own_command[@]+${own_command[@]}}": ["--command", TEMPLATE],
    "$@": ["--no-mlflow"],
}


def _lines(text: str) -> list[str]:
    """The script's lines with continuations joined."""
    return text.replace("\\\n", " ").splitlines()


def _header(text: str) -> dict[str, str]:
    """The #SBATCH options sbatch reads: those before the first command line."""
    options: dict[str, str] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            break
        if stripped.startswith("#SBATCH"):
            name, _, value = stripped.removeprefix("#SBATCH").strip().partition("=")
            options[name] = value
    return options


def script_commands() -> list[list[str]]:
    """The script's ``steplaw-opt …`` command lines, its shell variables filled in."""
    out = []
    for line in _lines(SCRIPT.read_text(encoding="utf-8")):
        if line.lstrip().startswith("#") or "steplaw-opt " not in line:
            continue
        words = shlex.split(line)
        if "steplaw-opt" not in words:
            continue  # a message naming it
        argv: list[str] = []
        for word in words[words.index("steplaw-opt") :]:
            if "$" in word:
                assert word in WORDS, f"the test does not know what {word} stands for"
                argv.extend(WORDS[word])
            else:
                argv.append(word)
        out.append(argv)
    return out


def doc_commands() -> list[list[str]]:
    return console_commands(SECTION) + console_commands(README.read_text(encoding="utf-8"))


def _exports(text: str) -> dict[str, str]:
    """The variables the ``$ export …`` lines of a page's console blocks set."""
    env: dict[str, str] = {}
    for block in re.findall(r"```console\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith("$ export "):
                env.update(w.split("=", 1) for w in shlex.split(line[len("$ export ") :]))
    return env


def _parse(argv: list[str]) -> None:
    """Parse a command line against the real typer app, as ``steplaw-opt`` would, without
    running it: unknown options, bad values and missing required options raise."""
    import typer.main

    from steplaw_opt.cli import app

    assert argv[0] == "steplaw-opt"
    group = typer.main.get_command(app)
    command = group.commands[argv[1]]  # type: ignore[attr-defined]
    command.make_context(argv[1], list(argv[2:]))


# ------------------------------------------------------------------ static checks
def test_the_script_is_valid_bash() -> None:
    r = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def test_the_sbatch_header_is_read_by_sbatch_and_asks_for_an_orderly_stop() -> None:
    text = SCRIPT.read_text(encoding="utf-8")
    options = _header(text)
    # every #SBATCH line is in the header (sbatch ignores those after the first command)
    assert len(options) == text.count("\n#SBATCH ")
    assert text.startswith("#!/bin/bash\n")
    assert options["--array"] == "0-7"
    assert "%A_%a" in options["--output"]  # one log per array task
    signal_at = re.fullmatch(r"B:TERM@(\d+)", options["--signal"])
    assert signal_at, "SIGTERM to the batch shell (the worker), before the time limit"
    grace = re.search(r'STEPLAW_STOP_GRACE="\$\{STEPLAW_STOP_GRACE:-(\d+)\}"', text)
    assert grace and int(grace.group(1)) < 30  # Slurm's default KillWait
    assert int(signal_at.group(1)) > int(grace.group(1)) + 60  # Slurm may signal 60 s early
    assert re.search(r"^exec steplaw-opt worker ", text, flags=re.M), "exec: signals reach it"


def test_every_command_in_the_script_and_the_docs_parses() -> None:
    commands = script_commands() + doc_commands()
    assert [argv[1] for argv in script_commands()] == ["worker"]
    assert {argv[1] for argv in doc_commands()} == {"tune", "report"}
    for argv in commands:
        _parse(argv)


def test_the_tune_commands_plan(capsys) -> None:
    from steplaw_opt.cli import main

    tunes = [argv for argv in doc_commands() if argv[1] == "tune"]
    assert len(tunes) == 2
    for argv in tunes:
        assert "--create-only" in argv
        with pytest.raises(SystemExit) as info:
            main([*argv[1:], "--dry-run"])
        assert info.value.code == 0, capsys.readouterr().err


def test_a_bad_option_does_not_parse() -> None:  # the check above can fail
    with pytest.raises(Exception, match="no-such-option"):
        _parse(["steplaw-opt", "worker", "--storage", STORAGE, "--study-name", STUDY,
                "--no-such-option"])  # fmt: skip
    with pytest.raises(Exception, match=r"study.name"):
        _parse(["steplaw-opt", "worker", "--storage", STORAGE])


@pytest.mark.parametrize("page", ["docs/workers.md", "examples/slurm/README.md"])
def test_each_page_names_one_study_and_the_worker_runs_its_command(page: str) -> None:
    text = SECTION if page == "docs/workers.md" else (REPO / page).read_text(encoding="utf-8")
    env = _exports(text)
    assert {"STEPLAW_STORAGE", "STEPLAW_STUDY", "STEPLAW_COMMAND"} <= set(env)
    script = SCRIPT.read_text(encoding="utf-8")
    assert all(f"${{{name}" in script or f"${name}" in script for name in env)
    (tune,) = [argv for argv in console_commands(text) if argv[1] == "tune"]
    (report,) = [argv for argv in console_commands(text) if argv[1] == "report"]
    flags = dict(itertools.pairwise(tune))
    assert flags["--storage"] == env["STEPLAW_STORAGE"]
    assert flags["--study-name"] == env["STEPLAW_STUDY"]
    assert flags["--command"] == env["STEPLAW_COMMAND"]  # else the worker refuses the study
    assert report[2] == env["STEPLAW_STUDY"]
    assert dict(itertools.pairwise(report))["--storage"] == env["STEPLAW_STORAGE"]
    assert "examples/slurm/workers.sbatch" in text


# ------------------------------------------------------------------ the script as a worker
# A training job: writes its pid, sleeps, prints its loss as a last JSON line.
TRAIN = textwrap.dedent(
    """
    import json, math, os, sys, time
    lr, batch, seconds = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    with open(sys.argv[4], "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(seconds)
    print(json.dumps({"loss": 3 + (math.log(lr) + 6) ** 2 / 4 + (math.log(batch) - 3) ** 2 / 8}))
    """
)


def _study(tmp_path: Path, seconds: float, n_trials: int) -> tuple[str, str]:
    """A study made by ``tune --create-only`` in SQLite: its URL and command template."""
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    pids = tmp_path / "jobs.pid"
    template = " ".join(
        [shlex.quote(sys.executable), shlex.quote(str(script)), "{lr}", "{batch_size}",
         str(seconds), shlex.quote(str(pids))]
    )  # fmt: skip
    url = f"sqlite:///{tmp_path / 'study.db'}"
    r = run_cli("tune", "--command", template, "--params", "1e8", "--tokens", "2e9",
                "--n-trials", str(n_trials), "--storage", url, "--study-name", "slurm",
                "--create-only", "--no-mlflow", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    return url, template


def _task_env(url: str, template: str, **extra: str) -> dict[str, str]:
    """What an array task's environment has: the recipe's variables and Slurm's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "STEPLAW_"))}
    venv = Path(sys.prefix)
    if (venv / "bin" / "activate").exists():
        env["STEPLAW_VENV"] = str(venv)  # the script activates it, as on a cluster
    else:
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        STEPLAW_STORAGE=url, STEPLAW_STUDY="slurm", STEPLAW_COMMAND=template,
        SLURM_JOB_ID="4242", SLURM_ARRAY_JOB_ID="4240", SLURM_ARRAY_TASK_ID="2",
        SLURM_ARRAY_TASK_COUNT="8", SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_MAX="7",
        SLURM_JOB_NAME="steplaw-workers", SLURMD_NODENAME="node01", **extra,
    )  # fmt: skip
    return env


def _trials(url: str) -> list:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name="slurm", storage=url).get_trials()


@pytest.mark.slow
def test_the_script_runs_a_worker_outside_slurm(tmp_path: Path) -> None:
    url, template = _study(tmp_path, seconds=0, n_trials=3)
    # another command than the study stores: refused in one line before anything runs
    other = _task_env(url, template + " --extra")
    r = subprocess.run(["bash", str(SCRIPT), "--no-mlflow"], env=other, cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "--command" in r.stderr, r.stderr
    assert _trials(url) == []
    r = subprocess.run(["bash", str(SCRIPT), "--no-mlflow"], env=_task_env(url, template),
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "task 4240_2 of job 4242" in r.stdout and "study slurm" in r.stdout
    assert "worker done" in r.stdout
    trials = _trials(url)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert sorted(t.user_attrs["steplaw.slot"] for t in trials) == [0, 1, 2]
    assert all(t.user_attrs["steplaw.note.command"].startswith(shlex.quote(sys.executable))
               for t in trials)  # fmt: skip


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _stop_mid_run(tmp_path: Path, also_the_job: bool) -> tuple[int, list, str]:
    """Start the script, wait until its job runs, SIGTERM the worker (the batch shell, as
    --signal=B:TERM and scancel --batch do) or the worker and its job at once (as the time
    limit and a plain scancel do): (exit code, trials, stderr)."""
    url, template = _study(tmp_path, seconds=120, n_trials=2)
    pids = tmp_path / "jobs.pid"
    env = _task_env(url, template, STEPLAW_STOP_GRACE="2")
    err = tmp_path / "worker.err"
    with err.open("w") as stderr:
        proc = subprocess.Popen(["bash", str(SCRIPT), "--no-mlflow"], env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=stderr)  # fmt: skip
    job = None
    try:
        deadline = time.monotonic() + 60
        while job is None:
            assert proc.poll() is None, err.read_text()[-2000:]
            assert time.monotonic() < deadline, "the job never started"
            if pids.exists() and pids.read_text().strip():
                job = int(pids.read_text().split()[0])
            time.sleep(0.1)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)  # exec: the bash process is the worker
        if also_the_job:
            os.kill(job, signal.SIGTERM)
        code = proc.wait(30)
        deadline = time.monotonic() + 10
        while _alive(job) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(job), "the training job outlived its worker"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if job is not None and _alive(job):
            os.kill(job, signal.SIGKILL)
    return code, _trials(url), err.read_text()


@pytest.mark.slow
def test_sigterm_to_the_batch_shell_fails_the_trial_interrupted(tmp_path: Path) -> None:
    code, trials, err = _stop_mid_run(tmp_path, also_the_job=False)
    assert code == 143, err[-2000:]
    assert [t.state.name for t in trials] == ["FAIL"]
    assert trials[0].user_attrs["steplaw.failure"] == "interrupted"
    assert trials[0].user_attrs["steplaw.interrupted_by"] == "SIGTERM"


@pytest.mark.slow
def test_sigterm_to_every_process_of_the_job_fails_the_trial_interrupted(tmp_path: Path) -> None:
    code, trials, err = _stop_mid_run(tmp_path, also_the_job=True)
    assert code == 143, err[-2000:]
    assert [t.state.name for t in trials] == ["FAIL"]
    assert trials[0].user_attrs["steplaw.failure"] == "interrupted"
