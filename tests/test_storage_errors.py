"""Storage and tracking faults (issue 14): every way a study database or an MLflow server can
be wrong is one line with exit code 2, within a bounded time, and leaves nothing behind — no
empty study, no ``mlflow.db``, no database file made by a typo.

Faults are real: a tmpfs of 64 KiB for a full disk and a read-only tmpfs for a read-only folder
(both need root to mount, as in CI), a closed port and a listening socket that never answers on
127.0.0.1 for servers that are down or hung, and the PostgreSQL server ``.ci/run`` starts.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA, run_cli

# End to end: the CLI in subprocesses, real files and servers (`-m 'not slow'` skips them).
pytestmark = pytest.mark.slow

GRID = str(SHARED_DATA / "dense_lr_bs_loss.csv")
REPLAY = ["tune", "--replay", GRID, "--params", "214663680", "--tokens", "1e11"]
BOUND = 30.0  # seconds: the longest a command may take to give up on a silent server


def one_line_exit_2(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout[-800:], r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A socket on 127.0.0.1 that accepts connections and never says a word."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = server.accept()
                held.append(conn)  # kept open, never answered

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=2)
        for conn in held:
            conn.close()
        server.close()


@contextlib.contextmanager
def tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """A real tmpfs mounted at ``folder`` (root only; skipped elsewhere, failed in CI)."""
    folder.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode != 0:
        message = f"cannot mount a tmpfs here ({r.stderr.strip()}): needs root"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


# ------------------------------------------------------------------------------- bad storages
def _not_sqlite(d: Path) -> str:
    (d / "notes.db").write_text("these are my notes, not a database\n")
    return f"sqlite:///{d / 'notes.db'}"


def _random_bytes(d: Path) -> str:
    (d / "r.db").write_bytes(os.urandom(8192))
    return f"sqlite:///{d / 'r.db'}"


def _corrupted(d: Path) -> str:
    """A real study database whose pages past the first were overwritten."""
    from steplaw_opt import Scale
    from steplaw_opt.objectives import CallableObjective
    from steplaw_opt.tune import tune

    url = f"sqlite:///{d / 'c.db'}"
    tune(Scale(N=214663680, D=1e11), CallableObjective(lambda lr, b, s: 3.0), n_trials=3,
         storage=url, study_name="c")  # fmt: skip
    size = (d / "c.db").stat().st_size
    with open(d / "c.db", "r+b") as f:
        f.seek(4096)
        f.write(os.urandom(size - 4096))
    return url


def _foreign_sqlite(d: Path, tables: tuple[str, ...] = ("invoices",)) -> str:
    con = sqlite3.connect(d / "app.db")
    for table in tables:
        con.execute(f"create table {table} (id integer, amount real)")
    con.commit()
    con.close()
    return f"sqlite:///{d / 'app.db'}"


STORAGES = [
    ("malformed", lambda d: "sqlite:/one-slash.db", "not a URL"),
    ("not-a-url", lambda d: "steplaw-opt.db", "not a URL"),
    ("unknown-kind", lambda d: "bogus://host/db", "'bogus'"),
    ("missing-driver", lambda d: "mysql://u@127.0.0.1:1/db", "not installed"),
    ("folder", lambda d: f"sqlite:///{d}", "is a folder"),
    ("not-sqlite", _not_sqlite, "not an SQLite database"),
    ("random-bytes", _random_bytes, "not an SQLite database"),
    ("corrupted", _corrupted, "corrupted"),
    ("another-programs-db", _foreign_sqlite, "another program's"),
    ("an-mlflow-db", lambda d: _foreign_sqlite(d, ("alembic_version", "experiments", "runs")),
     "another program's"),
    ("missing-folder", lambda d: f"sqlite:///{d / 'no' / 'such.db'}", "does not exist"),
    ("refused-postgres", lambda d: f"postgresql+psycopg2://u@127.0.0.1:{free_port()}/db",
     "refused"),
    ("refused-postgres-plain", lambda d: f"postgresql://u@127.0.0.1:{free_port()}/db", "refused"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("make", "needle"), [c[1:] for c in STORAGES], ids=[c[0] for c in STORAGES]
)
def test_a_bad_storage_is_one_line_and_leaves_nothing(tmp_path, make, needle):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    url = make(inputs)
    before = sorted(p.name for p in inputs.iterdir())
    sizes = {p.name: p.stat().st_size for p in inputs.iterdir() if p.is_file()}
    work = tmp_path / "work"
    work.mkdir()
    started = time.monotonic()
    r = run_cli(*REPLAY, "--storage", url, cwd=work)
    line = one_line_exit_2(r)
    assert needle in line, line
    assert time.monotonic() - started < BOUND
    assert list(work.iterdir()) == []
    assert sorted(p.name for p in inputs.iterdir()) == before  # nothing made beside it
    assert {p.name: p.stat().st_size for p in inputs.iterdir() if p.is_file()} == sizes


@pytest.mark.slow
def test_a_postgres_server_that_never_answers_is_one_line_in_bounded_time(tmp_path):
    with silent_server() as port:
        started = time.monotonic()
        r = run_cli(*REPLAY, "--no-mlflow", "--storage", f"postgresql://u@127.0.0.1:{port}/db",
                    cwd=tmp_path)  # fmt: skip
        elapsed = time.monotonic() - started
    line = one_line_exit_2(r)
    assert "timeout" in line.lower(), line
    assert elapsed < BOUND, elapsed


def test_a_read_only_working_folder_is_one_line(tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=64k") as folder:
        r = run_cli(*REPLAY, cwd=folder)
        line = one_line_exit_2(r)
        assert "read-only" in line, line
        assert list(folder.iterdir()) == []


@pytest.mark.parametrize("mlflow", [False, True], ids=["no-mlflow", "mlflow"])
def test_a_full_disk_is_one_line_and_leaves_no_database(tmp_path, mlflow):
    with tmpfs(tmp_path / "full", "size=64k") as folder:
        r = run_cli(*REPLAY, *([] if mlflow else ["--no-mlflow"]), cwd=folder)
        line = one_line_exit_2(r)
        assert "full" in line, line
        assert list(folder.iterdir()) == [], list(folder.iterdir())


@pytest.mark.parametrize("storage", ["new-file", "existing-file", "in-memory"])
def test_a_full_output_folder_with_the_storage_elsewhere_leaves_nothing(tmp_path, storage):
    """The study database lives elsewhere, the working folder (where MLflow puts mlflow.db) is
    full: one line, no half-made mlflow.db, and neither the study nor the database file this
    run made is left (a database that was there keeps what it held, and only that)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    url = {"new-file": f"sqlite:///{elsewhere / 's.db'}", "existing-file": _existing(elsewhere),
           "in-memory": ":memory:"}[storage]  # fmt: skip
    before = sorted(p.name for p in elsewhere.iterdir())
    with tmpfs(tmp_path / "full", "size=64k") as folder:
        r = run_cli(*REPLAY, "--storage", url, "--n-trials", "3", cwd=folder)
        line = one_line_exit_2(r)
        assert "full" in line and "mlflow" in line.lower(), line
        assert list(folder.iterdir()) == [], list(folder.iterdir())
    assert sorted(p.name for p in elsewhere.iterdir()) == before
    if storage == "existing-file":
        import optuna

        assert optuna.get_all_study_names(url) == ["theirs"]


