"""Laws and the priors built from them.

Law cards (one TOML file per published law, with coefficients, covariance, validity range and
citation) load as :class:`Law` objects; see ``docs/law-cards.md`` for the schema. Fitting and
refining laws (:func:`fit_law`, :func:`refine_law`) and the priors built from a law
(:class:`Prior`, :class:`TrustRegion`) load on first use, so ``steplaw-opt predict`` starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from steplaw_opt._lazy import lazy_getattr
from steplaw_opt.priors._law import (
    Interval,
    Law,
    MissingVariableError,
    OptimumIntervals,
    Prediction,
    UnusableLawError,
    UnusablePredictionError,
    list_laws,
    load_law,
    round_batch_sequences,
)

if TYPE_CHECKING:
    from steplaw_opt.priors._prior import DRIFT_ALLOWANCE_SD, Prior, TrustRegion, drift_covariance

_LAZY = {
    "Prior": "steplaw_opt.priors._prior",
    "TrustRegion": "steplaw_opt.priors._prior",
    "DRIFT_ALLOWANCE_SD": "steplaw_opt.priors._prior",
    "drift_covariance": "steplaw_opt.priors._prior",
    "FORMS": "steplaw_opt.priors._fit",
    "FitResult": "steplaw_opt.priors._fit",
    "Runs": "steplaw_opt.priors._fit",
    "fit_law": "steplaw_opt.priors._fit",
    "fit_law_ols": "steplaw_opt.priors._fit",
    "read_runs_csv": "steplaw_opt.priors._fit",
    "runs_from_frame": "steplaw_opt.priors._fit",
    "runs_from_study": "steplaw_opt.priors._fit",
    "RefineResult": "steplaw_opt.priors._refine",
    "refine_law": "steplaw_opt.priors._refine",
    "refit_from_study": "steplaw_opt.priors._refine",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = [
    "DRIFT_ALLOWANCE_SD",
    "FORMS",
    "FitResult",
    "Interval",
    "Law",
    "MissingVariableError",
    "OptimumIntervals",
    "Prediction",
    "Prior",
    "RefineResult",
    "Runs",
    "TrustRegion",
    "UnusableLawError",
    "UnusablePredictionError",
    "drift_covariance",
    "fit_law",
    "fit_law_ols",
    "list_laws",
    "load_law",
    "read_runs_csv",
    "refine_law",
    "refit_from_study",
    "round_batch_sequences",
    "runs_from_frame",
    "runs_from_study",
]
