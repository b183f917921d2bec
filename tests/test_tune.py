"""The tune workflow on synthetic objectives: plan, per-trial scales, failures, resume after an
interrupted study, and the refined optimum."""

from __future__ import annotations

import math

import optuna
import pytest

from steplaw_opt import Scale, SteplawInputError, load_law
from steplaw_opt.objectives import CallableObjective, TrialFailed
from steplaw_opt.tune import ATTR_FAILURE, INTERRUPTED, tune

TARGET = Scale(N=4.29e8, D=4e10)
LAW = load_law("step-law")
SHIFT = (0.25, -0.2)  # the synthetic optimum sits here in (u, v) at every scale


def bowl(lr: float, batch_size: float, scale: Scale) -> float:
    u = math.log(lr / LAW.lr_at(scale)) - SHIFT[0]
    v = math.log(batch_size * scale.seq_len / LAW.batch_tokens_at(scale)) - SHIFT[1]
    # A loss that falls with D, as a real one does; the bowl is the same in (u, v).
    return (2.0 + 1e10 / float(scale.D or 1)) * math.exp(0.0064 * u * u + 0.006 * v * v)


def test_tune_pools_proxy_runs_and_refines(tmp_path):
    events = []
    result = tune(
        TARGET,
        CallableObjective(bowl),
        storage=f"sqlite:///{tmp_path}/t.db",
        seed=0,
        on_trial=events.append,
    )
    assert result.n_complete == result.plan.total_runs == 10
    assert result.compute_spent == pytest.approx(result.plan.compute)
    study = optuna.load_study(study_name=result.study_name, storage=result.storage)
    scales = {t.user_attrs["steplaw.D"] for t in study.trials}
    assert scales == {4e10 / 16, 4e10 / 8, 4e10 / 4}
    assert study.user_attrs["steplaw.target.D"] == 4e10
    opt = result.refined
    assert opt.u == pytest.approx(SHIFT[0], abs=0.12)
    assert opt.v == pytest.approx(SHIFT[1], abs=0.12)
    assert [e.phase for e in events[:2]] == ["start", "end"]


def test_failures_are_recorded_with_their_reason(tmp_path):
    def sometimes(lr, batch_size, scale):
        if lr > LAW.lr_at(scale) * 1.2:
            raise TrialFailed("diverged")
        return bowl(lr, batch_size, scale)

    result = tune(TARGET, CallableObjective(sometimes), storage=":memory:", seed=1)
    assert result.n_failed >= 1
    assert result.n_complete + result.n_failed == result.plan.total_runs


def test_nan_loss_is_a_diverged_failure():
    result = tune(
        TARGET, CallableObjective(lambda lr, b, s: float("nan")), storage=":memory:", budget=0.2
    )
    assert result.n_complete == 0 and result.n_failed == result.plan.total_runs


def test_resume_after_ctrl_c_reruns_only_the_interrupted_run(tmp_path):
    url = f"sqlite:///{tmp_path}/r.db"
    calls = {"n": 0}

    def interrupting(lr, batch_size, scale):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return bowl(lr, batch_size, scale)

    with pytest.raises(KeyboardInterrupt):
        tune(TARGET, CallableObjective(interrupting), storage=url, study_name="s", seed=0)
    study = optuna.load_study(study_name="s", storage=url)
    assert [t.state for t in study.trials].count(optuna.trial.TrialState.COMPLETE) == 3
    assert study.trials[-1].user_attrs[ATTR_FAILURE] == INTERRUPTED
    assert all(t.state.is_finished() for t in study.trials)  # nothing left RUNNING
    result = tune(TARGET, CallableObjective(bowl), storage=url, study_name="s", seed=0)
    assert result.n_complete == 10  # 3 before, 7 after: the interrupted one ran again
    assert calls["n"] == 4


def test_a_study_made_for_another_target_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path}/x.db"
    tune(TARGET, CallableObjective(bowl), storage=url, study_name="s", budget=0.1)
    with pytest.raises(SteplawInputError, match=r"steplaw\.target\.D"):
        tune(
            TARGET.with_tokens(8e10),
            CallableObjective(bowl),
            storage=url,
            study_name="s",
            budget=0.1,
        )