def _existing(d: Path) -> str:
    import optuna

    url = f"sqlite:///{d / 'shared.db'}"
    optuna.create_study(study_name="theirs", storage=url).enqueue_trial({"x": 1})
    return url


# ------------------------------------------------------------------------------- races
def _refuse_init(monkeypatch, before=None) -> None:
    """Make Optuna's RDBStorage fail to set up its database (as a full disk would), after
    running ``before`` (what another process does meanwhile)."""
    import optuna
    import sqlalchemy.exc

    def refused(self, *args, **kwargs):
        if before is not None:
            before()
        raise sqlalchemy.exc.OperationalError("PRAGMA", {}, Exception("disk I/O error"))

    monkeypatch.setattr(optuna.storages.RDBStorage, "__init__", refused)


def test_a_new_database_whose_setup_fails_is_removed(tmp_path, monkeypatch):
    import optuna

    from steplaw_opt.errors import SteplawInputError
    from steplaw_opt.tune._study import make_storage

    _refuse_init(monkeypatch)
    with pytest.raises(SteplawInputError, match="disk I/O error"):
        make_storage(optuna, f"sqlite:///{tmp_path / 's.db'}", None)
    assert list(tmp_path.iterdir()) == []


def test_a_database_another_process_created_meanwhile_is_not_removed(tmp_path, monkeypatch):
    """Another process (not holding the folder lock: a worker elsewhere, a script) creates the
    database between this process's look and its own creation; this one then fails: the other
    process's database stays."""
    import optuna

    from steplaw_opt.errors import SteplawInputError
    from steplaw_opt.tune import _study

    url = f"sqlite:///{tmp_path / 's.db'}"
    real = _study.check_sqlite_file
    theirs = f"import optuna; optuna.create_study(study_name='theirs', storage={url!r})"

    def look_then_race(u, path, *, create):
        real(u, path, create=create)
        subprocess.run([sys.executable, "-c", theirs], check=True, timeout=60)

    monkeypatch.setattr(_study, "check_sqlite_file", look_then_race)
    _refuse_init(monkeypatch)
    with pytest.raises(SteplawInputError, match="disk I/O error"):
        _study.make_storage(optuna, url, None)
    monkeypatch.undo()
    assert optuna.get_all_study_names(url) == ["theirs"]


