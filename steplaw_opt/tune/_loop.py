"""The run loop: ask the sampler, run the objective at the slot's scale, tell the study.

Any number of processes may run :func:`run_study` on one study (:mod:`steplaw_opt.tune._workers`
keeps them from running one slot twice); :func:`work` wraps it with the MLflow record and
returns the refined optimum.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from steplaw_opt._records import (
    ATTR_BUDGET,
    ATTR_COMPUTE,
    ATTR_FAILURE,
    ATTR_INTERRUPTED_BY,
    ATTR_OWNER,
    ATTR_SECONDS,
    ATTR_SLOT,
    ATTR_STARTED,
    ATTR_TIME_SPENT,
    ATTR_TIME_STOP,
    BATCH_PARAM,
    INTERRUPTED,
    LR_PARAM,
    NO_SLOT,
    NOTE_PREFIX,
    mask_url,
)
from steplaw_opt.errors import SteplawInputError, SteplawStorageError
from steplaw_opt.objectives import Objective, RunContext, TrialFailed
from steplaw_opt.objectives._command import steps_for
from steplaw_opt.scale import Scale
from steplaw_opt.tune import _time, _workers
from steplaw_opt.tune._config import StudySetup
from steplaw_opt.tune._plan import run_cost
from steplaw_opt.tune._result import TrialEvent, TuneResult
from steplaw_opt.tune._study import best_per_scale, compute_spent
from steplaw_opt.tune._workers import (
    _RUNNING_HERE,
    Heartbeat,
    all_trials,
    ask,
    check_stop,
    claim_slot,
    deferred_stops,
    gave_up_on_storage,
    heartbeat_on,
    interruptible,
    others_alive,
    owner_record,
    recover_lost,
    retry_storage,
    slot_of,
    slot_taken,
    slots,
    stop_reason,
    stop_signals,
    transient_storage_error,
)

LOST_WHILE_RUNNING = (
    "lost: another process failed this trial while it ran (its heartbeats did not reach the "
    "storage); its re-queued copy runs the slot"
)


def work(
    study: Any,
    setup: StudySetup,
    objective: Objective,
    storage_url: str,
    on_trial: Callable[[TrialEvent], None] | None,
    callbacks: Sequence[Callable[[Any, Any], None]],
    tracker: Any,
) -> TuneResult:
    """Run the worker loop on an open study, then compute the refined optimum. SIGINT, SIGTERM
    and SIGHUP stop it cleanly (:func:`~steplaw_opt.tune._workers.stop_signals`)."""
    with stop_signals():
        try:
            return _work(study, setup, objective, storage_url, on_trial, callbacks, tracker)
        except SteplawInputError:
            raise
        except Exception as exc:
            if not gave_up_on_storage(exc):
                raise  # the objective's own errors too, a database error of its own included
            # the database stayed away through the retries: one line, not a traceback
            raise SteplawStorageError(
                f"the study's storage {mask_url(storage_url)!r} failed and did not recover "
                f"within {_workers.TRANSIENT_WAIT:g} s of retries: "
                f"{_storage_message(exc, storage_url)}; the finished trials are kept: run the "
                "same command again when it answers"
            ) from None


def _storage_message(exc: BaseException, url: str) -> str:
    """The first line of the database's own error (what caused Optuna's wrapper), masked."""
    from steplaw_opt._records import mask_secrets

    inner: BaseException = exc
    while inner.__cause__ is not None:
        inner = inner.__cause__
    text = str(inner).strip().splitlines()[0] if str(inner).strip() else type(inner).__name__
    text = mask_secrets(text, url)
    return text if len(text) <= 300 else text[:299] + "…"


def _work(
    study: Any,
    setup: StudySetup,
    objective: Objective,
    storage_url: str,
    on_trial: Callable[[TrialEvent], None] | None,
    callbacks: Sequence[Callable[[Any, Any], None]],
    tracker: Any,
) -> TuneResult:
    from steplaw_opt.samplers import refined_optimum

    target, law_obj, plan = setup.target, setup.law, setup.plan
    retry_storage(recover_lost, study)  # before the MLflow record opens: it ends lost trials' runs
    attrs = retry_storage(lambda: study.user_attrs)
    keeper = _time.TimeKeeper(
        _time.budget_of(attrs, setup.config.time),
        target,
        getattr(objective, "expected_seconds", None),
    )
    if tracker is not None:
        tracker.start(
            study,
            sampler=setup.sampler,
            plan=plan,
            storage=mask_url(storage_url),
            law=law_obj,
            budget=float(attrs.get(ATTR_BUDGET, 0.0)),
            objective=objective.name,
            time_budget=keeper.budget,
        )
    try:
        n_complete, n_failed = run_study(
            study,
            objective,
            setup,
            on_trial,
            [*callbacks, tracker] if tracker is not None else callbacks,
            tracker,
            keeper,
        )
    except BaseException as exc:
        if tracker is not None:
            tracker.abort(exc)
        raise
    refined = retry_storage(
        refined_optimum, study, sampler=setup.sampler, round_batch=setup.config.round_batch
    )
    prediction = law_obj.predict(target)
    out = TuneResult(
        study_name=study.study_name,
        storage=storage_url,
        target=target,
        law=law_obj.name,
        plan=plan,
        refined=refined,
        n_complete=n_complete,
        n_failed=n_failed,
        compute_spent=retry_storage(compute_spent, study),
        law_lr=float(prediction.lr or 0),
        law_batch_tokens=float(prediction.batch_tokens or 0),
    )
    trials = retry_storage(all_trials, study)
    out.extras["run_seconds"] = run_seconds(trials)
    out.extras["notes"] = slow_bound_notes(trials, setup)
    out.extras["time"] = record_time(study, keeper, trials)
    if tracker is not None:
        tracker.finish(out)
        out.extras["mlflow"] = tracker.location()
    return out


def record_time(study: Any, keeper: _time.TimeKeeper, trials: Sequence[Any]) -> dict[str, Any]:
    """The study's time (:meth:`~steplaw_opt.tune._time.TimeKeeper.summary`), written to the
    study too: the wall seconds spent (:data:`~steplaw_opt.tune.ATTR_TIME_SPENT`) and why
    this process stopped starting runs (:data:`~steplaw_opt.tune.ATTR_TIME_STOP`; ``""``:
    it did not)."""
    doc = keeper.summary(trials, _time.now())
    with deferred_stops():
        retry_storage(study.set_user_attr, ATTR_TIME_SPENT, doc["wall_seconds"])
        retry_storage(study.set_user_attr, ATTR_TIME_STOP, doc["stop"] or "")
    return doc


def run_seconds(trials: Sequence[Any]) -> float:
    """The wall time of the study's finished runs, as recorded on each (:data:`ATTR_SECONDS`)."""
    return float(sum(float(t.user_attrs.get(ATTR_SECONDS, 0.0)) for t in trials))


