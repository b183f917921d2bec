"""``tune()`` and ``run_worker()``: a scale, an objective and a budget in; the refined optimum out.

    target ──► law prediction ──► proxy plan ──► Optuna study (storage) ◄── sampler
                                                      │
                        objective (callable / command / built-in trainer / replay)
                                                      │
                                                      ▼
                                     refined optimum at the target scale

The study is the whole state: its user attributes hold the target, the law, the budget and the
:class:`~steplaw_opt.tune.TuneConfig`; each trial's user attributes its scale (``steplaw.N``,
``steplaw.D``, ``steplaw.seq_len``), its slot in the plan and, for a failed run, the reason
(``steplaw.failure``). Running the same call again resumes the study: finished runs count, runs
interrupted by Ctrl-C are run again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from steplaw_opt._records import ATTR_CONFIG, mask_url, study_target
from steplaw_opt.errors import SteplawInputError
from steplaw_opt.objectives import Objective
from steplaw_opt.priors import Law
from steplaw_opt.priors._law import BatchRounding
from steplaw_opt.scale import Scale
from steplaw_opt.space import BatchUnit
from steplaw_opt.tune._config import SamplerName, StudySetup, TuneConfig
from steplaw_opt.tune._loop import work
from steplaw_opt.tune._result import TrialEvent, TuneResult
from steplaw_opt.tune._study import (
    DEFAULT_STORAGE,
    default_study_name,
    load_tuned_study,
    make_storage,
    open_study,
)


def tune(
    target: Scale,
    objective: Objective,
    *,
    config: TuneConfig | None = None,
    law: str | Path | Law = "step-law",
    budget: float = 1.0,
    n_trials: int | None = None,
    sampler: SamplerName = "plateau",
    seed: int | None = None,
    batch_unit: BatchUnit = "sequences",
    lr_bounds: tuple[float, float] | None = None,
    batch_bounds: tuple[float, float] | None = None,
    batch_multiple: int | None = None,
    round_batch: BatchRounding = "none",
    timeout_per_trial: float | None = None,
    smaller_n: bool = False,
    target_runs: int = 0,
    heartbeat_interval: int | None = None,
    objective_spec: dict[str, Any] | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    on_trial: Callable[[TrialEvent], None] | None = None,
    callbacks: Sequence[Callable[[Any, Any], None]] = (),
    tracker: Any = None,
    create_only: bool = False,
    refit_law: str | Path | None = None,
) -> TuneResult | None:
    """Tune the learning rate and batch size of a ``target`` run with short proxy runs.

    Plans proxy runs worth ``budget`` target-run equivalents
    (:func:`~steplaw_opt.tune.plan_proxies`), runs them through ``objective`` in an Optuna study
    driven by the plateau sampler, and returns the refined optimum at the target scale. Running
    it again with the same storage and study name resumes the study.

    The run settings (``law`` … ``objective_spec``) are the fields of :class:`TuneConfig`: give
    them as keywords, or as one ``config`` — not both. They are checked before anything is
    created, stored in the study, and rebuilt from it by every worker.

    Args:
        target: the scale of the run you are about to pay for.
        objective: how a run is made (:mod:`steplaw_opt.objectives`).
        config: the run settings as one object (see :class:`TuneConfig` for each field).
        storage: an Optuna storage URL (default: ``sqlite:///steplaw-opt.db`` in the working
            folder; PostgreSQL for many workers; ``":memory:"`` for a throwaway study).
        study_name: default ``steplaw-<law>-N<size>-D<size>``.
        on_trial: called when a run starts and ends (progress displays).
        callbacks: Optuna-style ``f(study, frozen_trial)`` called after each run.
        tracker: an :class:`~steplaw_opt.tracking.MlflowTracker` to record the study in MLflow
            (default: no tracking; the CLI tracks unless ``--no-mlflow``). Its parent run id is
            kept in the study, so a resumed study continues the same MLflow run; whatever stops
            the study ends the runs FAILED (KILLED for Ctrl-C).
        create_only: create the study (and the MLflow parent run) and return ``None``; workers
            (:func:`run_worker`) run the trials.
        refit_law: after the study, write the law refined by its runs to this ``.toml`` card.

    Example:
        >>> import math
        >>> from steplaw_opt import Scale
        >>> from steplaw_opt.objectives import CallableObjective
        >>> from steplaw_opt.tune import tune
        >>> def bowl(lr, batch_size, scale):  # a stand-in for a training run
        ...     return 3.0 + math.log(lr / 2e-3) ** 2 + 0.1 * math.log(batch_size / 256) ** 2
        >>> result = tune(Scale(N=1e9, D=1e11), CallableObjective(bowl), budget=0.5,
        ...               storage=":memory:")
        >>> 1e-3 < result.refined.lr < 4e-3
        True
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    given = TuneConfig(
        law=law,
        budget=budget,
        n_trials=n_trials,
        target_runs=target_runs,
        sampler=sampler,
        seed=seed,
        batch_unit=batch_unit,
        lr_bounds=lr_bounds,
        batch_bounds=batch_bounds,
        batch_multiple=batch_multiple,
        round_batch=round_batch,
        smaller_n=smaller_n,
        timeout_per_trial=timeout_per_trial,
        heartbeat_interval=heartbeat_interval,
        objective_spec=objective_spec,
    )
    if config is None:
        config = given
    elif given != TuneConfig():
        raise SteplawInputError(
            "give the run settings either as config=TuneConfig(...) or as keywords, not both"
        )
    refit_path = check_card_path(refit_law) if refit_law is not None else None
    storage_url = storage or DEFAULT_STORAGE
    if create_only and storage_url == ":memory:":
        raise SteplawInputError(
            "an in-memory study cannot be shared with workers; give a --storage URL "
            "(postgresql://… for many machines, sqlite:///file.db for one)"
        )
    allowed = objective.allowed_tokens(target)
    allowed_tokens = None if allowed is None else [float(x) for x in allowed]
    setup = StudySetup.build(target, config, allowed_tokens)
    law_obj = config.law_card
    study = open_study(
        optuna,
        make_storage(optuna, storage_url, config.heartbeat_interval),
        study_name or default_study_name(target, law_obj),
        setup.sampler,
        target,
        law_obj,
        config.budget,
        config.batch_unit,
        {**config.to_dict(), "allowed_tokens": allowed_tokens},
    )
    if create_only:
        if tracker is not None:
            tracker.start(study, sampler=setup.sampler, plan=setup.plan,
                          storage=mask_url(storage_url), law=law_obj, budget=config.budget,
                          objective=objective.name)  # fmt: skip
            tracker.schedule()
        return None
    result = work(study, setup, objective, storage_url, on_trial, callbacks, tracker)
    if refit_path is not None:
        result.extras["refit_law"] = write_refit_law(
            study, law_obj, target, config.batch_unit, refit_path
        )
    return result


