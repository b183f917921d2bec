"""The study: opening its storage, creating or resuming it, and reading it back.

A study made by :func:`~steplaw_opt.tune.tune` records its target, law card, batch unit, budget
and settings (:mod:`steplaw_opt._records`); resuming it with another target, law or unit is
refused in one line, so two different searches never share one study by accident.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

from steplaw_opt._records import (
    ATTR_BATCH_UNIT,
    ATTR_BUDGET,
    ATTR_COMPUTE,
    ATTR_CONFIG,
    ATTR_FAILURE,
    ATTR_LAW,
    INTERRUPTED,
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


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def make_storage(optuna: Any, url: str, heartbeat_interval: int | None) -> Any:
    """An Optuna storage for ``url``; SQL URLs with heartbeats get the retry callback, so a
    trial whose worker died is failed and re-queued (same parameters and user attributes)."""
    if url == ":memory:":  # an in-memory study (benchmarks, tests)
        return optuna.storages.InMemoryStorage()
    if heartbeat_interval is None or "://" not in url or url.startswith("journal"):
        return url
    interval = int(heartbeat_interval)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # heartbeats are "experimental" in Optuna 5
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=interval,
                grace_period=2 * interval,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=None
                ),
            )
    except (ValueError, ImportError) as exc:
        raise SteplawInputError(f"cannot open storage {mask_url(url)!r}: {exc}") from None
    except Exception as exc:  # sqlalchemy: bad path, refused connection
        raise SteplawInputError(
            f"cannot open storage {mask_url(url)!r}: {_first_line(exc)}"
        ) from None


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
    a new study records them, the budget and ``config`` (what workers rebuild it from)."""
    if storage == ":memory:":  # an in-memory study (benchmarks, tests)
        storage = optuna.storages.InMemoryStorage()
    label = (
        mask_url(storage)
        if isinstance(storage, str)
        else mask_url(getattr(storage, "url", "in-memory"))
    )
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            sampler=sampler,
            direction="minimize",
            load_if_exists=True,
        )
    except (ValueError, ImportError) as exc:
        raise SteplawInputError(f"cannot open storage {label!r}: {exc}") from None
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
        for key, value in wanted.items():
            study.set_user_attr(key, value)
        study.set_user_attr(ATTR_BUDGET, float(budget))
    if config is not None and ATTR_CONFIG not in attrs:
        study.set_user_attr(ATTR_CONFIG, json.dumps(config, default=float))
    return study


def load_tuned_study(study_name: str, storage: str, law: str | Law | None = None) -> Any:
    """The study ``study_name`` at ``storage``, with its plateau sampler attached."""
    import optuna

    from steplaw_opt.samplers import sampler_from_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if storage == ":memory:":
        raise SteplawInputError("an in-memory study cannot be read back; give its --storage")
    if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///") :]).exists():
        raise SteplawInputError(f"no such study database: {storage!r}")
    try:
        names = optuna.study.get_all_study_names(storage=storage)
    except (ValueError, ImportError, RuntimeError) as exc:
        raise SteplawInputError(f"cannot open storage {mask_url(storage)!r}: {exc}") from None
    except Exception as exc:  # sqlalchemy: bad path, refused connection
        raise SteplawInputError(
            f"cannot open storage {mask_url(storage)!r}: {_first_line(exc)}"
        ) from None
    if study_name not in names:
        known = ", ".join(names[:5]) or "none"
        raise SteplawInputError(
            f"no study {study_name!r} in {mask_url(storage)} (studies there: {known})"
        )
    study = optuna.load_study(study_name=study_name, storage=storage)
    study.sampler = sampler_from_study(study, law)
    return study


def best_per_scale(study: Any) -> dict[tuple[float, float], float]:
    """The best loss so far at each (N, D): losses at different scales are not comparable."""
    best: dict[tuple[float, float], float] = {}
    for t in study.get_trials(deepcopy=False):
        if t.value is not None and "steplaw.D" in t.user_attrs:
            key = (float(t.user_attrs.get("steplaw.N", 0)), float(t.user_attrs["steplaw.D"]))
            best[key] = min(best.get(key, math.inf), t.value)
    return best


def compute_spent(study: Any) -> float:
    """Compute of the study's finished runs, in target-run equivalents (interrupted runs are
    run again, so they do not count)."""
    return float(
        sum(
            t.user_attrs.get(ATTR_COMPUTE, 0.0)
            for t in study.get_trials(deepcopy=False)
            if t.user_attrs.get(ATTR_FAILURE) != INTERRUPTED and t.state.is_finished()
        )
    )