SLOW_BOUND_SHARE = 0.5  # a note when at least this share of the runs sits at the batch floor


def slow_bound_notes(trials: Sequence[Any], setup: StudySetup, *, live: bool = False) -> list[str]:
    """Whether the runs crowd the lower batch bound, where a run needs the most steps for its
    tokens: the compute budget counts tokens, but a step costs about as much wall time at a
    small batch as at a larger one, so such a study takes longer than its compute suggests.
    ``live``: said while the plan still runs (of the runs so far), not after it."""
    done = [t for t in trials if t.state.is_finished() and BATCH_PARAM in t.params]
    low = setup.batch_dist["low"]
    floor = [t for t in done if t.params[BATCH_PARAM] <= low]
    if len(done) < 3 or len(floor) < SLOW_BOUND_SHARE * len(done):
        return []
    spent = run_seconds(floor)
    total = run_seconds(done)
    share = f" and {spent:.0f} s of their {total:.0f} s" if total > 0 else ""
    runs, slower = (
        (
            f"warning: {len(floor)} of the {len(done)} runs so far",
            "the rest will take longer than their",
        )
        if live
        else (f"{len(floor)} of {len(done)} runs", "the study took longer than its")
    )
    return [
        f"{runs} sat at the lower batch bound ({low:g}){share}: at the floor a run takes the "
        f"most steps for its tokens, so {slower} compute suggests; if the optimum is there, a "
        "lower --batch-min may find it, if not, a higher one makes the runs faster"
    ]


