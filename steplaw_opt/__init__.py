"""steplaw-opt: the optimal learning rate and batch size for an LLM pre-training run, from a
published scaling law and a few short proxy runs.

Importing this package is light: it needs numpy only. The Optuna samplers, torch, BoTorch and
MLflow are imported where they are used.

Example:
    >>> from steplaw_opt import Scale, load_law
    >>> p = load_law("step-law").predict(Scale(N=1e9, D=1e11))
    >>> f"{p.lr:.3g}", f"{p.batch_sequences:.0f}"
    ('0.00163', '541')
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from steplaw_opt._lazy import lazy_getattr
from steplaw_opt.errors import SteplawInputError
from steplaw_opt.priors import Law, Prediction, list_laws, load_law
from steplaw_opt.scale import Scale
from steplaw_opt.sizes import format_size, parse_size

__version__ = "0.1.0"

if TYPE_CHECKING:
    from steplaw_opt.samplers import BoTorchPlateauSampler, PlateauSampler

# Heavier names resolve on first use (PEP 562) so `import steplaw_opt` stays light.
_LAZY = {
    "PlateauSampler": "steplaw_opt.samplers",
    "BoTorchPlateauSampler": "steplaw_opt.samplers",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = [
    "BoTorchPlateauSampler",
    "Law",
    "PlateauSampler",
    "Prediction",
    "Scale",
    "SteplawInputError",
    "format_size",
    "list_laws",
    "load_law",
    "parse_size",
]
