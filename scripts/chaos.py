"""The chaos run (issue 14): workers killed at random on a real PostgreSQL, which restarts once.

    STEPLAW_TEST_POSTGRES_URL=postgresql+psycopg2://… STEPLAW_TEST_PG_RESTART='pg_ctl … restart' \\
        python scripts/chaos.py [--workers 4] [--trials 40] [--seed 0] [--time-limit 240]

A study of ``--trials`` planned runs (target N=214663680 D=1e11) with a command objective (a
tiny Python job that sleeps 0.3–0.8 s and prints a loss; a job whose worker died runs on, as
a real one would, for 10 minutes) is created with ``tune --create-only``
(heartbeats every second, MLflow in a throwaway SQLite store), and ``--workers`` workers run it.
Every 2–4 s one of them, at random (mostly one in the middle of a run), gets SIGKILL or
SIGTERM and is started again (at most two are down at a time, so the study goes on however slow
a start is); once, when a third of the runs are done, PostgreSQL restarts
(``STEPLAW_TEST_PG_RESTART``, a shell command). ``--no-kills``: the same study undisturbed.

It checks, and exits 1 naming what broke: the study reaches ``--trials`` complete runs, one per
planned slot (no slot run twice), no trial left RUNNING or WAITING, the compute of the runs that
count within the budget, no MLflow run left RUNNING, no job process left alive, no worker ended
in a traceback, none still running 20 s after its SIGTERM (it gets SIGABRT, and ``-X
faulthandler`` prints its threads' stacks to its log); and it prints
its figures (wall time, kills, worker exits, lost and interrupted trials, retries).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# SIGTERM to exit: the job's grace period (STEPLAW_STOP_GRACE, 2 s here) and a storage write or
# two; longer is a stop that hangs
STOP_LIMIT = 20.0
TARGET = ["--params", "214663680", "--tokens", "1e11"]
JOB = """
import json, math, os, random, sys, time

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

def worker():  # the steplaw-opt process that started this job (through its shell)
    pid = os.getppid()
    for _ in range(3):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"steplaw_opt.cli" in f.read():
                    return pid
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            return None
    return None

lr, batch, pids = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
with open(pids, "a") as f:
    f.write(f"{os.getpid()}\\n")
me, end = worker(), time.time() + random.uniform(0.3, 0.8)
while time.time() < end:
    time.sleep(0.05)
    if me is not None and not alive(me):  # its worker died: a real job would run on for hours
        me, end = None, time.time() + 600
