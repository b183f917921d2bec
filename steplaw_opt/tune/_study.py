"""The study: opening its storage, creating or resuming it, and reading it back.

A study made by :func:`~steplaw_opt.tune.tune` records its target, law card, batch unit, budget
and settings (:mod:`steplaw_opt._records`); resuming it with another target, law or unit is
refused in one line, so two different searches never share one study by accident.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import warnings
import weakref
from pathlib import Path
from typing import Any

from steplaw_opt._files import (
    NewFile,
    create_new_file,
    folder_lock,
    opened_elsewhere,
    remove_new_file,
)
from steplaw_opt._records import (
    ATTR_BATCH_UNIT,
    ATTR_BUDGET,
    ATTR_COMPUTE,
    ATTR_CONFIG,
    ATTR_FAILURE,
    ATTR_LAW,
    INTERRUPTED,
    mask_secrets,
    mask_url,
)
from steplaw_opt.errors import SteplawInputError
from steplaw_opt.priors import Law
from steplaw_opt.scale import Scale
from steplaw_opt.sizes import format_size

DEFAULT_STORAGE = "sqlite:///steplaw-opt.db"


def default_study_name(target: Scale, law: Law) -> str:
    """``steplaw-<law>-N<size>-D<size>``: one study per target and law unless named."""
    n, d = format_size(float(target.N or 0)), format_size(float(target.D or 0))
    return f"steplaw-{law.name}-N{n}-D{d}"


def _first_line(exc: BaseException, url: str = "") -> str:
    """The first line of a driver's error, cut, with ``url``'s password hidden in it."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = mask_secrets(text, url) if url else text
    return text if len(text) <= 300 else text[:299] + "…"


SQLITE_HEADER = b"SQLite format 3\x00"
CONNECT_TIMEOUT = 10  # seconds to reach a database server that does not answer
QUICK_CHECK_MAX_BYTES = 256 * 2**20  # a larger file is not scanned before opening
# Optuna's tables: an SQLite file that has tables but none of these is someone else's database.
# (alembic_version is not one: MLflow's mlflow.db has it too.)
_OPTUNA_TABLES = {"studies", "version_info"}
# SQLite files this process created (O_EXCL) for a storage, keyed by the storage object: removed
# again when the storage or the study then fails, so a typo or a full disk leaves no stray
# database behind — unless another process has opened it meanwhile (it is theirs too).
_NEW_FILES: weakref.WeakKeyDictionary[Any, NewFile] = weakref.WeakKeyDictionary()
# … and, once a study was made in it, until the run that made the study has run a trial.
_MADE_FILES: weakref.WeakKeyDictionary[Any, NewFile] = weakref.WeakKeyDictionary()
_SQLITE_COMPANIONS = ("", "-journal", "-wal", "-shm")


def _refuse(url: str, why: str) -> SteplawInputError:
    return SteplawInputError(f"cannot open storage {mask_url(url)!r}: {why}")


def storage_url(url: Any) -> Any:
    """The parsed SQLAlchemy URL of an Optuna storage URL, checked without connecting: one line
    naming the URL (password masked) for a malformed URL, an unknown database kind or a missing
    driver."""
    if not isinstance(url, str) or not url.strip():
        raise SteplawInputError(f"the storage URL is empty or not text: {url!r}")
    if "://" not in url:
        raise _refuse(
            url,
            "not a URL (expected sqlite:///file.db, postgresql://user@host/db or :memory:)",
        )
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise _refuse(
            url,
            "malformed URL (expected sqlite:///file.db, postgresql://user@host/db or :memory:)",
        ) from None
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        raise _refuse(url, f"unknown database kind {parsed.drivername!r}") from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        raise _refuse(
            url, f"the driver for {parsed.drivername!r} is not installed ({_first_line(exc)})"
        ) from None
    return parsed


