"""Many processes on one study: planned slots, claims, owners, heartbeats, lost trials, stops.

Every planned run is a slot (its index in the plan's schedule). A new trial claims the lowest
free slot once every older running trial has claimed its own and chosen its point, so two
workers never run one slot and the sampler sees the others' points as pending. A running trial
holds its slot, and so do a waiting one (a re-queued copy) and a finished one.

A trial whose process died is *lost*. Two signs tell: its heartbeats stopped (SQL storages with
heartbeats: Optuna fails it and re-queues a copy), or its owner — the process that records
itself on each trial it runs (host, boot, pid namespace, pid and start time) — is gone from
this machine (any storage, no heartbeats needed: a single ``tune`` that was SIGKILLed). Either
way the trial is failed and a WAITING copy with its slot, parameters and scale is queued, which
the loop (:mod:`steplaw_opt.tune._loop`) runs again. Whoever turns the trial from RUNNING to
FAIL (one atomic update in the storage) queues the copy, so it is queued once; should two
copies of one slot ever wait, the lower-numbered one runs and the other is pruned.

Stops: :func:`stop_signals` turns SIGINT, SIGTERM and SIGHUP into :class:`Stopped` (a
``KeyboardInterrupt``), which the loop answers by stopping the job's process group and failing
the trial ("interrupted", with the signal). The stop is raised at safe points only — the run
loop, the command objective's wait, between storage retries, anywhere in an objective's own
code (:func:`interruptible`) — never inside a storage or MLflow call, where it could leave a
lock held; :func:`deferred_stops` holds it until the storage write in progress (a new trial and
its owner, a result) is complete.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from steplaw_opt._records import (
    ATTR_FAILURE,
    ATTR_LOST,
    ATTR_OWNER,
    ATTR_SLOT,
    BATCH_PARAM,
    INTERRUPTED,
    LR_PARAM,
)
from steplaw_opt.scale import Scale

DEFAULT_HEARTBEAT = 10  # seconds, for the CLI's shared studies
CLAIM_WAIT = 60.0  # seconds a new trial waits for older trials to claim their slot
# A live process records itself on a trial within milliseconds of starting it; a RUNNING trial
# still without an owner this long after its start lost its process in between (SIGKILL).
OWNERLESS_AFTER = 30.0
TRANSIENT_WAIT = 30.0  # seconds a storage that went away (a database restarting) is retried
OPEN_WAIT = 15.0  # the same, for a worker opening the study

# The trial attributes written here (ATTR_OWNER, ATTR_INTERRUPTED_BY, ATTR_LOST) are named in
# steplaw_opt._records beside the others.

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_RUNNING_HERE: set[int] = set()  # ids of the trials this process is running now


# ------------------------------------------------------------------ stops
class Stopped(KeyboardInterrupt):
    """A stop asked by a signal: Ctrl-C (SIGINT), SIGTERM or SIGHUP. A ``KeyboardInterrupt``,
    so whatever cleans up after Ctrl-C cleans up after the others too."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        self.signame = signal.Signals(signum).name
        super().__init__(f"signal {self.signum} ({self.signame})")

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by the signal: 128 + its number."""
        return 128 + self.signum


def stop_reason(exc: BaseException) -> str:
    """What stopped a run: the signal's name, or ``KeyboardInterrupt`` (raised by code)."""
    return exc.signame if isinstance(exc, Stopped) else type(exc).__name__


_deferring = 0  # depth of the deferred_stops blocks being run
_interruptible = 0  # depth of the interruptible blocks being run
_managed = 0  # depth of the stop_signals blocks: stops raised at safe points only
_pending: int | None = None  # a signal that arrived inside a deferred_stops block
_asked: int | None = None  # the last stop signal, until stop_signals ends