def test_a_new_database_another_process_opened_is_not_removed(tmp_path, monkeypatch):
    """This process created the file; while it sets it up, another process opens it and
    writes; this one then fails: the file is the other's too and stays."""
    import optuna

    from steplaw_opt.errors import SteplawInputError
    from steplaw_opt.tune._study import make_storage

    path = tmp_path / "s.db"
    other: list[subprocess.Popen[str]] = []
    opener = ("import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1]); "
              "c.execute('create table notes (x)'); c.commit(); print('ready', flush=True); "
              "time.sleep(60)")  # fmt: skip

    def another_opens_it() -> None:
        proc = subprocess.Popen([sys.executable, "-c", opener, str(path)],
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
        other.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

    _refuse_init(monkeypatch, another_opens_it)
    try:
        with pytest.raises(SteplawInputError, match="disk I/O error"):
            make_storage(optuna, f"sqlite:///{path}", None)
        assert path.exists()
        con = sqlite3.connect(path)
        assert [r[0] for r in con.execute("select name from sqlite_master")] == ["notes"]
        con.close()
    finally:
        for proc in other:
            proc.kill()
            proc.wait(10)


def test_a_typo_in_a_study_database_creates_no_file(tmp_path):
    for argv in (
        ["fit", "--storage", f"sqlite:///{tmp_path / 'tpyo.db'}", "--study", "x"],
        ["report", "x", "--storage", f"sqlite:///{tmp_path / 'tpyo.db'}"],
        ["worker", "--storage", f"sqlite:///{tmp_path / 'tpyo.db'}", "--study-name", "x"],
    ):
        r = run_cli(*argv, cwd=tmp_path)
        assert "tpyo.db" in one_line_exit_2(r)
        assert list(tmp_path.iterdir()) == [], argv


def test_fit_masks_the_password_of_its_storage(tmp_path):
    r = run_cli("fit", "--storage", f"postgresql://u:se/cret@127.0.0.1:{free_port()}/db",
                "--study", "x", cwd=tmp_path)  # fmt: skip
    line = one_line_exit_2(r)
    assert "se/cret" not in line and "cret" not in line, line


# ------------------------------------------------------------------------------- PostgreSQL
def test_a_plain_postgresql_url_works(tmp_path, postgres_url):
    """``postgresql://user@host/db`` as users type it (SQLAlchemy 2.1 picks psycopg 3)."""
    plain = postgres_url.replace("postgresql+psycopg2://", "postgresql://")
    assert plain.startswith("postgresql://")
    name = f"plain-{os.getpid()}-{time.monotonic_ns()}"
    r = run_cli(*REPLAY, "--no-mlflow", "--storage", plain, "--study-name", name,
                "--n-trials", "2", "--json", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    import json

    assert json.loads(r.stdout)["n_complete"] == 2
    r = run_cli("report", name, "--storage", plain, "--format", "json", "--no-plots",
                cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]


# ------------------------------------------------------------------------------- MLflow
def _mlflow_commands(uri: str) -> list[list[str]]:
    return [
        ["fit", "--mlflow-experiment", "steplaw-opt", "--tracking-uri", uri],
        ["report", "--run-id", "0123456789abcdef", "--tracking-uri", uri],
    ]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["closed-port", "silent-server"])
def test_an_unreachable_mlflow_server_is_one_line_in_bounded_time(tmp_path, kind):
    with contextlib.ExitStack() as stack:
        port = free_port() if kind == "closed-port" else stack.enter_context(silent_server())
        for argv in _mlflow_commands(f"http://127.0.0.1:{port}"):
            started = time.monotonic()
            r = run_cli(*argv, cwd=tmp_path)
            elapsed = time.monotonic() - started
            line = one_line_exit_2(r)
            assert f"127.0.0.1:{port}" in line, line
            assert elapsed < BOUND, (argv[0], elapsed)
            assert list(tmp_path.iterdir()) == []


def test_report_from_mlflow_without_a_store_creates_no_mlflow_db(tmp_path):
    r = run_cli("report", "--run-id", "0123456789abcdef", cwd=tmp_path)
    one_line_exit_2(r)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------- failed study
def test_a_study_in_which_every_run_failed_exits_non_zero(tmp_path):
    r = run_cli("tune", "--params", "1M", "--tokens", "2e8", "--command", "exit 3", "--n-trials",
                "3", "--no-mlflow", "--storage", ":memory:", cwd=tmp_path)  # fmt: skip
    assert r.returncode != 0, r.stdout[-2000:]
    assert "every" in (r.stdout + r.stderr).lower()
    assert "Train with" not in r.stdout and "Refined optimum" not in r.stdout


# ------------------------------------------------------------------ files and folder locks
_OPENER = (
    "import sys, time; f = open(sys.argv[1], 'rb'); print('ready', flush=True); time.sleep(60)"
)


@contextlib.contextmanager
def _held_open(path: Path) -> Iterator[None]:
    """Another process with ``path`` open, for the block."""
    proc = subprocess.Popen([sys.executable, "-c", _OPENER, str(path)],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield
    finally:
        proc.kill()
        proc.wait(10)


def test_a_disk_full_when_creating_the_database_file_is_one_line(tmp_path, monkeypatch):
    import errno

    import optuna

    from steplaw_opt import _files
    from steplaw_opt.errors import SteplawInputError
    from steplaw_opt.tune._study import make_storage

    real = os.open

    def full(path, flags, *args, **kwargs):
        if flags & os.O_EXCL:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(_files.os, "open", full)
    with pytest.raises(SteplawInputError, match=r"cannot create .*No space left") as info:
        make_storage(optuna, f"sqlite:///{tmp_path / 's.db'}", None)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_thread_holding_one_folder_does_not_hold_up_another_folder(tmp_path):
    from steplaw_opt._files import folder_lock

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    inside, release = threading.Event(), threading.Event()

    def hold_a() -> None:
        with folder_lock(a), folder_lock(a):  # re-entrant in one thread
            inside.set()
            release.wait(30)

    def lock(folder: Path, done: threading.Event) -> None:
        with folder_lock(folder):
            done.set()

    holder = threading.Thread(target=hold_a)
    holder.start()
    try:
        assert inside.wait(10)
        other_folder, same_folder = threading.Event(), threading.Event()
        threading.Thread(target=lock, args=(b, other_folder), daemon=True).start()
        assert other_folder.wait(5), "locking folder b waited for the thread holding folder a"
        waiter = threading.Thread(target=lock, args=(a, same_folder), daemon=True)
        waiter.start()
        assert not same_folder.wait(0.3)  # folder a is one thread's at a time
    finally:
        release.set()
        holder.join(10)
    assert same_folder.wait(5)
    waiter.join(5)
    from steplaw_opt import _files

    assert _files._LOCKS == {}


def test_a_ctrl_c_while_waiting_for_a_folder_lock_leaks_no_descriptor(tmp_path, monkeypatch):
    import fcntl

    from steplaw_opt import _files

    def interrupted(fd, op):
        raise KeyboardInterrupt

    before = len(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(fcntl, "flock", interrupted)
    with pytest.raises(KeyboardInterrupt), _files.folder_lock(tmp_path):
        pass
    assert len(os.listdir("/proc/self/fd")) == before
    assert _files._LOCKS == {}


def test_looking_for_other_processes_stats_only_links_naming_the_file(tmp_path, monkeypatch):
    from steplaw_opt import _files

    path = tmp_path / "s.db"
    new = _files.create_new_file(path)
    assert new is not None
    real, statted = os.stat, []

    def spy(target, *args, **kwargs):
        statted.append(str(target))
        return real(target, *args, **kwargs)

    with _held_open(path):
        monkeypatch.setattr(_files.os, "stat", spy)
        found = _files.opened_elsewhere(new)
        monkeypatch.undo()
        assert found
        # every link stat'ed (followed) names the file: no socket, pipe or hung NFS file is
        assert statted and all(os.readlink(link) == str(path) for link in statted), statted
    assert not _files.opened_elsewhere(new)


def _open_new_study(url: str) -> object:
    import optuna

    from steplaw_opt import Scale
    from steplaw_opt.tune import TuneConfig
    from steplaw_opt.tune._study import open_study

    c = TuneConfig()
    return open_study(optuna, url, "mine", optuna.samplers.RandomSampler(),
                      Scale(N=1e8, D=2e9), c.law_card, 1.0, c.batch_unit)  # fmt: skip


def test_an_empty_new_study_another_process_has_open_is_not_deleted(tmp_path):
    import optuna

    from steplaw_opt.tune._study import discard_new_study

    path = tmp_path / "s.db"
    study = _open_new_study(f"sqlite:///{path}")
    with _held_open(path):  # another process joined it (it would run the first trial)
        discard_new_study(optuna, study)
    assert path.exists()
    assert optuna.get_all_study_names(f"sqlite:///{path}") == ["mine"]
    # nobody else: the run that made it removes it, and the file it created
    study = _open_new_study(f"sqlite:///{tmp_path / 't.db'}")
    discard_new_study(optuna, study)
    assert not (tmp_path / "t.db").exists()


def test_a_shared_new_study_elsewhere_than_sqlite_is_not_deleted(tmp_path):
    # a journal (as a server): other processes joining it cannot be seen
    import optuna
    from optuna.storages.journal import JournalFileBackend

    from steplaw_opt.tune._study import discard_new_study

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "j.log")))
    study = optuna.create_study(study_name="shared", storage=storage)
    discard_new_study(optuna, study, shared=True)  # made for workers: they may have joined
    assert optuna.get_all_study_names(storage) == ["shared"]
    discard_new_study(optuna, study)  # a plain run without heartbeats: nobody to wait for
    assert optuna.get_all_study_names(storage) == []


def test_a_failed_open_removes_its_new_file_under_the_folder_lock(tmp_path, monkeypatch):
    import optuna
    import sqlalchemy.exc

    from steplaw_opt import _files
    from steplaw_opt.errors import SteplawInputError
    from steplaw_opt.tune import _study

    locked: list[bool] = []
    real = _study._forget_new_file

    def forget(new, name=None):
        entry = _files._LOCKS.get(os.path.realpath(new.path.parent))
        locked.append(entry is not None and entry.depth > 0)
        return real(new, name)

    def refused(*args, **kwargs):
        raise sqlalchemy.exc.OperationalError("INSERT", {}, Exception("disk I/O error"))

    monkeypatch.setattr(_study, "_forget_new_file", forget)
    monkeypatch.setattr(optuna, "create_study", refused)
    with pytest.raises(SteplawInputError, match="disk I/O error"):
        _open_new_study(f"sqlite:///{tmp_path / 's.db'}")
    assert locked == [True]
    assert list(tmp_path.iterdir()) == []
