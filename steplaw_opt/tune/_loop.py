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
    ATTR_SLOT,
    BATCH_PARAM,
    INTERRUPTED,
    LR_PARAM,
    NO_SLOT,
    NOTE_PREFIX,
    mask_url,
)
from steplaw_opt.objectives import Objective, RunContext, TrialFailed
from steplaw_opt.scale import Scale
from steplaw_opt.tune._config import StudySetup
from steplaw_opt.tune._plan import run_cost
from steplaw_opt.tune._result import TrialEvent, TuneResult
from steplaw_opt.tune._study import best_per_scale, compute_spent
from steplaw_opt.tune._workers import (
    _RUNNING_HERE,
    ATTR_INTERRUPTED_BY,
    ATTR_OWNER,
    Heartbeat,
    all_trials,
    ask,
    check_stop,
    claim_slot,
    deferred_stops,
    heartbeat_on,
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
        return _work(study, setup, objective, storage_url, on_trial, callbacks, tracker)


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
    if tracker is not None:
        tracker.start(
            study,
            sampler=setup.sampler,
            plan=plan,
            storage=mask_url(storage_url),
            law=law_obj,
            budget=float(study.user_attrs.get(ATTR_BUDGET, 0.0)),
            objective=objective.name,
        )
    try:
        n_complete, n_failed = run_study(
            study,
            objective,
            setup,
            on_trial,
            [*callbacks, tracker] if tracker is not None else callbacks,
            tracker,
        )
    except BaseException as exc:
        if tracker is not None:
            tracker.abort(exc)
        raise
    refined = refined_optimum(study, sampler=setup.sampler, round_batch=setup.config.round_batch)
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
        compute_spent=compute_spent(study),
        law_lr=float(prediction.lr or 0),
        law_batch_tokens=float(prediction.batch_tokens or 0),
    )
    if tracker is not None:
        tracker.finish(out)
        out.extras["mlflow"] = tracker.location()
    return out


