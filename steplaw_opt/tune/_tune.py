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
interrupted by Ctrl-C (or lost with their process) are run again.

The plan is the study's: a resume, or a second process joining, with settings that make another
plan (budget, run cap, target runs, smaller N, the bounds, the token counts the objective
allows) or with another objective (command, grid, corpus) is refused in one line, so every
process runs the plan it prints.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import shlex
import sys
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from steplaw_opt._files import folder_lock
from steplaw_opt._records import (
    ATTR_CONFIG,
    ATTR_OBJECTIVE,
    ATTR_TIME_BUDGET,
    mask_url,
    study_target,
)
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
    discard_new_study,
    keep_new_study,
    load_tuned_study,
    make_storage,
    open_study,
)
from steplaw_opt.tune._workers import retry_opening, retry_storage


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
    ladder: Sequence[float] | None = None,
    drift: bool = True,
    target_runs: int = 0,
    heartbeat_interval: int | None = None,
    objective_spec: dict[str, Any] | None = None,
    time_budget: float | str | None = None,
    gpu_hours: float | None = None,
    gpus_per_run: int = 1,
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
        time_budget, gpu_hours, gpus_per_run: a time budget (:class:`TuneConfig`): no run starts
            once the study's time spent plus the run's predicted time would pass it; the
            result's ``extras["time"]`` says whether it stopped the study, and how many planned
            runs it left. It is not part of the plan: a resume may give another.
        create_only: create the study (and the MLflow parent run) and return ``None``; workers
            (:func:`run_worker`) run the trials.
        refit_law: after the study, write the law refined by its runs to this ``.toml`` card.

    Example:
        A stand-in for a training run whose best learning rate is twice the Step Law's at
        every scale (the law's batch is right): ten proxy runs at smaller D (``budget=1.0``)
        carry the correction to the target.

        >>> import math
        >>> from steplaw_opt import Scale, load_law
        >>> from steplaw_opt.objectives import CallableObjective
        >>> from steplaw_opt.tune import tune
        >>> law = load_law("step-law")
        >>> def run(lr, batch_size, scale):
        ...     best_lr = 2 * law.lr_at(scale)
        ...     best_batch = law.batch_tokens_at(scale) / scale.seq_len
        ...     return 3.0 * (1 + 0.02 * math.log(lr / best_lr) ** 2
        ...                   + 0.01 * math.log(batch_size / best_batch) ** 2)
        >>> target = Scale(N=1e9, D=1e11)
        >>> result = tune(target, CallableObjective(run), budget=1.0, storage=":memory:")
        >>> result.n_complete
        10
        >>> 0.7 < result.refined.lr / (2 * law.lr_at(target)) < 1.3  # the law's point: 0.5
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
        ladder=ladder,
        drift=drift,
        timeout_per_trial=timeout_per_trial,
        heartbeat_interval=heartbeat_interval,
        objective_spec=objective_spec,
        time_budget=time_budget,
        gpu_hours=gpu_hours,
        gpus_per_run=gpus_per_run,
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
    scales = objective.allowed_scales(target)
    allowed_scales = (
        None if scales is None else [[float(s.N or 0), float(s.D or 0)] for s in scales]
    )
    setup = StudySetup.build(target, config, allowed_tokens, _scales(allowed_scales, target))
    objective.check_scales(setup.schedule)  # before the study is made
    law_obj = config.law_card
    study = open_shared_study(
        optuna,
        storage_url,
        study_name or default_study_name(target, law_obj),
        setup,
        {**config.to_dict(), "allowed_tokens": allowed_tokens, "allowed_scales": allowed_scales},
        objective_identity(objective, config.objective_spec),
    )
    result: TuneResult | None = None
    try:
        # the time budget is this call's (not part of the plan): the study's from now on, for
        # the workers that join it too
        retry_storage(study.set_user_attr, ATTR_TIME_BUDGET, json.dumps(config.time.to_dict()))
        if create_only:
            if tracker is not None:
                tracker.start(study, sampler=setup.sampler, plan=setup.plan,
                              storage=mask_url(storage_url), law=law_obj, budget=config.budget,
                              objective=objective.name)  # fmt: skip
                tracker.schedule()
        else:
            result = work(study, setup, objective, storage_url, on_trial, callbacks, tracker)
    except BaseException:
        if _MADE_HERE.pop(_backend(study), None):
            # stopped before its first trial (MLflow refused, a full disk, Ctrl-C): nothing
            # of this run is left — no empty study, no database file it created (unless
            # another process may have joined it meanwhile: then it stays)
            discard_new_study(optuna, study, shared=create_only)
        raise
    # made and, for workers, handed over: the study (and its file) is the user's now
    _MADE_HERE.pop(_backend(study), None)
    keep_new_study(study)
    if result is None:  # create_only
        return None
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
    # a worker started while the database restarts waits for it (retry_opening)
    study = retry_opening(load_tuned_study, study_name, storage)  # refuses missing / foreign
    stored = retry_opening(lambda: study.user_attrs.get(ATTR_CONFIG))
    if not isinstance(stored, str):
        raise SteplawInputError(
            f"study {study_name!r} has no worker configuration (made by an older steplaw-opt "
            "or by hand); run `steplaw-opt tune` on it instead"
        )
    doc = json.loads(stored)
    config = TuneConfig.from_dict(doc)
    target = retry_opening(study_target, study)
    if objective is None:
        objective = objective_from_spec(config.objective_spec, config)
    setup = StudySetup.build(
        target,
        config,
        doc.get("allowed_tokens"),
        _scales(doc.get("allowed_scales"), target),
    )
    # an objective given here (not rebuilt from the study) may not run every planned scale:
    # refuse now, not at the first run it cannot build
    objective.check_scales(setup.schedule)
    hb = heartbeat_interval if heartbeat_interval is not None else config.heartbeat_interval
    study = retry_opening(
        lambda: optuna.load_study(
            study_name=study_name,
            storage=make_storage(optuna, storage, hb),
            sampler=setup.sampler,
        )
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
        from steplaw_opt.objectives._command import command_objective_from_spec

        return command_objective_from_spec(spec, batch_unit=unit, timeout=config.timeout_per_trial)
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


def _scales(pairs: Any, target: Scale) -> list[Scale] | None:
    """The stored ``[[N, D], …]`` of an objective's proxy scales as scales at the target's
    sequence length; a document that is not such a list is refused in one line."""
    if pairs is None:
        return None
    try:
        out = [Scale(N=float(n), D=float(d), seq_len=target.seq_len) for n, d in pairs]
    except (TypeError, ValueError):
        raise SteplawInputError(
            f"the study's allowed_scales must be a list of [N, D] pairs, got {pairs!r:.200}"
        ) from None
    return out


# ------------------------------------------------------------------ the study's own settings
# The settings that make the plan and the search space: a study runs with the ones it was made
# with, or not at all (a resume may change the sampler, the seed, the timeout, the rounding).
PLAN_KEYS = (
    "budget",
    "n_trials",
    "target_runs",
    "smaller_n",
    "ladder",
    "allowed_tokens",
    "allowed_scales",
    "lr_bounds",
    "batch_bounds",
    "batch_multiple",
)
# Plan settings added after studies were first stored, and what a stored study without one was
# made with: a study from before ladders had none, so a resume with --ladder is refused too.
PLAN_DEFAULTS: dict[str, Any] = {"ladder": None}
CONFIG_WAIT = 10.0  # seconds a process joining a study just created waits for its settings
# What a database another process is creating at the same moment says (SQLite, PostgreSQL;
# Optuna asserts its version row exists, which it does not until the creator has written it).
_CREATION_RACE = (
    "already exists",
    "duplicate key",
    "unique constraint",
    "database is locked",
    "assertionerror",
)


def objective_identity(objective: Objective, spec: dict[str, Any] | None) -> dict[str, Any]:
    """What a study tunes, recorded at its creation: ``kind`` (command, replay, builtin,
    callable, or python for an objective class of your own), ``what`` (for people) and ``key``
    (compared on resume; ``None``: not compared, a Python function may be fixed and rerun)."""
    from steplaw_opt.objectives import CallableObjective, CommandObjective, GridReplayObjective

    if isinstance(objective, CommandObjective):
        return {"kind": "command", "what": objective.template, "key": objective.identity_key()}
    if isinstance(objective, GridReplayObjective):
        grid = spec.get("grid") if isinstance(spec, dict) and spec.get("kind") == "replay" else None
        digest = hashlib.sha256()
        for s in sorted(objective.settings, key=lambda g: (g.N, g.D)):
            digest.update(repr((s.N, s.D, s.seq_len)).encode())
            for values in (s.lr, s.batch, s.loss):
                digest.update(values.tobytes())
        what = grid or f"a grid of {len(objective.settings)} settings"
        return {"kind": "replay", "what": what, "key": digest.hexdigest()[:16]}
    builtin = sys.modules.get("steplaw_opt.objectives._builtin")
    if builtin is not None and isinstance(objective, builtin.BuiltinTrainerObjective):
        corpus = str(Path(objective.corpus).resolve()) if objective.corpus else None
        what = corpus or "the Python standard library's source"
        return {"kind": "builtin", "what": what, "key": [corpus, objective.seed]}
    if isinstance(objective, CallableObjective):
        fn = objective.function
        what = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
        return {"kind": "callable", "what": what, "key": None}
    return {"kind": "python", "what": type(objective).__name__, "key": None}


def _describe(identity: dict[str, Any], other: dict[str, Any] | None = None) -> str:
    """The objective for people; when ``other`` shows the same text, what else tells them
    apart (a command's model configs)."""
    full = str(identity.get("what"))
    what = full if len(full) <= 200 else full[:197] + "..."
    shown = f"{identity.get('kind')} {what!r}"
    same_text = other is not None and str(other.get("what")) == full
    if other is None or other.get("kind") != identity.get("kind") or not same_text:
        return shown
    key = identity.get("key")
    models = key[1] if isinstance(key, list) and len(key) > 1 else None
    if isinstance(models, list) and models and all(isinstance(m, list) for m in models):
        configs = "; ".join(f"{_size(m[0])}={shlex.join(map(str, m[1]))}" for m in models)
        configs = configs.replace("\n", "\\n").replace("\r", "\\r")  # one line
        configs = configs if len(configs) <= 200 else configs[:197] + "..."
        return f"{shown} with models {configs}"
    return f"{shown} (with other settings)"


def _size(n: Any) -> str:
    return f"{n:.4g}" if isinstance(n, (int, float)) else repr(n)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def check_settings(
    name: str,
    stored: dict[str, Any],
    given: dict[str, Any],
    theirs: Any = None,
    mine: dict[str, Any] | None = None,
) -> None:
    """Refuse, in one line, a resume whose objective (``mine`` against the study's ``theirs``,
    :func:`objective_identity`) or plan (``given`` settings against the ``stored`` ones)
    differs from the study's."""
    if isinstance(mine, dict) and isinstance(theirs, dict):
        differ = mine.get("kind") != theirs.get("kind") or (
            mine.get("key") is not None
            and theirs.get("key") is not None
            and not _same(mine.get("key"), theirs.get("key"))
        )
        if differ:
            raise SteplawInputError(
                f"study {name!r} tunes {_describe(theirs, mine)}, not {_describe(mine, theirs)}; "
                "pass another --study-name"
            )
    for key in PLAN_KEYS:
        if key not in stored and not (stored and key in PLAN_DEFAULTS):
            continue  # a study with no stored settings: nothing to compare
        if not _same(stored.get(key, PLAN_DEFAULTS.get(key)), given.get(key)):
            raise SteplawInputError(
                f"study {name!r} was made with {key}={stored.get(key, PLAN_DEFAULTS.get(key))!r}, "
                f"not {given.get(key)!r}, and its plan is its own: resume it with {key}="
                f"{stored.get(key, PLAN_DEFAULTS.get(key))!r} or pass another --study-name"
            )


def _creation_lock(url: str) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock on an SQLite storage's folder (``flock``, no file written; the one
    :func:`~steplaw_opt.tune._study.make_storage` takes too, re-entrant), so that processes
    opening one new database at once make its tables one after the other instead of racing
    each other; any other storage, or a folder that cannot be locked: no lock."""
    path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
    folder = Path(path).parent if path and not path.startswith(":") else None
    if folder is None or not folder.is_dir():
        return contextlib.nullcontext()
    return folder_lock(folder)


# Studies open_shared_study created (keyed by their storage backend): tune() removes one again
# when it stops before its first trial.
_MADE_HERE: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _backend(study: Any) -> Any:
    storage = study._storage
    return getattr(storage, "_backend", storage)


def _race(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is another process creating the database's tables
    or the study at the same moment."""
    while exc is not None:
        if any(s in str(exc).lower() for s in _CREATION_RACE):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def _stored_config(study: Any) -> dict[str, Any] | None:
    raw = study._storage.get_study_user_attrs(study._study_id).get(ATTR_CONFIG)
    try:
        doc = json.loads(raw) if isinstance(raw, str) else None
    except json.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


# How a command's losses are read (LossFormat.to_dict): not part of what the study tunes, so a
# resume may change them (a fixed --loss-pattern), and workers started after it read its way.
READING_KEYS = ("loss_pattern", "progress_pattern", "metrics_format", "loss_key", "step_key")


def _update_reading(study: Any, stored: dict[str, Any], doc: dict[str, Any]) -> None:
    """A resume of a command study (same template: :func:`check_settings` passed) that reads
    the losses another way: store its reading settings, so ``steplaw-opt worker`` rebuilds the
    objective as this run reads it, not as the study was first made (workers already running
    keep theirs until they restart)."""
    theirs, mine = stored.get("objective"), doc.get("objective")
    if not (
        isinstance(theirs, dict)
        and isinstance(mine, dict)
        and theirs.get("kind") == mine.get("kind") == "command"
        and theirs.get("command") == mine.get("command")
    ):
        return
    new = {key: mine.get(key) for key in READING_KEYS if key in mine}
    if all(theirs.get(key) == value for key, value in new.items()):
        return
    updated = {**stored, "objective": {**theirs, **new}}
    study.set_user_attr(ATTR_CONFIG, json.dumps(updated, default=float))


def open_shared_study(
    optuna: Any,
    url: str,
    name: str,
    setup: StudySetup,
    doc: dict[str, Any],
    identity: dict[str, Any],
) -> Any:
    """Create the study ``name`` or join it, with any number of processes doing the same at
    once: a fresh database's tables made by two of them at once are retried, Optuna's unique
    study name decides which one creates the study (and records its settings right after), the
    others wait for those settings and run with them, or are refused in one line
    (:func:`check_settings`)."""
    from optuna.exceptions import DuplicatedStudyError

    config, hb = setup.config, setup.config.heartbeat_interval
    storage: Any = url
    for attempt in range(6):
        try:
            with _creation_lock(url):  # one process at a time makes a new SQLite file's tables
                storage = make_storage(optuna, url, hb)  # a bad URL: one line from there
                made = optuna.create_study(storage=storage, study_name=name, direction="minimize")
            storage = made._storage  # one engine from here on
            _MADE_HERE[_backend(made)] = name
            # before the settings, which those joining wait for: they then see both
            made.set_user_attr(ATTR_OBJECTIVE, identity)
            break
        except SteplawInputError as exc:
            if attempt == 5 or not _race(exc):
                raise
            time.sleep(0.1 * (attempt + 1) + random.random() * 0.2)
            continue
        except DuplicatedStudyError:
            study = optuna.load_study(study_name=name, storage=storage)
            storage = study._storage  # one engine from here on
            deadline = time.monotonic() + CONFIG_WAIT
            # its creator records the settings right after creating it: wait for them
            while _stored_config(study) is None and not study.get_trials(deepcopy=False):
                if time.monotonic() > deadline:
                    break  # it died in between, or the study was made by hand
                time.sleep(0.1)
            break
        except Exception as exc:
            if attempt == 5 or not _race(exc):
                break  # open_study below reports it in one line (or raises it)
            time.sleep(0.1 * (attempt + 1) + random.random() * 0.2)
    study = open_study(
        optuna,
        storage,
        name,
        setup.sampler,
        setup.target,
        config.law_card,
        config.budget,
        config.batch_unit,
        doc,  # recorded only if the study has no settings yet
    )
    theirs = study._storage.get_study_user_attrs(study._study_id).get(ATTR_OBJECTIVE)
    if theirs is None:  # a study made before steplaw-opt recorded it: this one is it
        study.set_user_attr(ATTR_OBJECTIVE, identity)
    stored = _stored_config(study)
    check_settings(name, stored or {}, doc, theirs, identity)
    if stored is not None:
        _update_reading(study, stored, doc)
    if stored is not None and hb is None and stored.get("heartbeat_interval"):
        # a study made for workers: beat like them, so they see this process's trials live
        storage = make_storage(optuna, url, int(stored["heartbeat_interval"]))
        study = optuna.load_study(study_name=name, storage=storage, sampler=setup.sampler)
    return study
