"""The yardstick: replay of the Step Law authors' released grids.

- :mod:`~steplaw_opt.bench._grids` — the released measurements as :class:`GridSetting` objects
  (one per (N, D)) and :class:`ReplayObjective`, the measured loss of the nearest grid point;
- :mod:`~steplaw_opt.bench._surfaces` — the noise-free surfaces a recommendation is scored on
  (a cubic, a quadratic, a Gaussian process), which one run's noise cannot flatter;
- :mod:`~steplaw_opt.bench._shift` — shifted landscapes: the grids with the optimum moved by a
  known offset, so the law is wrong by a known amount;
- :mod:`~steplaw_opt.bench._surface` — the cubic surface on the grid's cells and the reference
  walk;
- :mod:`~steplaw_opt.bench._runner` — ``steplaw-opt bench``: every method at budgets of k
  trials, side by side;
- :mod:`~steplaw_opt.bench._proxy` — ``steplaw-opt bench --proxy``: proxy runs at cheaper
  settings (of the target's N, or any N and D), scored at the target on the noise-free surfaces,
  on released or shifted landscapes;
- :mod:`~steplaw_opt.bench._report` — ``--report DIR``: a markdown page and PNG budget curves;
- :mod:`~steplaw_opt.bench._startup` — ``steplaw-opt bench --startup``: the cold start of
  ``steplaw-opt predict`` against importing typer, rich and numpy, in the same run.

Only the grids load eagerly (NumPy): the runner and proxy mode import pandas and Optuna on first
use, so :mod:`steplaw_opt.objectives` can replay grids without them.

Example (with the released data beside the checkout, or a path):
    >>> from steplaw_opt.bench import load_grids
    >>> settings = load_grids()
    >>> len(settings), str(settings[0])
    (17, 'N=215M D=4B')
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from steplaw_opt._lazy import lazy_getattr
from steplaw_opt.bench._grids import GridSetting, ReplayObjective, default_grid_path, load_grids

if TYPE_CHECKING:
    from steplaw_opt.bench._proxy import ProxyBenchConfig, run_proxy_bench
    from steplaw_opt.bench._report import write_report
    from steplaw_opt.bench._runner import (
        BenchConfig,
        BenchResult,
        law_index,
        measure_overhead,
        run_bench,
    )
    from steplaw_opt.bench._shift import Shift
    from steplaw_opt.bench._surface import SmoothSurface, smooth_surface
    from steplaw_opt.bench._surfaces import NoiseFreeSurface, noise_free_surfaces

# Heavier names resolve on first use (PEP 562).
_LAZY = {
    "BenchConfig": "steplaw_opt.bench._runner",
    "BenchResult": "steplaw_opt.bench._runner",
    "law_index": "steplaw_opt.bench._runner",
    "measure_overhead": "steplaw_opt.bench._runner",
    "run_bench": "steplaw_opt.bench._runner",
    "ProxyBenchConfig": "steplaw_opt.bench._proxy",
    "run_proxy_bench": "steplaw_opt.bench._proxy",
    "SmoothSurface": "steplaw_opt.bench._surface",
    "smooth_surface": "steplaw_opt.bench._surface",
    "Shift": "steplaw_opt.bench._shift",
    "NoiseFreeSurface": "steplaw_opt.bench._surfaces",
    "noise_free_surfaces": "steplaw_opt.bench._surfaces",
    "write_report": "steplaw_opt.bench._report",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = [
    "BenchConfig",
    "BenchResult",
    "GridSetting",
    "NoiseFreeSurface",
    "ProxyBenchConfig",
    "ReplayObjective",
    "Shift",
    "SmoothSurface",
    "default_grid_path",
    "law_index",
    "load_grids",
    "measure_overhead",
    "noise_free_surfaces",
    "run_bench",
    "run_proxy_bench",
    "smooth_surface",
    "write_report",
]