def _on_signal(signum: int, frame: Any) -> None:
    """Where a stop is raised. Inside :func:`stop_signals`, only where an exception cannot
    leave a library half-way through a call: in an :func:`interruptible` block (an objective's
    own code: the built-in trainer, a Python callable), else at the next :func:`check_stop`
    (the run loop, the command objective's wait, between storage retries, the end of the
    block). An exception raised at an arbitrary bytecode — inside SQLAlchemy's pool, MLflow's
    store, a ``__del__`` — can leave a lock held or be swallowed, and a worker that hangs after
    SIGTERM with its heartbeat thread still beating keeps its trial RUNNING for good (seen in
    the chaos run). A second signal does not wait."""
    global _pending, _asked
    second = _asked is not None
    _asked = signum
    if _deferring and _pending is None and not second:
        _pending = signum  # raised as soon as the storage write in progress is complete
        return
    if second or not _managed or (_interruptible and not _deferring):
        raise Stopped(signum)


def check_stop() -> None:
    """Raise the stop a signal asked for (a safe point: see :func:`_on_signal`). The run loop,
    the command objective's wait and :func:`retry_storage` call this."""
    if _asked is not None and not _deferring:
        raise Stopped(_asked)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """A block a stop may interrupt at any point (an objective's own code: a training loop
    that never calls :func:`check_stop`); a stop asked before it raises on entry."""
    global _interruptible
    check_stop()
    _interruptible += 1
    try:
        yield
    finally:
        _interruptible -= 1


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """While the block runs, SIGINT, SIGTERM and SIGHUP become :class:`Stopped` in the main
    thread, raised at safe points (:func:`_on_signal`); a stop that no safe point raised is
    raised when the block ends. The previous handlers come back after. A signal that is
    ignored (``nohup``, a background job's SIGINT) stays ignored. In another thread: no
    change."""
    global _asked, _managed, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}
    for sig in STOP_SIGNALS:
        current = signal.getsignal(sig)
        if current is signal.SIG_IGN or current is _on_signal:
            continue
        previous[sig] = signal.signal(sig, _on_signal)
    _managed += 1
    asked = None
    try:
        yield
        asked = _asked if previous else None
    finally:
        _managed -= 1
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        if previous:
            _asked = _pending = None
    if asked is not None:  # the work ended before any safe point saw the stop
        raise Stopped(asked)


@contextlib.contextmanager
def deferred_stops() -> Iterator[None]:
    """Hold a stop signal until the block ends, so the storage writes inside it are not cut in
    half (a trial created but not yet owned, a result half told); a second signal does not
    wait."""
    global _deferring, _pending
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring and _pending is not None:
            signum, _pending = _pending, None
            raise Stopped(signum)


def sigterm_as_interrupt() -> Any:
    """Make SIGTERM take Ctrl-C's clean path (:class:`Stopped`, a ``KeyboardInterrupt``);
    returns the previous handler. Main thread only. (:func:`~steplaw_opt.tune.tune` and
    :func:`~steplaw_opt.tune.run_worker` install :func:`stop_signals` themselves; this is for
    loops of your own.)"""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _on_signal)


# ------------------------------------------------------------------ owners
def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (the state first), or ``None``."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip() or None
    except OSError:
        return None


_ME: dict[str, Any] = {}


def this_process() -> dict[str, Any]:
    """Who this process is, as recorded on the trials it runs: host name, boot id (a reboot
    changes it), pid namespace (containers may share a host name, not their pids), pid and
    start time (a reused pid belongs to a process with another start time)."""
    if _ME.get("pid") != os.getpid():  # again after a fork
        stat = _proc_stat(os.getpid())
        pidns = None
        with contextlib.suppress(OSError):
            pidns = os.readlink("/proc/self/ns/pid")
        _ME.clear()
        _ME.update(
            host=socket.gethostname(),
            boot=_read("/proc/sys/kernel/random/boot_id"),
            pidns=pidns,
            pid=os.getpid(),
            start=int(stat[19]) if stat and len(stat) > 19 else None,
        )
    return dict(_ME)


def owner_record(trial_number: int) -> dict[str, Any]:
    """What a process writes on a trial it runs (:data:`ATTR_OWNER`). The trial's number is
    part of it: a re-queued copy carries its original's owner, which says nothing of the copy."""
    return {**this_process(), "trial": int(trial_number)}