def run_study(
    study: Any,
    objective: Objective,
    setup: StudySetup,
    on_trial: Callable[[TrialEvent], None] | None,
    callbacks: Sequence[Callable[[Any, Any], None]],
    tracker: Any,
    keeper: _time.TimeKeeper | None = None,
) -> tuple[int, int]:
    """Run planned slots until every slot is held by a finished trial; (complete, failed).
    With a time budget (``keeper``), no run starts once the time spent plus its predicted
    time would pass it (:func:`~steplaw_opt.tune._time.check_time`).

    Any number of processes may run this loop on one study: each new trial claims a free slot
    (:func:`~steplaw_opt.tune._workers.claim_slot`); a re-queued trial (its process died) keeps
    its slot, parameters and scale; a process with no free slot waits while others still run
    (with heartbeats, or on this machine), so a trial they lose is retried. Whatever stops the
    loop — an error, Ctrl-C, SIGTERM, SIGHUP — leaves no trial of this process RUNNING."""
    import optuna

    state = optuna.trial.TrialState
    schedule = setup.schedule
    best = retry_storage(best_per_scale, study)  # losses at different D are not comparable
    spent = retry_storage(compute_spent, study)
    heartbeat = heartbeat_on(study)
    poll = 0.5
    warned_slow = False  # the slow-bound warning is said once, while runs remain
    while True:
        check_stop()
        retry_storage(recover_lost, study)
        trials = retry_storage(all_trials, study)
        held, final, _ = slots(trials, schedule, None)
        waiting = any(t.state == state.WAITING for t in trials)
        if len(final) >= len(schedule):
            break
        if len(held) >= len(schedule) and not waiting:
            if not heartbeat and not others_alive(trials):
                break  # the rest run in processes this one cannot watch
            time.sleep(poll)  # others still run: wait, their lost trials come back here
            continue
        if keeper is not None and keeper.budget.limited:
            n_waiting = sum(t.state == state.WAITING for t in trials)
            unstarted = len(schedule) - len(held) + n_waiting
            if keeper.check(trials, next_scale(trials, schedule, held, setup.target), unstarted,
                            _time.now()):  # fmt: skip
                break
        timing = (keeper, trials, held)
        trial = None
        try:
            with deferred_stops():  # never a trial created but not owned
                trial = retry_storage(ask, study)
                _RUNNING_HERE.add(trial._trial_id)
                retry_storage(trial.set_user_attr, ATTR_OWNER, owner_record(trial.number))
            ran = _run_trial(study, trial, objective, setup, on_trial, best, spent, tracker, timing)
        except BaseException as exc:
            if trial is not None:
                abandon(study, trial, exc)
            raise
        finally:
            if trial is not None:
                _RUNNING_HERE.discard(trial._trial_id)
        if ran is None:  # pruned: no slot left for it
            continue
        event, key, loss, failure, cost, seconds, clock = ran
        spent += cost
        if loss is not None and loss < best.get(key, math.inf):
            best[key] = loss
        if on_trial is not None:
            notes: list[str] = []
            if not warned_slow and event["index"] + 1 < len(schedule):
                notes = slow_bound_notes(retry_storage(all_trials, study), setup, live=True)
                warned_slow = bool(notes)
            on_trial(
                TrialEvent(
                    **event,
                    loss=loss,
                    failure=failure,
                    best=best.get(key),
                    compute_spent=spent,
                    seconds=seconds,
                    phase="end",
                    notes=tuple(notes),
                    **clock(seconds, None, done=True),
                )
            )
        frozen = retry_storage(study._storage.get_trial, trial._trial_id)
        for cb in callbacks:
            cb(study, frozen)
    trials = retry_storage(study.get_trials, deepcopy=False)
    n_complete = sum(t.state == state.COMPLETE for t in trials)
    n_failed = sum(t.state == state.FAIL for t in trials)
    return n_complete, n_failed


