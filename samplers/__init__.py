"""Optuna samplers that search the plateau a scaling law predicts.

- :class:`PlateauSampler` — NumPy only: the law as prior and trust region, a Bayesian convex
  bowl, Thompson sampling.
- :class:`BoTorchPlateauSampler` — the same, with a Gaussian process whose prior mean is the
  bowl and πBO-weighted expected improvement (BoTorch; imported on first use).
- :func:`refined_optimum` — the posterior optimum of a study mapped back to the target scale.
- :func:`sampler_from_study` — the plateau sampler of a stored ``tune`` study (reports, plots).
- :func:`trial_scale` — the scale a trial ran at (its ``steplaw.N``/``D``/``seq_len``).

Importing this package does not import torch, BoTorch or MLflow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from steplaw_opt._lazy import lazy_getattr
from steplaw_opt._records import SCALE_ATTRS, trial_scale
from steplaw_opt.samplers._plateau import PlateauSampler
from steplaw_opt.samplers._refined import RefinedOptimum, refined_optimum
from steplaw_opt.samplers._study import sampler_from_study

if TYPE_CHECKING:
    from steplaw_opt.samplers._botorch import BoTorchPlateauSampler


# BoTorchPlateauSampler imports torch, BoTorch and GPyTorch, so only on first use.
_LAZY = {"BoTorchPlateauSampler": "steplaw_opt.samplers._botorch"}
__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = [
    "SCALE_ATTRS",
    "BoTorchPlateauSampler",
    "PlateauSampler",
    "RefinedOptimum",
    "refined_optimum",
    "sampler_from_study",
    "trial_scale",
]
