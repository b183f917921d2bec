"""Figures for many workers on one PostgreSQL study (issue 9).

    python scripts/workers_bench.py postgresql+psycopg2://user@host:port/db

1. The replay objective (released grid), target N=214663680 D=1e11, 40 planned runs:
   1 worker × 40 trials, then 4 workers × 10 trials each — completed count, near-duplicate
   (lr, batch) pairs at one scale (both within the sampler's repeat radius, 0.3 in ln), wall
   time from the workers' start to the last exit, trials/s.
2. The same plan with a command objective sleeping 0.5 s per run, 1 vs 4 workers (runs that
   take time, where workers pay off).
3. The same plan with a command objective that sleeps 1.5 s per run (so a kill lands
   mid-trial), MLflow on (a temporary SQLite store), 4 workers, one SIGKILLed mid-trial: the
   dead trial, its retry (same lr, batch, scale), the completed count and MLflow runs left
   RUNNING.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

from steplaw_opt.samplers import PlateauSampler

REPO = Path(__file__).resolve().parents[1]
GRID = Path(os.environ.get("STEPLAW_DATA", REPO.parent / "shared" / "data" / "steplaw"))
TARGET = ["--params", "214663680", "--tokens", "1e11", "--budget", "5", "--n-trials", "40"]
# The sampler's own repeat radius: two runs closer than this in both ln lr and ln batch repeat.
FINE = float(inspect.signature(PlateauSampler).parameters["resolution"].default)
FAKE_TRAIN = """
import json, math, sys, time
lr, batch = float(sys.argv[1]), float(sys.argv[2])
time.sleep(float(sys.argv[3]))
print(json.dumps({"loss": 3 + (math.log(lr) + 5) ** 2 / 4 + (math.log(batch) - 5) ** 2 / 8}))
"""


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "steplaw_opt.cli", *args]


def create(url: str, name: str, *extra: str, cwd: Path = REPO) -> None:
    subprocess.run(
        cli("tune", *TARGET, "--storage", url, "--study-name", name, "--create-only",
            "--heartbeat-interval", "2", "--seed", "0", *extra),
        check=True, capture_output=True, cwd=cwd,
    )  # fmt: skip


def workers(url: str, name: str, n: int, *extra: str, cwd: Path = REPO) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(
            cli("worker", "--storage", url, "--study-name", name, *extra),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=cwd,
        )
        for _ in range(n)
    ]


def summary(url: str, name: str) -> dict:
    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    done = [t for t in trials if t.state.name == "COMPLETE"]
    pts = [
        (math.log(t.params["lr"]), math.log(t.params["batch_size"]), t.user_attrs["steplaw.D"])
        for t in done
    ]
    dups = sum(
        1
        for i in range(len(pts))
        for j in range(i)
        if pts[i][2] == pts[j][2]
        and abs(pts[i][0] - pts[j][0]) < FINE
        and abs(pts[i][1] - pts[j][1]) < FINE
    )
    exact = len(pts) - len({(round(a, 9), round(b, 9), d) for a, b, d in pts})
    slots = sorted(t.user_attrs["steplaw.slot"] for t in done)
    return {
        "complete": len(done),
        "states": {
            s: sum(t.state.name == s for t in trials) for s in {t.state.name for t in trials}
        },
        "near_duplicate_pairs": dups,
        "exact_duplicates": exact,
        "each_slot_once": slots == list(range(40)),
        "best_loss": min(t.value for t in done),
    }


def replay_run(url: str, n_workers: int) -> dict:
    name = f"bench-replay-{n_workers}w-{time.time_ns()}"
    create(url, name, "--replay", str(GRID / "dense_lr_bs_loss.csv"), "--no-mlflow")
    started = time.perf_counter()
    procs = workers(url, name, n_workers, "--no-mlflow")
    codes = [p.wait(300) for p in procs]
    wall = time.perf_counter() - started
    out = summary(url, name)
    out.update(workers=n_workers, exit_codes=codes, wall_s=round(wall, 2),
               trials_per_s=round(out["complete"] / wall, 2))  # fmt: skip
    return out


def sleep_run(url: str, n_workers: int, seconds: float = 0.5) -> dict:
    """Runs that take time (a command sleeping ``seconds``): where many workers pay off."""
    tmp = Path(tempfile.mkdtemp(prefix="steplaw-sleep-"))
    (tmp / "fake_train.py").write_text(FAKE_TRAIN)
    name = f"bench-sleep-{n_workers}w-{time.time_ns()}"
    command = f"{sys.executable} {tmp / 'fake_train.py'} {{lr}} {{batch_size}} {seconds}"
    create(url, name, "--command", command, "--no-mlflow", cwd=tmp)
    started = time.perf_counter()
    codes = [p.wait(600) for p in workers(url, name, n_workers, "--no-mlflow", cwd=tmp)]
    wall = time.perf_counter() - started
    out = summary(url, name)
    out.update(workers=n_workers, run_seconds=seconds, exit_codes=codes, wall_s=round(wall, 2),
               trials_per_s=round(out["complete"] / wall, 2))  # fmt: skip
    return out


def kill_run(url: str) -> dict:
    from mlflow import MlflowClient

    tmp = Path(tempfile.mkdtemp(prefix="steplaw-kill-"))
    (tmp / "fake_train.py").write_text(FAKE_TRAIN)
    tracking = f"sqlite:///{tmp / 'mlflow.db'}"
    name = f"bench-kill-{time.time_ns()}"
    command = f"{sys.executable} {tmp / 'fake_train.py'} {{lr}} {{batch_size}} 1.5"
    create(url, name, "--command", command, "--tracking-uri", tracking, cwd=tmp)
    procs = workers(url, name, 4, cwd=tmp)
    study = optuna.load_study(study_name=name, storage=url)
    while True:  # all four busy for a while, some trials done: worker 0 is mid-run
        trials = study.get_trials()
        now = time.time()
        running = [
            t
            for t in trials
            if t.state.name == "RUNNING"
            and "batch_size" in t.params
            and now - t.datetime_start.timestamp() > 0.2
        ]
        if len(running) == 4 and sum(t.state.name == "COMPLETE" for t in trials) >= 8:
            break
        time.sleep(0.02)
    procs[0].send_signal(signal.SIGKILL)
    codes = [p.wait(300) for p in procs]
    out = summary(url, name)
    trials = study.get_trials()
    dead = [t for t in trials if t.state.name == "FAIL" and "steplaw.failure" not in t.user_attrs]
    retries = [t for t in trials if t.system_attrs.get("failed_trial") in {d.number for d in dead}]
    same = all(
        r.params == d.params
        and all(r.user_attrs[k] == d.user_attrs[k] for k in ("steplaw.slot", "steplaw.D"))
        for d in dead
        for r in retries
        if r.system_attrs.get("failed_trial") == d.number
    )
    client = MlflowClient(tracking_uri=tracking)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    out.update(
        exit_codes=codes,
        dead_trials=[(d.number, sorted(d.params)) for d in dead],
        retries=[(r.number, r.state.name) for r in retries],
        retry_same_params_and_scale=same,
        mlflow_runs=len(runs),
        mlflow_running=sum(r.info.status == "RUNNING" for r in runs),
        mlflow_dead_run_status=[r.info.status for r in runs
                                if r.info.run_name in {f"trial-{d.number}" for d in dead}],
    )  # fmt: skip
    return out


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    url = args[0] if args else os.environ["STEPLAW_TEST_POSTGRES_URL"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    only_kill = "--kill-only" in sys.argv
    for n in () if only_kill else (1, 4):
        print(json.dumps({"replay": replay_run(url, n)}), flush=True)
    for n in () if only_kill else (1, 4):
        print(json.dumps({"sleep_0.5s": sleep_run(url, n)}), flush=True)
    print(json.dumps({"sigkill": kill_run(url)}), flush=True)


if __name__ == "__main__":
    main()