def _run_trial(
    study: Any,
    trial: Any,
    objective: Objective,
    setup: StudySetup,
    on_trial: Callable[[TrialEvent], None] | None,
    best: dict[tuple[float, float], float],
    spent: float,
    tracker: Any,
    timing: tuple[Any, Sequence[Any], set[int]] = (None, (), set()),
) -> tuple[Any, ...] | None:
    """Claim a slot for ``trial`` (or keep a re-queued trial's), choose its point and run it;
    ``None`` when it found no slot and was pruned."""
    import optuna

    schedule, target = setup.schedule, setup.target
    with Heartbeat(study, trial._trial_id):
        frozen = retry_storage(study._storage.get_trial, trial._trial_id)
        slot, reason = slot_of(frozen), NO_SLOT
        if slot is None or slot < 0:
            slot = claim_slot(study, trial, schedule)
            retry_storage(trial.set_user_attr, ATTR_SLOT, -1 if slot is None else slot)
        elif slot_taken(retry_storage(all_trials, study), frozen, slot):
            slot, reason = None, "its slot is taken (run, or queued twice)"
        if slot is None:  # another worker took the last one
            # a copy carries a cost; a retry after a lost reply finds the trial ended: fine
            attrs = {ATTR_COMPUTE: 0.0, ATTR_FAILURE: reason}
            _tell(study, trial, None, attrs, state=optuna.trial.TrialState.PRUNED)
            return None
        if "steplaw.D" in frozen.user_attrs:  # re-queued: the scale it had
            scale = Scale(
                N=float(frozen.user_attrs.get("steplaw.N", 0)),
                D=float(frozen.user_attrs["steplaw.D"]),
                seq_len=int(frozen.user_attrs.get("steplaw.seq_len", target.seq_len)),
            )
        else:
            scale = schedule[slot]
            retry_storage(trial.set_user_attr, "steplaw.N", float(scale.N or 0))
            retry_storage(trial.set_user_attr, "steplaw.D", float(scale.D or 0))
            retry_storage(trial.set_user_attr, "steplaw.seq_len", int(scale.seq_len))
        cost = run_cost(scale, target)
        retry_storage(trial.set_user_attr, ATTR_COMPUTE, cost)
        # a database error choosing the point (a restart, a lock) is retried, not a traceback
        lr = retry_storage(trial.suggest_float, LR_PARAM, *setup.lr_bounds, log=True)
        batch = retry_storage(trial.suggest_int, BATCH_PARAM, **setup.batch_dist)
        started = _time.monotonic()
        clock = _clock(timing, schedule, slot, scale)
        key = (float(scale.N or 0), float(scale.D or 0))
        event = dict(
            number=trial.number,
            index=slot,
            planned=len(schedule),
            scale=scale,
            lr=lr,
            batch_size=batch,
            budget=setup.config.budget,
        )
        if on_trial is not None:
            on_trial(
                TrialEvent(
                    **event,
                    loss=None,
                    failure=None,
                    best=best.get(key),
                    compute_spent=spent,
                    seconds=0.0,
                    phase="start",
                    **clock(0.0, None),
                )
            )
        if tracker is not None:
            tracker.trial_started(study, trial.number)
        per_unit = setup.sampler.space.tokens_per_batch_unit(scale)
        total = steps_for(float(scale.D or 0), float(batch) * per_unit)

        def progress(step: int, loss: float) -> None:  # an intermediate loss: the display's
            if on_trial is not None:
                elapsed = _time.monotonic() - started
                rest = elapsed * (total - step) / step if total and 0 < step < total else None
                on_trial(
                    TrialEvent(
                        **event,
                        loss=float(loss),
                        failure=None,
                        best=best.get(key),
                        compute_spent=spent,
                        seconds=elapsed,
                        phase="progress",
                        step=int(step),
                        total_steps=total,
                        **clock(elapsed, rest),
                    )
                )

        context = RunContext(
            trial_number=trial.number,
            report=lambda step, loss, t=trial: _report(t, step, loss, progress),
            timeout=setup.config.timeout_per_trial,
            stop_check=check_stop,
        )
        check_stop()  # a stop swallowed while the trial was being set up
        loss, failure, cost = run_one(objective, lr, batch, scale, context, study, trial, cost)
    return event, key, loss, failure, cost, _time.monotonic() - started, clock


