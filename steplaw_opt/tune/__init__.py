"""The tuning workflow: a target scale, an objective and a budget in; the refined optimum out.

- :func:`tune` — plan proxy runs, run them in an Optuna study driven by the plateau sampler,
  return the refined optimum (:class:`TuneResult`); :class:`TuneConfig` holds its settings;
- :func:`run_worker` — join a shared study (``tune(..., create_only=True)``) as one of many
  workers;
- :func:`plan_proxies` — how a budget of target-run equivalents becomes proxy runs
  (:class:`ProxyPlan`), :func:`run_cost` — the cost of one run;
- :func:`load_tuned_study` — a stored study with its sampler attached (reports).

Private modules, one job each: ``_config`` (settings → plan, bounds, sampler), ``_study``
(storage, create / resume checks), ``_workers`` (slots, claims, heartbeats), ``_loop`` (the run
loop), ``_plan`` (proxy plans), ``_result`` and ``_tune`` (the two entry points).
"""

from steplaw_opt._records import ATTR_FAILURE, ATTR_SLOT, INTERRUPTED
from steplaw_opt.samplers._study import sampler_from_study
from steplaw_opt.tune._config import (
    SamplerName,
    StudySetup,
    TuneConfig,
    default_bounds,
    make_sampler,
)
from steplaw_opt.tune._plan import ProxyPlan, ProxyStage, ladder_scales, plan_proxies, run_cost
from steplaw_opt.tune._result import TrialEvent, TuneResult
from steplaw_opt.tune._study import DEFAULT_STORAGE, default_study_name, load_tuned_study
from steplaw_opt.tune._tune import (
    check_card_path,
    objective_from_spec,
    run_worker,
    tune,
    write_refit_law,
)
from steplaw_opt.tune._workers import DEFAULT_HEARTBEAT, sigterm_as_interrupt

__all__ = [
    "ATTR_FAILURE",
    "ATTR_SLOT",
    "DEFAULT_HEARTBEAT",
    "DEFAULT_STORAGE",
    "INTERRUPTED",
    "ProxyPlan",
    "ProxyStage",
    "SamplerName",
    "StudySetup",
    "TrialEvent",
    "TuneConfig",
    "TuneResult",
    "check_card_path",
    "default_bounds",
    "default_study_name",
    "ladder_scales",
    "load_tuned_study",
    "make_sampler",
    "objective_from_spec",
    "plan_proxies",
    "run_cost",
    "run_worker",
    "sampler_from_study",
    "sigterm_as_interrupt",
    "tune",
    "write_refit_law",
]