print(json.dumps({"loss": 3 + (math.log(lr) + 5) ** 2 / 4 + (math.log(batch) - 5) ** 2 / 8}))
"""


def cli(*args: str) -> list[str]:
    # -X faulthandler: a worker that does not stop after SIGTERM gets SIGABRT, which prints
    # where each of its threads is to its log
    return [sys.executable, "-X", "faulthandler", "-m", "steplaw_opt.cli", *args]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def running_jobs(workers: set[int]) -> set[int]:
    """The workers (pids) whose job is running now: those with a child or grandchild whose
    command line names the job script."""
    parent: dict[int, int] = {}
    jobs = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"job.py" in f.read():
                    jobs.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    busy = set()
    for pid in jobs:
        for _ in range(3):
            pid = parent.get(pid, 0)
            if pid in workers:
                busy.add(pid)
                break
    return busy


def crash_lines(logs: Path) -> list[str]:
    """The last line of each worker log that ends in a traceback (a worker that crashed)."""
    out = []
    for log in sorted(logs.glob("worker-*.log")):
        text = log.read_text(errors="replace")
        if "Traceback" in text:
            lines = text.strip().splitlines()
            frames = [
                ln.strip()
                for ln in lines
                if ln.strip().startswith('File "') and "steplaw_opt" in ln
            ]
            where = frames[-1].split("steplaw_opt/")[-1] if frames else "?"
            out.append(f"{log.name}: {lines[-1][:120]} (at {where})")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default=os.environ.get("STEPLAW_TEST_POSTGRES_URL"))
    parser.add_argument("--pg-restart", default=os.environ.get("STEPLAW_TEST_PG_RESTART"))
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, default=240.0)
    parser.add_argument("--no-kills", action="store_true", help="the baseline: no kill, no restart")
    parser.add_argument("--keep", action="store_true", help="keep its files when it passes")
    args = parser.parse_args()
    if not args.storage:
        print("chaos: give --storage or STEPLAW_TEST_POSTGRES_URL", file=sys.stderr)
        return 2
    import optuna
    from mlflow import MlflowClient

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="steplaw-chaos-"))
    job, pids = tmp / "job.py", tmp / "pids.txt"
    job.write_text(JOB)
    tracking = f"sqlite:///{tmp / 'mlflow.db'}"
    MlflowClient(tracking_uri=tracking).search_experiments()  # its tables, once, before anyone
    name = f"chaos-{os.getpid()}-{time.time_ns()}"
    budget = "5"
    env = {**os.environ, "STEPLAW_STOP_GRACE": "2", "PYTHONUNBUFFERED": "1"}
    command = f"{sys.executable} {job} {{lr}} {{batch_size}} {pids}"
    create = subprocess.run(
        cli("tune", *TARGET, "--command", command, "--budget", budget, "--n-trials",
            str(args.trials), "--storage", args.storage, "--study-name", name, "--create-only",
            "--heartbeat-interval", "1", "--seed", str(args.seed), "--tracking-uri", tracking),
        capture_output=True, text=True, timeout=120, cwd=tmp, env=env,
    )  # fmt: skip
    if create.returncode != 0:
        print(create.stderr, file=sys.stderr)
        return 1
    study = optuna.load_study(study_name=name, storage=args.storage)
    logs = tmp / "logs"
    logs.mkdir()
    started = 0

    def start() -> subprocess.Popen[bytes]:
        nonlocal started
        started += 1
        log = open(logs / f"worker-{started}.log", "wb")  # noqa: SIM115 - closed with the run
        return subprocess.Popen(
            cli("worker", "--storage", args.storage, "--study-name", name),
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp, env=env,
        )  # fmt: skip

    def complete() -> int:
        try:
            return sum(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False))
        except Exception:  # PostgreSQL restarting
            return -1

    t0 = time.monotonic()
    workers = [start() for _ in range(args.workers)]
    born = [t0] * args.workers
    reached: set[int] = set()  # pids of the workers seen running a trial
    stopping: dict[int, float] = {}  # pid → when it was sent SIGTERM
    stop_seconds: list[float] = []  # SIGTERM to exit
    hung: list[int] = []  # workers that did not exit STOP_LIMIT s after SIGTERM
    kill_times: list[float] = []
    kills: Counter[str] = Counter()
    exits: Counter[int] = Counter()
    restart_at, restarted, restart_seconds = max(1, args.trials // 3), False, None
    next_kill = due = t0 + rng.uniform(2.0, 4.0)
    want_running = rng.random() < 0.7  # the next kill: mostly a worker in the middle of a run
    done = False
    while time.monotonic() - t0 < args.time_limit:
        n = complete()
        done = n >= args.trials
        for i, w in enumerate(workers):
            if w is not None and w.poll() is not None:
                exits[w.returncode] += 1
                if w.pid in stopping:
                    stop_seconds.append(time.monotonic() - stopping.pop(w.pid))
                # one killed near the end starts again too: it ends the record and exits 0
                workers[i] = None if w.returncode == 0 else start()
                born[i] = time.monotonic()
        if done and all(w is None for w in workers):
            break
        if not restarted and n >= restart_at and args.pg_restart and not args.no_kills:
            began = time.monotonic()
            subprocess.run(args.pg_restart, shell=True, check=True, timeout=60,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            restart_seconds, restarted = time.monotonic() - began, True
            print(f"chaos: PostgreSQL restarted at {n} complete runs ({restart_seconds:.1f} s)")
        now = time.monotonic()
        for pid, when in list(stopping.items()):
            if now - when > STOP_LIMIT and pid not in hung:
                hung.append(pid)
                os.kill(pid, signal.SIGABRT)  # its threads' stacks go to its log
        live = {w.pid: i for i, w in enumerate(workers) if w is not None and w.poll() is None}
        busy = running_jobs(set(live))
        reached |= busy | {p for p, i in live.items() if now - born[i] > 15.0}
        if not done and not args.no_kills and now >= next_kill:
            ready = (reached & set(live)) - set(stopping)
            # At most two workers down at a time: the next kill waits until all but one of
            # those killed before have started again and run a trial (a start takes seconds;
            # more at once would only stall the study). Then mostly one in the middle of a run
            # (the kill that costs something), else one that waits or chooses.
            pool: list[int] = []
            if len(ready) >= len(workers) - 1:
                idle, running = ready - busy, busy & ready
                if running and (want_running or not idle):
                    pool = sorted(running)
                elif not want_running or now > due + 2.0:
                    pool = sorted(idle)  # (else wait a little: a job runs a third of the time)
            if pool:
                pid = rng.choice(pool)
                sig = rng.choice([signal.SIGKILL, signal.SIGTERM])
                workers[live[pid]].send_signal(sig)  # type: ignore[union-attr]
                kills[sig.name] += 1
                kills["mid-run"] += pid in busy
                kill_times.append(now)
                if sig == signal.SIGTERM:
                    stopping[pid] = now
                next_kill = due = now + rng.uniform(2.0, 4.0)
                want_running = rng.random() < 0.7
            else:
                next_kill = now + 0.1
        time.sleep(0.1)
    wall = time.monotonic() - t0
    for w in workers:  # the time limit: whatever still runs is a failure, stop it
        if w is not None and w.poll() is None:
            w.kill()
            w.wait()
            exits[-9] += 1

    problems = []
    crashes = crash_lines(logs)
    if crashes:
        problems.append(f"{len(crashes)} workers ended in a traceback: {crashes}")
    if hung:
        problems.append(f"{len(hung)} workers did not stop within {STOP_LIMIT:g} s of SIGTERM "
                        "(SIGABRT: their stacks are in their logs)")  # fmt: skip
    if not done:
        problems.append(f"the study did not reach {args.trials} complete runs in {wall:.0f} s")
    trials = optuna.load_study(study_name=name, storage=args.storage).get_trials()
    state = Counter(t.state.name for t in trials)
    final = [  # the runs that settle a slot: complete, or failed for a reason of their own
        t
        for t in trials
        if t.state.name == "COMPLETE"
        or (
            t.state.name == "FAIL"
            and t.user_attrs.get("steplaw.failure") not in (None, "interrupted")
        )
    ]
    slots = Counter(t.user_attrs.get("steplaw.slot") for t in final)
    twice = sorted(s for s, c in slots.items() if c > 1)
    if twice:
        problems.append(f"slots run twice: {twice}")
    if sorted(slots) != list(range(args.trials)):
        problems.append(f"{args.trials - len(slots)} slots not run")
    left = [t.number for t in trials if not t.state.is_finished()]
    if left:
        problems.append(f"trials left {state['RUNNING']} RUNNING / {state['WAITING']} WAITING")
        for t in trials:  # what a reader of a failed CI log needs to tell why
            if not t.state.is_finished():
                attrs = {k: v for k, v in t.user_attrs.items() if not k.startswith("steplaw.note")}
                print(f"chaos: unfinished trial {t.number} (id {t._trial_id}) {t.state.name} "
                      f"since {t.datetime_start}: {json.dumps(attrs, default=str)} "
                      f"system {json.dumps(t.system_attrs, default=str)[:300]}",
                      file=sys.stderr)  # fmt: skip
    spent = sum(t.user_attrs.get("steplaw.compute", 0.0) for t in final)
    lost_runs = [t for t in trials if t.state.name == "FAIL" and t not in final and t.params]
    lost_compute = sum(t.user_attrs.get("steplaw.compute", 0.0) for t in lost_runs)
    if spent > float(budget) + 1e-9:
        problems.append(f"the runs that count cost {spent:.3f} > budget {budget}")
    client = MlflowClient(tracking_uri=tracking)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              max_results=5000)  # fmt: skip
    mlflow_running = [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    if mlflow_running:
        problems.append(f"MLflow runs left RUNNING: {mlflow_running}")
    job_pids = [int(p) for p in pids.read_text().split()] if pids.exists() else []
    deadline = time.monotonic() + 5  # a job stopped by its watchdog gets the grace period
    while time.monotonic() < deadline and any(alive(p) for p in job_pids):
        time.sleep(0.1)
    orphans = [p for p in job_pids if alive(p)]
    for p in orphans:
        os.kill(p, signal.SIGKILL)
    if orphans:
        problems.append(f"job processes left alive: {orphans}")

    figures = {
        "wall_seconds": round(wall, 1),
        "workers": args.workers,
        "planned": args.trials,
        "complete": state["COMPLETE"],
        "kills": dict(kills),
        "worker_starts": started,
        "worker_exits": {str(k): v for k, v in sorted(exits.items())},
        "trials": len(trials),
        "states": dict(state),
        "lost": sum(
            t.state.name == "FAIL" and "steplaw.failure" not in t.user_attrs for t in trials
        ),
        "interrupted": sum(t.user_attrs.get("steplaw.failure") == "interrupted" for t in trials),
        "retries": sum("failed_trial" in t.system_attrs for t in trials),
        "retries_complete": sum(
            "failed_trial" in t.system_attrs and t.state.name == "COMPLETE" for t in trials
        ),
        "pg_restart_seconds": None if restart_seconds is None else round(restart_seconds, 1),
        "sigterm_to_exit_seconds_max": round(max(stop_seconds), 1) if stop_seconds else None,
        "seconds_between_kills": round((kill_times[-1] - kill_times[0]) / (len(kill_times) - 1), 1)
        if len(kill_times) > 1
        else None,
        "budget": float(budget),
        "compute_counted": round(spent, 4),
        "compute_lost_to_kills": round(lost_compute, 4),
        "mlflow_runs": len(runs),
        "mlflow_running": len(mlflow_running),
        "jobs_started": len(job_pids),
        "jobs_left_alive": len(orphans),
        "crashes": crashes,
    }
    print("chaos: " + json.dumps(figures))
    if problems:
        print("chaos: FAILED: " + "; ".join(problems), file=sys.stderr)
        print(f"chaos: worker logs in {logs}", file=sys.stderr)
        return 1
    print(
        f"chaos: passed in {wall:.0f} s: {state['COMPLETE']}/{args.trials} complete, one per "
        f"slot, {kills['SIGKILL'] + kills['SIGTERM']} kills ({kills['SIGKILL']} SIGKILL, "
        f"{kills['SIGTERM']} SIGTERM, {kills['mid-run']} mid-run), {figures['retries']} "
        "retries, PostgreSQL restarted "
        f"{'once' if restarted else 'never (no STEPLAW_TEST_PG_RESTART)'}, nothing left "
        "RUNNING, no job left alive"
    )
    if args.keep:
        print(f"chaos: files kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
