"""OptunaHub package ``samplers/steplaw_plateau``: steplaw-opt's samplers, re-exported.

The samplers live in the ``steplaw-opt`` distribution (``requirements.txt``); this package only
re-exports them, so the class OptunaHub loads is ``steplaw_opt.samplers.PlateauSampler`` itself.
``BoTorchPlateauSampler`` imports torch, BoTorch and GPyTorch, so only on first use.
"""

from __future__ import annotations

from typing import Any

try:
    from steplaw_opt import Scale
    from steplaw_opt.samplers import PlateauSampler, refined_optimum
except ImportError as exc:  # pragma: no cover - depends on the user's environment
    raise ImportError(
        "samplers/steplaw_plateau needs the steplaw-opt package: pip install steplaw-opt"
    ) from exc


def __getattr__(name: str) -> Any:
    if name == "BoTorchPlateauSampler":
        from steplaw_opt.samplers import BoTorchPlateauSampler

        return BoTorchPlateauSampler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BoTorchPlateauSampler", "PlateauSampler", "Scale", "refined_optimum"]