def _report(
    trial: Any, step: int, loss: float, progress: Callable[[int, float], None] | None = None
) -> None:
    """An intermediate loss, written whole (a stop waits for the write: it is raised in the
    objective's own code, not inside the storage's), then shown."""
    with deferred_stops():
        retry_storage(trial.report, loss, step)
    if progress is not None and math.isfinite(loss):
        progress(step, loss)


def _tell(
    study: Any, trial: Any, value: float | None, attrs: dict[str, Any], state: Any = None
) -> bool:
    """Record the trial's end (its attributes, then COMPLETE with ``value``, or ``state``: FAIL
    unless given) without a stop cutting it in half; ``False`` when the trial had already been
    ended — by another process (it stopped beating, was failed and re-queued), or by this one's
    own try whose reply the database lost before the retry."""
    import optuna

    def write() -> bool:
        try:
            for key, v in attrs.items():
                trial.set_user_attr(key, v)
            if value is None:
                study.tell(trial, state=optuna.trial.TrialState.FAIL if state is None else state)
            else:
                study.tell(trial, value)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
            if study._storage.get_trial(trial._trial_id).state.is_finished():
                return False
            raise
        return True

    with deferred_stops():
        return retry_storage(write)  # a finished run is not lost to a database restarting


def abandon(study: Any, trial: Any, exc: BaseException) -> None:
    """``trial`` was stopped by ``exc`` outside the run itself (while choosing its slot or its
    point, opening its MLflow run …): fail it if it is still RUNNING, "interrupted" for a stop
    (its slot is run again), the error otherwise."""
    import optuna

    with contextlib.suppress(Exception):  # the study is stopping on exc: do not hide it
        if study._storage.get_trial(trial._trial_id).state != optuna.trial.TrialState.RUNNING:
            return
        if isinstance(exc, KeyboardInterrupt):
            attrs = {ATTR_FAILURE: INTERRUPTED, ATTR_INTERRUPTED_BY: stop_reason(exc)}
        elif transient_storage_error(exc):  # the storage went away: run the slot again
            attrs = {ATTR_FAILURE: INTERRUPTED, ATTR_INTERRUPTED_BY: "storage error"}
        else:
            attrs = {ATTR_FAILURE: f"error: {type(exc).__name__}: {exc}"[:500]}
        _tell(study, trial, None, attrs)


def consumed(cost: float, scale: Scale, notes: dict[str, Any]) -> float:
    """The compute a run cut short (diverged, stopped early) actually used: its planned
    ``cost`` times the share of its tokens it recorded training on (``notes["tokens"]``, as
    the built-in trainer records), at most the plan. A run that records nothing (a command's
    job that timed out or crashed) counts in full: nothing says how far it got, and counting
    it whole never reports less spent than was."""
    tokens, d = notes.get("tokens"), float(scale.D or 0)
    if (
        isinstance(tokens, (int, float))
        and not isinstance(tokens, bool)
        and math.isfinite(tokens)
        and tokens >= 0
        and d > 0
    ):
        return float(cost) * min(1.0, float(tokens) / d)
    return float(cost)


def _notes(context: RunContext) -> dict[str, Any]:
    return {
        f"{NOTE_PREFIX}{key}": value
        for key, value in context.notes.items()
        if isinstance(value, (int, float, str, bool))
    }