def run_study(
    study: Any,
    objective: Objective,
    setup: StudySetup,
    on_trial: Callable[[TrialEvent], None] | None,
    callbacks: Sequence[Callable[[Any, Any], None]],
    tracker: Any,
) -> tuple[int, int]:
    """Run planned slots until every slot is held by a finished trial; (complete, failed).

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
        trial = None
        try:
            with deferred_stops():  # never a trial created but not owned
                trial = retry_storage(ask, study)
                _RUNNING_HERE.add(trial._trial_id)
                trial.set_user_attr(ATTR_OWNER, owner_record(trial.number))
            ran = _run_trial(study, trial, objective, setup, on_trial, best, spent, tracker)
        except BaseException as exc:
            if trial is not None:
                abandon(study, trial, exc)
            raise
        finally:
            if trial is not None:
                _RUNNING_HERE.discard(trial._trial_id)
        if ran is None:  # pruned: no slot left for it
            continue
        event, key, loss, failure, cost, seconds = ran
        spent += cost
        if loss is not None and loss < best.get(key, math.inf):
            best[key] = loss
        if on_trial is not None:
            on_trial(
                TrialEvent(
                    **event,
                    loss=loss,
                    failure=failure,
                    best=best.get(key),
                    compute_spent=spent,
                    seconds=seconds,
                    phase="end",
                )
            )
        frozen = study._storage.get_trial(trial._trial_id)
        for cb in callbacks:
            cb(study, frozen)
    trials = study.get_trials(deepcopy=False)
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
) -> tuple[dict[str, Any], tuple[float, float], float | None, str | None, float, float] | None:
    """Claim a slot for ``trial`` (or keep a re-queued trial's), choose its point and run it;
    ``None`` when it found no slot and was pruned."""
    import optuna

    schedule, target = setup.schedule, setup.target
    with Heartbeat(study, trial._trial_id):
        frozen = retry_storage(study._storage.get_trial, trial._trial_id)
        slot, reason = slot_of(frozen), NO_SLOT
        if slot is None or slot < 0:
            slot = claim_slot(study, trial, schedule)
            trial.set_user_attr(ATTR_SLOT, -1 if slot is None else slot)
        elif slot_taken(retry_storage(all_trials, study), frozen, slot):
            slot, reason = None, "its slot is taken (run, or queued twice)"
        if slot is None:  # another worker took the last one
            with deferred_stops():
                trial.set_user_attr(ATTR_COMPUTE, 0.0)  # a re-queued copy carries a cost
                trial.set_user_attr(ATTR_FAILURE, reason)
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return None
        if "steplaw.D" in frozen.user_attrs:  # re-queued: the scale it had
            scale = Scale(
                N=float(frozen.user_attrs.get("steplaw.N", 0)),
                D=float(frozen.user_attrs["steplaw.D"]),
                seq_len=int(frozen.user_attrs.get("steplaw.seq_len", target.seq_len)),
            )
        else:
            scale = schedule[slot]
            trial.set_user_attr("steplaw.N", float(scale.N or 0))
            trial.set_user_attr("steplaw.D", float(scale.D or 0))
            trial.set_user_attr("steplaw.seq_len", int(scale.seq_len))
        cost = run_cost(scale, target)
        trial.set_user_attr(ATTR_COMPUTE, cost)
        lr = trial.suggest_float(LR_PARAM, *setup.lr_bounds, log=True)
        batch = trial.suggest_int(BATCH_PARAM, **setup.batch_dist)
        started = time.perf_counter()
        key = (float(scale.N or 0), float(scale.D or 0))
        event = dict(
            number=trial.number,
            index=slot,
            planned=len(schedule),
            scale=scale,
            lr=lr,
            batch_size=batch,
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
                )
            )
        if tracker is not None:
            tracker.trial_started(study, trial.number)
        context = RunContext(
            trial_number=trial.number,
            report=lambda step, loss, t=trial: t.report(loss, step),
            timeout=setup.config.timeout_per_trial,
            stop_check=check_stop,
        )
        check_stop()  # a stop swallowed while the trial was being set up
        loss, failure = run_one(objective, lr, batch, scale, context, study, trial)
    return event, key, loss, failure, cost, time.perf_counter() - started


def _tell(study: Any, trial: Any, value: float | None, attrs: dict[str, Any]) -> bool:
    """Record the trial's end (its attributes, then COMPLETE with ``value`` or FAIL) without a
    stop cutting it in half; ``False`` when the trial had already been ended by another
    process (it stopped beating, was failed and re-queued)."""
    import optuna

    def write() -> bool:
        try:
            for key, v in attrs.items():
                trial.set_user_attr(key, v)
            if value is None:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
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


def run_one(
    objective: Objective,
    lr: float,
    batch: float,
    scale: Scale,
    context: RunContext,
    study: Any,
    trial: Any,
) -> tuple[float | None, str | None]:
    """Run one trial and tell the study; returns (loss, failure reason)."""
    try:
        loss = objective.run(lr, batch, scale, context)
    except TrialFailed as exc:
        if not _tell(study, trial, None, {ATTR_FAILURE: exc.reason}):
            return None, LOST_WHILE_RUNNING
        return None, exc.reason
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP: the job's group is stopped
        _tell(
            study, trial, None, {ATTR_FAILURE: INTERRUPTED, ATTR_INTERRUPTED_BY: stop_reason(exc)}
        )
        raise
    except BaseException as exc:
        _tell(study, trial, None, {ATTR_FAILURE: f"error: {type(exc).__name__}: {exc}"[:500]})
        raise
    notes = {
        f"{NOTE_PREFIX}{key}": value
        for key, value in context.notes.items()
        if isinstance(value, (int, float, str, bool))
    }
    if not math.isfinite(loss):
        if not _tell(study, trial, None, {**notes, ATTR_FAILURE: "diverged"}):
            return None, LOST_WHILE_RUNNING
        return None, "diverged"
    if not _tell(study, trial, loss, notes):
        return None, LOST_WHILE_RUNNING
    return loss, None
