"""The run loop: ask the sampler, run the objective at the slot's scale, tell the study.

Any number of processes may run :func:`run_study` on one study (:mod:`steplaw_opt.tune._workers`
keeps them from running one slot twice); :func:`work` wraps it with the MLflow record and
returns the refined optimum.
"""

from __future__ import annotations

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
    Heartbeat,
    all_trials,
    ask,
    claim_slot,
    fail_stale,
    heartbeat_on,
    slot_of,
    slots,
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
    """Run the worker loop on an open study, then compute the refined optimum."""
    from steplaw_opt.samplers import refined_optimum

    target, law_obj, plan = setup.target, setup.law, setup.plan
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
    (:func:`~steplaw_opt.tune._workers.claim_slot`); a re-queued trial (its worker died) keeps
    its slot, parameters and scale; a worker with no free slot waits while others still run, so
    a trial they lose is retried."""
    import optuna

    state = optuna.trial.TrialState
    schedule, target = setup.schedule, setup.target
    best = best_per_scale(study)  # losses at different D are not comparable
    spent = compute_spent(study)
    heartbeat = heartbeat_on(study)
    poll = 0.5
    while True:
        fail_stale(study)
        trials = all_trials(study)
        held, final, _ = slots(trials, schedule, None, heartbeat)
        waiting = any(t.state == state.WAITING for t in trials)
        if len(final) >= len(schedule):
            break
        if len(held) >= len(schedule) and not waiting:
            if not heartbeat:
                break
            time.sleep(poll)  # others still run: wait, their lost trials come back here
            continue
        trial = ask(study)
        with Heartbeat(study, trial._trial_id):
            slot = slot_of(study._storage.get_trial(trial._trial_id))
            if slot is None or slot < 0:
                slot = claim_slot(study, trial, schedule)
                trial.set_user_attr(ATTR_SLOT, -1 if slot is None else slot)
            if slot is None:  # another worker took the last one
                trial.set_user_attr(ATTR_FAILURE, NO_SLOT)
                study.tell(trial, state=state.PRUNED)
                continue
            frozen = study._storage.get_trial(trial._trial_id)
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
            try:
                lr = trial.suggest_float(LR_PARAM, *setup.lr_bounds, log=True)
                batch = trial.suggest_int(BATCH_PARAM, **setup.batch_dist)
            except BaseException as exc:
                trial.set_user_attr(ATTR_FAILURE, f"error: {type(exc).__name__}: {exc}"[:500])
                study.tell(trial, state=state.FAIL)
                raise
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
            )
            loss, failure = run_one(objective, lr, batch, scale, context, study, trial)
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
                    seconds=time.perf_counter() - started,
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
    import optuna

    fail = optuna.trial.TrialState.FAIL
    try:
        loss = objective.run(lr, batch, scale, context)
    except TrialFailed as exc:
        trial.set_user_attr(ATTR_FAILURE, exc.reason)
        study.tell(trial, state=fail)
        return None, exc.reason
    except KeyboardInterrupt:
        trial.set_user_attr(ATTR_FAILURE, INTERRUPTED)
        study.tell(trial, state=fail)
        raise
    except BaseException as exc:
        trial.set_user_attr(ATTR_FAILURE, f"error: {type(exc).__name__}: {exc}"[:500])
        study.tell(trial, state=fail)
        raise
    for key, value in context.notes.items():
        if isinstance(value, (int, float, str, bool)):
            trial.set_user_attr(f"{NOTE_PREFIX}{key}", value)
    if not math.isfinite(loss):
        trial.set_user_attr(ATTR_FAILURE, "diverged")
        study.tell(trial, state=fail)
        return None, "diverged"
    study.tell(trial, loss)
    return loss, None