def run_one(
    objective: Objective,
    lr: float,
    batch: float,
    scale: Scale,
    context: RunContext,
    study: Any,
    trial: Any,
    cost: float = 0.0,
) -> tuple[float | None, str | None, float]:
    """Run one trial and tell the study; returns (loss, failure reason, compute used: the
    planned ``cost``, or what a failed run recorded using, :func:`consumed`). Each end
    records the run's wall time (:data:`ATTR_SECONDS`), and its start the moment it starts
    (:data:`ATTR_STARTED`: what a time budget counts from)."""
    with deferred_stops():
        retry_storage(trial.set_user_attr, ATTR_STARTED, round(_time.now(), 3))
    started = _time.monotonic()

    def timed(attrs: dict[str, Any]) -> dict[str, Any]:
        return {**attrs, ATTR_SECONDS: round(_time.monotonic() - started, 3)}

    try:
        # a stop interrupts an objective's own code anywhere; one that polls is stopped there
        with contextlib.nullcontext() if objective.checks_stops else interruptible():
            loss = objective.run(lr, batch, scale, context)
    except TrialFailed as exc:
        used = consumed(cost, scale, context.notes)
        attrs = timed({**_notes(context), ATTR_FAILURE: exc.reason, ATTR_COMPUTE: used})
        if not _tell(study, trial, None, attrs):
            return None, LOST_WHILE_RUNNING, used
        return None, exc.reason, used
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP: the job's group is stopped
        why = {ATTR_FAILURE: INTERRUPTED, ATTR_INTERRUPTED_BY: stop_reason(exc)}
        _tell(study, trial, None, timed(why))
        raise
    except BaseException as exc:
        why = {ATTR_FAILURE: f"error: {type(exc).__name__}: {exc}"[:500]}
        _tell(study, trial, None, timed(why))
        raise
    notes = timed(_notes(context))
    if not math.isfinite(loss):
        used = consumed(cost, scale, context.notes)
        if not _tell(study, trial, None, {**notes, ATTR_FAILURE: "diverged", ATTR_COMPUTE: used}):
            return None, LOST_WHILE_RUNNING, used
        return None, "diverged", used
    if not _tell(study, trial, loss, notes):
        return None, LOST_WHILE_RUNNING, cost
    return loss, None, cost


def next_scale(
    trials: Sequence[Any], schedule: Sequence[Scale], held: set[int], target: Scale
) -> Scale:
    """The scale of the run this process would start next: a re-queued (waiting) trial's, else
    the lowest free slot's."""
    import optuna

    waiting = [t for t in trials if t.state == optuna.trial.TrialState.WAITING]
    if waiting:
        return _time.scale_of(min(waiting, key=lambda t: t.number), target)
    free = [i for i in range(len(schedule)) if i not in held]
    return schedule[free[0]] if free else target


def _clock(
    timing: tuple[Any, Sequence[Any], set[int]], schedule: Sequence[Scale], slot: int, scale: Scale
) -> Callable[..., dict[str, Any]]:
    """The time fields of this run's events: the study's wall time spent when it started plus
    its own ``elapsed`` seconds, and the predicted rest: its own (``rest``, from its steps, or
    its predicted time less ``elapsed``) and the free slots' after it (at the run's end,
    predicted with its own time measured too)."""
    keeper, trials, held = timing
    if keeper is None:
        return lambda elapsed, rest, done=False: {}
    at = _time.now()
    spent0 = _time.wall_spent(trials, at)
    gpu0 = _time.run_spent(trials, at) * keeper.budget.gpus_per_run / 3600.0
    model = keeper.model(trials)
    cost = keeper.cost(scale)
    later = [keeper.cost(schedule[i]) for i in range(len(schedule)) if i not in held and i != slot]
    after = _time.plan_seconds_left(model, later)
    mine = model.predict(cost) if model is not None else None
    budget = keeper.budget if keeper.budget.limited else None

    def fields(elapsed: float, rest: float | None, done: bool = False) -> dict[str, Any]:
        own = rest if rest is not None else None if mine is None else max(0.0, mine - elapsed)
        rest_after = after
        if done:  # this run's time is known now
            own = 0.0
            pairs = [*_time.measured_runs(trials), (cost, elapsed)]
            rest_after = _time.plan_seconds_left(_time.fit_run_times(pairs), later)
        left = None if own is None or rest_after is None else own + rest_after
        if left is not None and budget is not None and budget.seconds is not None:
            left = min(left, max(0.0, budget.seconds - spent0 - elapsed))
        return {
            "time_spent": spent0 + elapsed,
            "time_left": left,
            "time_budget": budget,
            "gpu_hours": gpu0 + elapsed * keeper.budget.gpus_per_run / 3600.0,
        }

    return fields