def _owned(t: Any) -> bool:
    owner = t.user_attrs.get(ATTR_OWNER)
    return isinstance(owner, dict) and owner.get("trial") == t.number


def owner_state(t: Any) -> str:
    """``"alive"``, ``"dead"`` or ``"unknown"`` (no owner yet, or one this machine cannot
    check: another host, another pid namespace) for a RUNNING trial."""
    if not _owned(t):
        return "unknown"
    owner, me = t.user_attrs[ATTR_OWNER], this_process()
    if owner.get("host") != me["host"]:
        return "unknown"
    if owner.get("boot") and me["boot"] and owner["boot"] != me["boot"]:
        return "dead"  # this machine has rebooted since
    if owner.get("pidns") != me["pidns"]:
        return "unknown"
    pid = owner.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool):
        return "unknown"
    if pid == me["pid"] and owner.get("start") == me["start"]:
        # this process: alive while it runs the trial; a stop that left it RUNNING followed by
        # another tune() call in the same process makes it lost
        return "alive" if t._trial_id in _RUNNING_HERE else "dead"
    stat = _proc_stat(pid)
    if stat is None:
        if os.path.isdir("/proc"):
            return "dead"
        try:  # no /proc (macOS): the pid alone
            os.kill(pid, 0)
        except ProcessLookupError:
            return "dead"
        except PermissionError:
            pass
        return "alive"
    if stat[0] in ("Z", "X"):
        return "dead"
    start = owner.get("start")
    if start is not None and len(stat) > 19 and int(stat[19]) != start:
        return "dead"  # the pid now belongs to another process
    return "alive"


# ------------------------------------------------------------------ heartbeats
class Heartbeat:
    """Beats for one running trial in a background thread (what ``study.optimize`` does), with
    the first beat written before the trial runs, and a storage error (a database restarting)
    costing one beat, not the thread: a trial whose beats stop while its worker lives is failed
    by the others and run twice."""

    def __init__(self, study: Any, trial_id: int) -> None:
        from optuna.storages._heartbeat import is_heartbeat_enabled

        storage = study._storage
        self._storage = storage if is_heartbeat_enabled(storage) else None
        self._trial_id = trial_id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _beat(self) -> None:
        assert self._storage is not None
        with contextlib.suppress(Exception):  # the database is away: the next beat tries again
            self._storage.record_heartbeat(self._trial_id)

    def _run(self) -> None:
        assert self._storage is not None
        interval = float(self._storage.get_heartbeat_interval())
        while not self._stop.wait(interval):
            self._beat()

    def __enter__(self) -> Heartbeat:
        if self._storage is not None:
            self._beat()
            self._thread = threading.Thread(
                target=self._run, name=f"steplaw-heartbeat-{self._trial_id}", daemon=True
            )
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


