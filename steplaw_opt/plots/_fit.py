"""The fit plot of ``steplaw-opt fit``: each setting's optimum against the fitted law.

Two panels, learning rate and batch size (tokens) against D (or C = 6ND for the compute form),
one colour per N. Points: every near-optimal run (small) and the best run of each setting
(large); lines: the fitted law at each N, with the 95 % band of the bootstrap fits; with a
refinement, the refined law (dashed) and the prior (dotted). matplotlib (Agg) is imported here
only, when a plot is asked for.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from steplaw_opt.errors import SteplawInputError
from steplaw_opt.priors._fit import FitResult, Runs, features, near_optimal

_BAND_DRAWS = 1000


def _coef_draws(fit: FitResult, seed: int = 0) -> np.ndarray:
    if len(fit.boot) >= 2:
        return fit.boot
    rng = np.random.default_rng(seed)
    return rng.multivariate_normal(fit.coef, fit.cov_ols, size=_BAND_DRAWS)


def _panel(
    ax: Any,
    *,
    quantity: str,
    fit: FitResult,
    runs: Runs,
    near: np.ndarray,
    refine: Any | None,
    colours: dict[float, Any],
) -> None:
    lr = quantity == "lr"
    variables = fit.lr_vars if lr else fit.batch_vars
    pa = 1 + len(fit.lr_vars)
    cols = slice(0, pa) if lr else slice(pa, None)
    x_of = (lambda n, d: 6 * n * d) if fit.form == "compute" else (lambda n, d: d)
    y_runs = runs.lr if lr else runs.batch_tokens
    for n_val, colour in colours.items():
        sel = near & (runs.N == n_val)
        ax.scatter(x_of(runs.N[sel], runs.D[sel]), y_runs[sel], s=6, color=colour, alpha=0.35)
    for s in fit.settings:
        y = s.best_lr if lr else s.best_batch_tokens
        ax.scatter(
            x_of(s.N, s.D), y, s=40, color=colours[s.N], edgecolor="black", linewidth=0.6, zorder=3
        )
    d_lo, d_hi = fit.validity["D"]
    d_grid = np.geomspace(d_lo / 1.5, d_hi * 1.5, 60)
    draws = _coef_draws(fit)[:, cols]
    n_lines = colours if any(v in variables for v in ("N", "C")) else {None: "black"}
    for n_val, colour in n_lines.items():
        n_arr = np.full_like(d_grid, float(n_val if n_val is not None else fit.validity["N"][0]))
        x = features(n_arr, d_grid, variables)
        xs = x_of(n_arr, d_grid)
        ax.plot(xs, np.exp(x @ fit.coef[cols]), color=colour, linewidth=1.4)
        band = np.exp(x @ draws.T)
        lo, hi = np.percentile(band, [2.5, 97.5], axis=1)
        ax.fill_between(xs, lo, hi, color=colour, alpha=0.15, linewidth=0)
        if refine is not None and (refine.lr_vars, refine.batch_vars) == (
            fit.lr_vars,
            fit.batch_vars,
        ):
            ax.plot(xs, np.exp(x @ refine.post_mean[cols]), "--", color=colour, linewidth=1.2)
            ax.plot(xs, np.exp(x @ refine.prior_mean[cols]), ":", color=colour, linewidth=1.2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("C = 6ND (FLOPs)" if fit.form == "compute" else "D (training tokens)")
    ax.set_ylabel("peak learning rate" if lr else "batch size (tokens)")
    ax.grid(True, which="both", alpha=0.25)


def check_plot_path(path: str | Path) -> str:
    """The image format of ``path`` (its suffix), checked against matplotlib's writers."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backend_bases import FigureCanvasBase

    fmt = Path(path).suffix.lstrip(".").lower()
    supported = FigureCanvasBase.get_supported_filetypes()
    if fmt not in supported:
        raise SteplawInputError(
            f"--plot {str(path)!r}: unknown image format {fmt!r}; use one of "
            f"{', '.join(sorted(supported))}"
        )
    return fmt


def plot_fit(path: str | Path, fit: FitResult, runs: Runs, refine: Any | None = None) -> Path:
    """Write the fit plot to ``path`` (format from its suffix), atomically.

    Raises:
        SteplawInputError: the directory cannot be written or the format is unknown.
    """
    path = Path(path)
    fmt = check_plot_path(path)
    from matplotlib import pyplot as plt
    from matplotlib.lines import Line2D

    _, _, near = near_optimal(runs, fit.eps)
    ns = sorted({s.N for s in fit.settings})
    cmap = plt.get_cmap("viridis")
    colours = {n: cmap(i / max(len(ns) - 1, 1) * 0.9) for i, n in enumerate(ns)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), constrained_layout=True)
    for ax, q in zip(axes, ("lr", "batch"), strict=True):
        _panel(ax, quantity=q, fit=fit, runs=runs, near=near, refine=refine, colours=colours)
    from steplaw_opt.sizes import format_size

    handles = [
        Line2D([], [], color=c, marker="o", label=f"N={format_size(n)}") for n, c in colours.items()
    ]
    handles.append(Line2D([], [], color="grey", label="fit (95 % bootstrap band)"))
    if refine is not None:
        handles.append(Line2D([], [], color="grey", ls="--", label=f"refined {refine.prior.name}"))
        handles.append(Line2D([], [], color="grey", ls=":", label=f"prior {refine.prior.name}"))
    axes[1].legend(handles=handles, fontsize=8, loc="best")
    fig.suptitle(
        f"{fit.source}: best run per setting (large), runs within {fit.eps * 100:g} % (small)",
        fontsize=10,
    )
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    except OSError as exc:
        plt.close(fig)
        raise SteplawInputError(f"cannot write {str(path)!r}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format=fmt, dpi=130)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return path