def run_worker(
    study_name: str,
    storage: str,
    *,
    objective: Objective | None = None,
    heartbeat_interval: int | None = None,
    on_trial: Callable[[TrialEvent], None] | None = None,
    callbacks: Sequence[Callable[[Any, Any], None]] = (),
    tracker: Any = None,
) -> TuneResult:
    """Join the study ``study_name`` made by ``tune(..., create_only=True)`` (or by ``tune``)
    and run planned trials until none is left; any number of workers may do so at once.

    The worker rebuilds the study's :class:`TuneConfig` and plan from the study itself;
    ``objective`` defaults to the one the study describes (a command, a grid, the built-in
    trainer)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_tuned_study(study_name, storage)  # refuses missing / foreign studies
    stored = study.user_attrs.get(ATTR_CONFIG)
    if not isinstance(stored, str):
        raise SteplawInputError(
            f"study {study_name!r} has no worker configuration (made by an older steplaw-opt "
            "or by hand); run `steplaw-opt tune` on it instead"
        )
    doc = json.loads(stored)
    config = TuneConfig.from_dict(doc)
    target = study_target(study)
    if objective is None:
        objective = objective_from_spec(config.objective_spec, config)
    setup = StudySetup.build(target, config, doc.get("allowed_tokens"))
    hb = heartbeat_interval if heartbeat_interval is not None else config.heartbeat_interval
    study = optuna.load_study(
        study_name=study_name,
        storage=make_storage(optuna, storage, hb),
        sampler=setup.sampler,
    )
    if tracker is not None:
        tracker.shared = True
    return work(study, setup, objective, storage, on_trial, callbacks, tracker)


def objective_from_spec(spec: Any, config: TuneConfig) -> Objective:
    """The objective a study's stored spec describes (``steplaw-opt worker``)."""
    from steplaw_opt import objectives

    if not isinstance(spec, dict) or "kind" not in spec:
        raise SteplawInputError(
            "the study stores no objective (it was made from Python); pass the objective to "
            "run_worker()"
        )
    kind, unit = spec["kind"], config.batch_unit
    if kind == "command":
        return objectives.CommandObjective(
            spec["command"], batch_unit=unit, timeout=config.timeout_per_trial
        )
    if kind == "replay":
        if not Path(spec["grid"]).exists():
            raise SteplawInputError(f"grid file not found on this machine: {spec['grid']!r}")
        return objectives.GridReplayObjective(spec["grid"], batch_unit=unit)
    if kind == "builtin":
        corpus = spec.get("corpus")
        if corpus is not None and not Path(corpus).exists():
            raise SteplawInputError(f"corpus not found on this machine: {corpus!r}")
        return objectives.BuiltinTrainerObjective(corpus=corpus)
    raise SteplawInputError(f"unknown objective kind {kind!r} in the study")


def check_card_path(path: str | Path) -> Path:
    """A path a card can be written to, checked before any run is spent."""
    p = Path(path)
    if p.suffix != ".toml":
        raise SteplawInputError(f"--refit-law {str(p)!r}: a law card is a .toml file")
    if not p.parent.is_dir():
        raise SteplawInputError(
            f"--refit-law {str(p)!r}: directory {str(p.parent)!r} does not exist"
        )
    return p


def write_refit_law(
    study: Any, law: Law, target: Scale, batch_unit: str, path: Path
) -> dict[str, Any]:
    r"""Close the loop: refine ``law`` with the study's own pooled runs (conjugate Bayesian
    update with the card's covariance, :func:`~steplaw_opt.priors.refine_law`) and write the
    refined card to ``path`` (atomically), ready for ``--law path`` in the next, larger study."""
    import tomli_w

    from steplaw_opt._files import write_atomic
    from steplaw_opt.priors import refit_from_study

    refined = refit_from_study(
        study,
        prior=law,
        batch_unit=batch_unit,
        seq_len=target.seq_len,  # type: ignore[arg-type]
        name=f"{law.name}-refit",
    )
    write_atomic(path, tomli_w.dumps(refined.to_dict()))
    p = refined.predict(target)
    return {"path": str(path), "lr": p.lr, "batch_tokens": p.batch_tokens}
