"""Figures (matplotlib on an Agg canvas, imported when a figure is drawn; no pyplot state).

- :func:`landscape_plot`, :func:`convergence_plot`, :func:`uv_plot`, :func:`write_plots` — a
  tuning study's landscape at the target, its convergence, and its runs in law-normalised
  (u, v) (``steplaw-opt report``, the MLflow record);
- :func:`plot_fit` — ``steplaw-opt fit``: each setting's optimum against the fitted law.

These modules read studies and fits; they import no workflow code (``steplaw_opt.tune``), only
the attribute names in :mod:`steplaw_opt._records`.
"""

from __future__ import annotations

from steplaw_opt.plots._fit import check_plot_path, plot_fit
from steplaw_opt.plots._study import (
    PLOT_NAMES,
    Plot,
    convergence_plot,
    convergence_series,
    landscape_plot,
    study_plots,
    uv_plot,
    write_plots,
)

__all__ = [
    "PLOT_NAMES",
    "Plot",
    "check_plot_path",
    "convergence_plot",
    "convergence_series",
    "landscape_plot",
    "plot_fit",
    "study_plots",
    "uv_plot",
    "write_plots",
]