def ask(study: Any) -> Any:
    """``study.ask()`` without Optuna's warning that heartbeats belong to ``optimize``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "heartbeat … supposed to be used with optimize"
        return study.ask()


def heartbeat_on(study: Any) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return bool(is_heartbeat_enabled(study._storage))


def fail_stale(study: Any) -> None:
    """Fail (and, through the storage's callback, re-queue) trials whose worker stopped
    beating."""
    import optuna

    if heartbeat_on(study):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optuna.storages.fail_stale_trials(study)


def recover_lost(study: Any) -> list[int]:
    """Fail and re-queue the study's lost trials: those whose heartbeats stopped (Optuna), those
    whose owner process on this machine is gone, and those still without an owner
    :data:`OWNERLESS_AFTER` seconds after they started. Returns the numbers of the trials this
    process failed for their owner."""
    import optuna

    fail_stale(study)
    now = datetime.datetime.now()  # Optuna stamps trials with naive local time
    lost = []
    for t in all_trials(study):
        if t.state != optuna.trial.TrialState.RUNNING or t._trial_id in _RUNNING_HERE:
            continue
        verdict = owner_state(t)
        if verdict == "dead":
            owner = t.user_attrs[ATTR_OWNER]
            why = f"its process {owner.get('pid')} on {owner.get('host')} is gone"
        elif verdict == "unknown" and not _owned(t):
            started = t.datetime_start
            if started is None or (now - started).total_seconds() < OWNERLESS_AFTER:
                continue
            why = f"no process owned it {OWNERLESS_AFTER:g} s after its start"
        else:
            continue
        if fail_and_requeue(study, t, why):
            lost.append(t.number)
    return lost


def fail_and_requeue(study: Any, t: Any, why: str) -> bool:
    """Turn the RUNNING trial ``t`` into FAIL (with no failure reason: a lost run, as after a
    heartbeat failure; ``steplaw.lost`` says why) and queue a WAITING copy with its slot,
    parameters and scale, as Optuna's ``RetryHeartbeatStaleTrialCallback`` does. ``False`` when
    another process got there first (and queues the copy)."""
    import optuna

    storage = study._storage
    try:
        storage.set_trial_user_attr(t._trial_id, ATTR_LOST, why)
        if not storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL):
            return False
    except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
        return False  # finished, or failed by another process, meanwhile
    slot = slot_of(t)
    if (slot is not None and slot >= 0) or t.params:
        system_attrs: dict[str, Any] = {"failed_trial": t.number, **t.system_attrs}
        system_attrs["retry_history"] = [*system_attrs.get("retry_history", []), t.number]
        user_attrs = {k: v for k, v in t.user_attrs.items() if k not in (ATTR_OWNER, ATTR_LOST)}
        study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.WAITING,
                params=t.params,
                distributions=t.distributions,
                user_attrs=user_attrs,
                system_attrs=system_attrs,
            )
        )
    return True


def all_trials(study: Any) -> list[Any]:
    """Every trial, read from the storage now (no cache: other workers write too)."""
    return list(study._storage.get_all_trials(study._study_id, deepcopy=False))


def slot_of(t: Any) -> int | None:
    slot = t.user_attrs.get(ATTR_SLOT)
    return int(slot) if isinstance(slot, (int, float)) and not isinstance(slot, bool) else None


def _final(t: Any) -> bool:
    """A trial that settles its slot: COMPLETE, or failed for a reason of its own (diverged,
    timeout, an exit code), not interrupted and not lost."""
    import optuna

    state = optuna.trial.TrialState
    failure = t.user_attrs.get(ATTR_FAILURE)
    return t.state == state.COMPLETE or (
        t.state == state.FAIL and failure not in (None, INTERRUPTED)
    )


def slots(
    trials: Sequence[Any], schedule: Sequence[Scale], me: int | None
) -> tuple[set[int], set[int], bool]:
    """(slots held by any trial but ``me``, slots held by finished trials, whether an older
    trial is still choosing its slot). A slot is held by a COMPLETE trial, a trial that failed
    for real, and a RUNNING or WAITING trial (lost RUNNING trials are failed first, by
    :func:`recover_lost`). An interrupted trial frees its slot; a lost one leaves it to its
    re-queued copy."""
    import optuna

    state = optuna.trial.TrialState
    held: set[int] = set()
    final: set[int] = set()
    legacy: list[tuple[float, float]] = []
    pending = False
    now = time.time()
    for t in trials:
        if t.number == me:
            continue
        slot = slot_of(t)
        finished = _final(t)
        live = t.state in (state.WAITING, state.RUNNING)
        choosing = slot is None or LR_PARAM not in t.params or BATCH_PARAM not in t.params
        if t.state == state.RUNNING and me is not None and t.number < me and choosing:
            # an older trial still choosing its slot and point: wait, so the sampler sees it
            started = t.datetime_start.timestamp() if t.datetime_start else 0.0
            pending = pending or now - started < CLAIM_WAIT
        if slot is None:
            if finished and "steplaw.D" in t.user_attrs:  # a study made before slots
                n, d = t.user_attrs.get("steplaw.N", 0), t.user_attrs["steplaw.D"]
                legacy.append((float(n), float(d)))
            continue
        if slot < 0:
            continue
        if finished or live:
            held.add(slot)
        if finished:
            final.add(slot)
    for key in legacy:  # old trials count by scale, as before
        for i, s in enumerate(schedule):
            if i not in held and (float(s.N or 0), float(s.D or 0)) == key:
                held.add(i)
                final.add(i)
                break
    return held, final, pending


def transient_storage_error(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or its cause) is a storage that went away for a moment: a database
    restarting or a connection dropped (PostgreSQL), a file locked by another process
    (SQLite)."""
    import sqlalchemy.exc as sa
    from optuna.exceptions import StorageInternalError

    kinds = (StorageInternalError, sa.OperationalError, sa.InterfaceError, sa.DisconnectionError)
    while exc is not None:
        if isinstance(exc, kinds):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


_GAVE_UP = "_steplaw_storage_gave_up"


def gave_up_on_storage(exc: BaseException) -> bool:
    """Whether ``exc`` is a storage error :func:`retry_storage` retried for
    :data:`TRANSIENT_WAIT` seconds and gave up on."""
    return bool(getattr(exc, _GAVE_UP, False))


def retry_storage(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, tried again with a growing pause (0.25 s, doubling, at most
    4 s) for up to :data:`TRANSIENT_WAIT` seconds while the storage is away
    (:func:`transient_storage_error`); other errors, and a storage away longer, are raised —
    the latter marked (:func:`gave_up_on_storage`), so that only it is reported as a storage
    that did not recover, never an error of the objective's own that looks like one."""
    return _retry(fn, args, kwargs, TRANSIENT_WAIT)


def retry_opening(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """:func:`retry_storage` for :data:`OPEN_WAIT` seconds: a worker that starts while the
    database restarts waits for it; one given a server that is not there says so in bounded
    time (a silent server: two connection timeouts)."""
    return _retry(fn, args, kwargs, OPEN_WAIT)


def _retry(fn: Callable[..., Any], args: Any, kwargs: Any, wait: float) -> Any:
    deadline, delay = time.monotonic() + wait, 0.25
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not transient_storage_error(exc):
                raise
            if time.monotonic() + delay > deadline:
                with contextlib.suppress(Exception):  # an exception that takes no attribute
                    setattr(exc, _GAVE_UP, True)
                raise
            check_stop()  # a stop does not wait for a database that is away
            time.sleep(delay)
            delay = min(2 * delay, 4.0)


def claim_slot(study: Any, trial: Any, schedule: Sequence[Scale]) -> int | None:
    """The planned slot this new trial runs: the lowest one free once every older running trial
    has claimed its own and chosen its point (so two workers never take the same slot, and the
    sampler sees the other workers' points as pending), or ``None``."""
    deadline = time.monotonic() + CLAIM_WAIT
    checked = time.monotonic()
    while True:
        held, _, pending = slots(retry_storage(all_trials, study), schedule, trial.number)
        if not pending or time.monotonic() > deadline:
            break
        check_stop()
        time.sleep(0.05)
        if time.monotonic() - checked > 1.0:  # the older trial's process may have died
            retry_storage(recover_lost, study)
            checked = time.monotonic()
    free = [i for i in range(len(schedule)) if i not in held]
    return free[0] if free else None


def slot_taken(trials: Sequence[Any], me: Any, slot: int) -> bool:
    """Whether another trial makes ``me`` redundant for ``slot``: a finished run of it, or a
    lower-numbered trial waiting or running for it (two copies of one lost trial, queued by two
    processes in a race: the older one runs)."""
    import optuna

    state = optuna.trial.TrialState
    for t in trials:
        if t.number == me.number or slot_of(t) != slot:
            continue
        if _final(t):
            return True
        if t.state in (state.RUNNING, state.WAITING) and t.number < me.number:
            return True
    return False


def others_alive(trials: Sequence[Any]) -> bool:
    """Whether a trial this process does not run is RUNNING in a process this machine sees
    alive. A study without heartbeats waits for those; it could never learn of the death of a
    process on another machine, so it does not wait for those."""
    import optuna

    return any(
        t.state == optuna.trial.TrialState.RUNNING
        and t._trial_id not in _RUNNING_HERE
        and owner_state(t) == "alive"
        for t in trials
    )
