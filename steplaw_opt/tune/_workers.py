"""Many processes on one study: planned slots, claims, heartbeats and stale trials.

Every planned run is a slot (its index in the plan's schedule). A new trial claims the lowest
free slot once every older running trial has claimed its own and chosen its point, so two
workers never run one slot and the sampler sees the others' points as pending. With heartbeats
(SQL storages) a trial whose worker died is failed by Optuna and re-queued with its slot,
parameters and scale; the loop (:mod:`steplaw_opt.tune._loop`) runs it again.
"""

from __future__ import annotations

import signal
import threading
import time
import warnings
from collections.abc import Sequence
from typing import Any

from steplaw_opt._records import ATTR_FAILURE, ATTR_SLOT, BATCH_PARAM, INTERRUPTED, LR_PARAM
from steplaw_opt.scale import Scale

DEFAULT_HEARTBEAT = 10  # seconds, for the CLI's shared studies
CLAIM_WAIT = 60.0  # seconds a new trial waits for older trials to claim their slot


class Heartbeat:
    """Beats for one running trial in a background thread (what ``study.optimize`` does)."""

    def __init__(self, study: Any, trial_id: int) -> None:
        from optuna.storages._heartbeat import get_heartbeat_thread

        self._thread = get_heartbeat_thread(trial_id, study._storage)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._thread.join()


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


def all_trials(study: Any) -> list[Any]:
    """Every trial, read from the storage now (no cache: other workers write too)."""
    return list(study._storage.get_all_trials(study._study_id, deepcopy=False))


def slot_of(t: Any) -> int | None:
    slot = t.user_attrs.get(ATTR_SLOT)
    return int(slot) if isinstance(slot, (int, float)) and not isinstance(slot, bool) else None


def slots(
    trials: Sequence[Any], schedule: Sequence[Scale], me: int | None, heartbeat: bool
) -> tuple[set[int], set[int], bool]:
    """(slots held by any trial but ``me``, slots held by finished trials, whether an older
    trial is still choosing its slot). A slot is held by a COMPLETE trial, a trial that failed
    for real, a RUNNING or WAITING trial, and, with heartbeats, a trial failed because its
    worker died (its re-queued copy holds it too). An interrupted trial frees its slot."""
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
        slot, failure = slot_of(t), t.user_attrs.get(ATTR_FAILURE)
        real_fail = t.state == state.FAIL and failure not in (None, INTERRUPTED)
        finished = t.state == state.COMPLETE or real_fail
        dead = t.state == state.FAIL and failure is None and heartbeat
        live = t.state == state.WAITING or (t.state == state.RUNNING and heartbeat)
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
        if finished or dead or live:
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


def claim_slot(study: Any, trial: Any, schedule: Sequence[Scale]) -> int | None:
    """The planned slot this new trial runs: the lowest one free once every older running trial
    has claimed its own and chosen its point (so two workers never take the same slot, and the
    sampler sees the other workers' points as pending), or ``None``."""
    heartbeat = heartbeat_on(study)
    deadline = time.monotonic() + CLAIM_WAIT
    while True:
        held, _, pending = slots(all_trials(study), schedule, trial.number, heartbeat)
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    free = [i for i in range(len(schedule)) if i not in held]
    return free[0] if free else None


def sigterm_as_interrupt() -> Any:
    """Make SIGTERM take Ctrl-C's clean path (the running trial is failed "interrupted", its
    MLflow run KILLED); returns the previous handler. Main thread only."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)