def test_batch_multiple_and_bounds(tmp_path):
    result = tune(
        TARGET,
        CallableObjective(bowl),
        storage=":memory:",
        batch_multiple=8,
        budget=0.3,
        round_batch=8,
    )
    assert result.refined.batch_sequences_rounded % 8 == 0
    with pytest.raises(SteplawInputError, match="exclude the whole trust region"):
        tune(TARGET, CallableObjective(bowl), storage=":memory:", lr_bounds=(0.5, 0.9))
    with pytest.raises(SteplawInputError, match="multiple"):
        tune(
            TARGET,
            CallableObjective(bowl),
            storage=":memory:",
            batch_multiple=10_000,
            batch_bounds=(16, 2048),
        )


def test_intermediate_losses_reach_the_display_with_the_runs_steps():
    """An objective's intermediate losses become "progress" events (step, the run's steps,
    elapsed, the budget) between its start and end, and the progress line reads them."""
    from steplaw_opt.cli._render_tune import run_line
    from steplaw_opt.objectives import Objective, RunContext

    class Reporting(Objective):
        def run(self, lr: float, batch_size: float, scale: Scale, context: RunContext) -> float:
            assert context.report is not None
            for step in (10, 20, 30):
                context.report(step, 5.0 - step / 100)
            return bowl(lr, batch_size, scale)

    events = []
    tune(TARGET, Reporting(), storage=":memory:", seed=0, n_trials=2, on_trial=events.append)
    first = [e for e in events if e.number == 0]
    assert [e.phase for e in first] == ["start", "progress", "progress", "progress", "end"]
    step = first[2]
    tokens_per_step = step.batch_size * step.scale.seq_len
    assert step.step == 20
    assert step.total_steps == math.ceil(step.scale.D / tokens_per_step)
    assert step.loss == pytest.approx(4.8) and step.seconds >= 0 and step.budget == 1.0
    line = run_line(step, "D=2.5B")
    assert line.startswith(f"run 1/{step.planned} (trial 0) at D=2.5B")
    assert f"step 20/{step.total_steps:,}" in line and "loss 4.8000" in line and "left" in line
    assert "spent 0 of 1" in line


def test_each_run_records_its_wall_time_and_a_crowded_batch_floor_is_said():
    """steplaw.seconds on every run; the result sums them; runs crowding the lower batch
    bound (where a run is slowest per token) give a note naming the bound."""
    import time as _time

    def prefers_large(lr, batch_size, scale):
        _time.sleep(0.01)
        u = math.log(lr / LAW.lr_at(scale))
        return 3.0 + 0.01 * u * u + 1.0 / batch_size  # larger batches are better: off the floor

    def small(lr, batch_size, scale):
        return 3.0 + batch_size / 1e4  # lower with a smaller batch: the runs go to the floor

    # the law puts the proxies' batch near 70-160 sequences: a floor at 150 is where they go
    ends = []
    result = tune(TARGET, CallableObjective(small), storage=":memory:", seed=0, n_trials=6,
                  batch_bounds=(150, 2048),
                  on_trial=lambda e: ends.append(e) if e.phase == "end" else None)  # fmt: skip
    seconds = result.extras["run_seconds"]
    assert seconds >= 0
    notes = result.extras["notes"]
    assert notes and "lower batch bound (150)" in notes[0]
    # said once while the plan still runs, not only at its end
    live = [(i, n) for i, e in enumerate(ends) for n in e.notes]
    assert len(live) == 1 and live[0][0] < len(ends) - 1
    assert "runs so far sat at the lower batch bound (150)" in live[0][1]
    quiet = []
    other = tune(TARGET, CallableObjective(prefers_large), storage=":memory:", seed=0,
                 n_trials=6, batch_bounds=(16, 2048), on_trial=quiet.append)  # fmt: skip
    assert other.extras["notes"] == [] and other.extras["run_seconds"] >= 0.05
    assert not [n for e in quiet for n in e.notes]