def _sqlite_file(url: str, parsed: Any) -> Path | None:
    """The database file of an SQLite URL (``None`` for an in-memory or ``file:`` URI)."""
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def check_sqlite_file(url: str, path: Path, *, create: bool) -> None:
    """Refuse, in one line and without touching it, an SQLite storage path that is a folder,
    not an SQLite file, corrupted, someone else's database, or (``create``) a new file in a
    folder that is missing or read-only."""
    label = str(path)
    if path.is_dir():
        raise _refuse(url, f"{label!r} is a folder, not a database file")
    if not path.exists():
        if not create:
            raise SteplawInputError(f"no such study database: {mask_url(url)!r}")
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            raise _refuse(url, f"folder {str(parent)!r} does not exist")
        if not os.access(parent, os.W_OK):
            raise _refuse(url, f"folder {str(parent)!r} is read-only: cannot create {label!r}")
        return
    if not path.is_file():
        raise _refuse(url, f"{label!r} is not a regular file")
    try:
        with path.open("rb") as f:
            head = f.read(len(SQLITE_HEADER))
        size = path.stat().st_size
    except OSError as exc:
        raise _refuse(url, f"cannot read {label!r}: {exc.strerror}") from None
    if size == 0:
        return  # SQLite treats an empty file as a new database
    if head != SQLITE_HEADER:
        raise _refuse(url, f"{label!r} is not an SQLite database")
    try:
        # Read-only, so a damaged or foreign file is not changed by looking at it.
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            tables = {r[0] for r in con.execute("select name from sqlite_master")}
            if size <= QUICK_CHECK_MAX_BYTES:
                verdict = con.execute("pragma quick_check").fetchone()
                if verdict is None or verdict[0] != "ok":
                    raise _refuse(url, f"{label!r} is corrupted (SQLite: {verdict and verdict[0]})")
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        if "locked" in str(exc):
            return  # another process is writing it: Optuna waits for the lock
        raise _refuse(url, f"{label!r} is corrupted or not a database ({exc})") from None
    if tables and not (tables & _OPTUNA_TABLES):
        shown = ", ".join(sorted(tables)[:5])
        raise _refuse(
            url, f"{label!r} is another program's SQLite database (tables: {shown}), not a study"
        )


def _engine_kwargs(parsed: Any) -> dict[str, Any]:
    """Connection settings that keep a server that does not answer from hanging the command:
    libpq (psycopg 2 and 3) waits :data:`CONNECT_TIMEOUT` seconds, unless the URL says."""
    if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        return {"connect_args": {"connect_timeout": CONNECT_TIMEOUT}}
    return {}


def _forget_new_file(new: NewFile | None, name: str | None = None) -> bool:
    """Remove an SQLite file (and its journals) this process created for a storage that then
    failed, so exit 2 leaves no stray database behind — only if it is still the file this
    process made, no other process has it open, and it holds no study but ``name`` and no
    trial (another process that created its study there and left keeps it)."""
    if new is None or not _holds_nothing_else(new.path, name):
        return False
    return remove_new_file(new, _SQLITE_COMPANIONS)


def _holds_nothing_else(path: Path, name: str | None) -> bool:
    """Whether the SQLite file at ``path`` holds no study but ``name`` and no trial (a file
    without tables, or one too damaged to read, holds nothing)."""
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=1)
    except sqlite3.Error:
        return True
    try:
        tables = {r[0] for r in con.execute("select name from sqlite_master")}
        studies = (
            {r[0] for r in con.execute("select study_name from studies")}
            if "studies" in tables
            else set()
        )
        trials = (
            con.execute("select count(*) from trials").fetchone()[0] if "trials" in tables else 0
        )
    except sqlite3.OperationalError as exc:
        return "locked" not in str(exc)  # locked: another process is writing it
    except sqlite3.DatabaseError:
        return True  # damaged: what this process half-wrote
    finally:
        con.close()
    return not trials and studies <= ({name} if name else set())


def make_storage(optuna: Any, url: str, heartbeat_interval: int | None) -> Any:
    """An Optuna storage for ``url``, checked and opened now, so every way a URL can be wrong
    (malformed, unknown kind, missing driver, a folder or a non-SQLite file, a corrupted file,
    a read-only folder, a full disk, a refused or silent server) is one line naming it, with
    its password masked, within :data:`CONNECT_TIMEOUT` seconds, and leaves no new file
    behind. SQL URLs with heartbeats get the retry callback, so a trial whose worker died is
    failed and re-queued (same parameters and user attributes)."""
    if url == ":memory:":  # an in-memory study (benchmarks, tests)
        return optuna.storages.InMemoryStorage()
    if isinstance(url, str) and url.startswith("journal"):
        return url
    parsed = storage_url(url)
    path = _sqlite_file(url, parsed) if parsed.get_backend_name() == "sqlite" else None
    if path is None:
        return _open_rdb(optuna, url, parsed, heartbeat_interval, None)
    # One steplaw-opt process at a time creates or opens an SQLite file in this folder, so one
    # never initialises (or removes) a file another is initialising.
    with folder_lock(path.parent if str(path.parent) else Path(".")):
        check_sqlite_file(url, path, create=True)
        try:
            new = create_new_file(path) if not path.exists() else None  # None: not this one's
        except OSError as exc:  # a full disk or quota, a folder made read-only meanwhile
            raise _refuse(url, f"cannot create {str(path)!r}: {exc.strerror}") from None
        return _open_rdb(optuna, url, parsed, heartbeat_interval, new)


def _open_rdb(
    optuna: Any, url: str, parsed: Any, heartbeat_interval: int | None, new: NewFile | None
) -> Any:
    kwargs: dict[str, Any] = {"engine_kwargs": _engine_kwargs(parsed)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # heartbeats are "experimental" in Optuna 5
            if heartbeat_interval is not None:
                interval = int(heartbeat_interval)
                kwargs.update(
                    heartbeat_interval=interval,
                    grace_period=2 * interval,
                    heartbeat_stale_trial_callback=(
                        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=None)
                    ),
                )
            storage = optuna.storages.RDBStorage(url, **kwargs)
    except Exception as exc:  # sqlalchemy / the driver: refused connection, disk full, …
        _forget_new_file(new)
        raise _refuse(url, _first_line(exc, url)) from None
    if new is not None:
        _NEW_FILES[storage] = new
    return storage


def open_study(
    optuna: Any,
    storage: Any,
    name: str,
    sampler: Any,
    target: Scale,
    law: Law,
    budget: float,
    batch_unit: str,
    config: dict[str, Any] | None = None,
) -> Any:
    """Create the study ``name``, or resume it when its target, law and batch unit match;
    a new study records them, the budget and ``config`` (what workers rebuild it from).

    Whatever stops it here — a refusal, a full disk, a database gone mid-way — is one line,
    and leaves neither the empty study it made nor the database file it created."""
    if storage == ":memory:":  # an in-memory study (benchmarks, tests)
        storage = optuna.storages.InMemoryStorage()
    elif isinstance(storage, str):
        storage = make_storage(optuna, storage, None)  # checked: one line for a bad URL
    backend = getattr(storage, "_backend", storage)
    url = str(getattr(backend, "url", "in-memory"))
    label = mask_url(url)
    study = None
    fresh = False  # the study holds nothing of steplaw-opt's yet: made (or left empty) here
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            sampler=sampler,
            direction="minimize",
            load_if_exists=True,
        )
        attrs = study.user_attrs
        wanted = {
            "steplaw.target.N": float(target.N or 0),
            "steplaw.target.D": float(target.D or 0),
            "steplaw.target.seq_len": int(target.seq_len),
            ATTR_LAW: law.name,
            ATTR_BATCH_UNIT: batch_unit,
        }
        if any(k in attrs for k in wanted):
            for key, value in wanted.items():
                if key in attrs and attrs[key] != value:
                    raise SteplawInputError(
                        f"study {name!r} in {label} was made with {key}={attrs[key]!r}, "
                        f"not {value!r}; pass another --study-name"
                    )
        else:
            fresh = not study.get_trials(deepcopy=False)
            for key, value in wanted.items():
                study.set_user_attr(key, value)
            study.set_user_attr(ATTR_BUDGET, float(budget))
        if config is not None and ATTR_CONFIG not in attrs:
            study.set_user_attr(ATTR_CONFIG, json.dumps(config, default=float))
    except BaseException as exc:
        _undo(optuna, storage, backend, name, study is None or fresh)
        if isinstance(exc, SteplawInputError) or not isinstance(exc, Exception):
            raise
        raise SteplawInputError(f"cannot open storage {label!r}: {_first_line(exc, url)}") from None
    new = _NEW_FILES.pop(backend, None)  # made and recorded: the user's study, once it runs
    if new is not None:
        _MADE_FILES[backend] = new
    return study


def _undo(optuna: Any, storage: Any, backend: Any, name: str, fresh: bool) -> None:
    """After a failed open: remove the database file this process created, or else the empty
    study it made (never a study that holds anything)."""
    new = _NEW_FILES.pop(backend, None)
    if new is not None:
        with contextlib.suppress(Exception):
            backend.engine.dispose()  # close the file before removing it
        with folder_lock(new.path.parent):  # not while another process opens it
            if _forget_new_file(new, name):
                return
    if not fresh:
        return
    with contextlib.suppress(Exception):  # the storage may be what failed: nothing to undo
        study = optuna.load_study(study_name=name, storage=storage)
        attrs = study.user_attrs
        if not study.get_trials(deepcopy=False) and not any(
            k.startswith("steplaw.target") for k in attrs
        ):
            optuna.delete_study(study_name=name, storage=storage)


def load_tuned_study(study_name: str, storage: str, law: str | Law | None = None) -> Any:
    """The study ``study_name`` at ``storage``, with its plateau sampler attached."""
    import optuna

    from steplaw_opt.samplers import sampler_from_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if storage == ":memory:":
        raise SteplawInputError("an in-memory study cannot be read back; give its --storage")
    storage_obj = open_existing_storage(optuna, storage)
    try:
        names = optuna.study.get_all_study_names(storage=storage_obj)
    except Exception as exc:  # sqlalchemy: a database gone between the check and the read
        raise _refuse(storage, _first_line(exc, storage)) from None
    if study_name not in names:
        known = ", ".join(names[:5]) or "none"
        raise SteplawInputError(
            f"no study {study_name!r} in {mask_url(storage)} (studies there: {known})"
        )
    study = optuna.load_study(study_name=study_name, storage=storage_obj)
    study.sampler = sampler_from_study(study, law)
    return study


def open_existing_storage(optuna: Any, url: str) -> Any:
    """The storage of a study that must already exist (reports, workers, ``fit --storage``):
    like :func:`make_storage`, but a missing SQLite file is refused instead of created, so a
    typo leaves no new database behind."""
    if url.startswith("journal"):
        return url
    parsed = storage_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = _sqlite_file(url, parsed)
        if path is not None:
            check_sqlite_file(url, path, create=False)
    return make_storage(optuna, url, None)


def best_per_scale(study: Any) -> dict[tuple[float, float], float]:
    """The best loss so far at each (N, D): losses at different scales are not comparable."""
    best: dict[tuple[float, float], float] = {}
    for t in study.get_trials(deepcopy=False):
        if t.value is not None and "steplaw.D" in t.user_attrs:
            key = (float(t.user_attrs.get("steplaw.N", 0)), float(t.user_attrs["steplaw.D"]))
            best[key] = min(best.get(key, math.inf), t.value)
    return best


def compute_spent(study: Any) -> float:
    """Compute of the study's finished runs, in target-run equivalents: each run's
    ``steplaw.compute``, which is its planned cost, or for a run cut short (diverged, stopped
    early) the share it recorded using (:func:`~steplaw_opt.tune._loop.consumed`: the tokens
    it notes having trained on; a run that records none counts in full). Pruned copies of a
    slot count nothing; interrupted runs are run again, so they do not count."""
    return float(
        sum(
            t.user_attrs.get(ATTR_COMPUTE, 0.0)
            for t in study.get_trials(deepcopy=False)
            if t.user_attrs.get(ATTR_FAILURE) != INTERRUPTED and t.state.is_finished()
        )
    )


def discard_new_study(optuna: Any, study: Any, *, shared: bool = False) -> None:
    """The run that made ``study`` stopped before any trial (MLflow refused, a full disk, a
    stop): remove the empty study, and the SQLite file this process created for it when no
    other process has opened it and it holds nothing else. A study with any trial is kept, and
    so is one another process may have joined meanwhile: one made for workers (``shared``:
    ``create_only``), one in an SQLite file this process created that another process on this
    machine has open, and one elsewhere (a server, a journal, an SQLite file that was there)
    with heartbeats (their trials, which would name their owners, may not be made yet). An
    empty study left behind is harmless; deleting one in use is not."""
    storage = study._storage
    backend = getattr(storage, "_backend", storage)
    new = _MADE_FILES.pop(backend, None)
    url = str(getattr(backend, "url", ""))
    path: Path | None = None
    if url.startswith("sqlite"):
        with contextlib.suppress(Exception):
            path = _sqlite_file(url, storage_url(url))
    if path is None and isinstance(backend, optuna.storages.InMemoryStorage):
        with contextlib.suppress(Exception):  # nobody else can see it
            if not study.get_trials(deepcopy=False):
                optuna.delete_study(study_name=study.study_name, storage=storage)
        return
    if path is None:  # a server or a journal: others cannot be seen joining
        if shared or _heartbeats(storage):
            return
        with contextlib.suppress(Exception):
            if not study.get_trials(deepcopy=False):
                optuna.delete_study(study_name=study.study_name, storage=storage)
        return
    # SQLite: steplaw-opt processes open the file under the folder lock and keep it open, so
    # with the lock held, one that joined is seen (/proc), and none joins before the delete
    with folder_lock(path.parent):
        if shared:
            return
        if new is not None:
            if opened_elsewhere(new):
                return
        elif _heartbeats(storage):  # a file that was there: others may have it open for their
            return  # own studies, so an open says nothing; heartbeats mean workers may join
        with contextlib.suppress(Exception):  # the storage may be what failed: nothing to undo
            if study.get_trials(deepcopy=False):
                return
            optuna.delete_study(study_name=study.study_name, storage=storage)
        if new is not None:
            with contextlib.suppress(Exception):
                backend.engine.dispose()  # close the file before removing it
            _forget_new_file(new)


def _heartbeats(storage: Any) -> bool:
    with contextlib.suppress(Exception):
        from optuna.storages._heartbeat import is_heartbeat_enabled

        return bool(is_heartbeat_enabled(storage))
    return True  # cannot tell: as if on


def keep_new_study(study: Any) -> None:
    """A trial ran: the study (and the file made for it) is the user's now."""
    storage = study._storage
    _MADE_FILES.pop(getattr(storage, "_backend", storage), None)
