"""Plots of a tuning study, drawn from its trials (matplotlib, Agg canvas, no pyplot state).

- :func:`landscape_plot` — the Step Law paper's Figure 1 at the target: (lr, batch) on log axes,
  contours of the relative loss gap to the best point from the fitted bowl, the observed points
  coloured by their gap and numbered in order, the law's point, the prior and trust-region
  ellipses, and the refined optimum with its 95 % interval. Proxy runs at other scales sit at
  their law-normalised position mapped to the target (same u, v).
- :func:`convergence_plot` — the predicted gap at the target of the recommendation after k
  trials, and of the best trial so far, against trials and against compute spent (both judged
  by the final model).
- :func:`uv_plot` — multi-scale studies: every observation in (u, v), one colour per scale.

Each function returns a :class:`Plot`: the figure and the data drawn (so tests count markers
instead of pixels). matplotlib is imported when a plot is asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from steplaw_opt.errors import SteplawInputError

GAP_LEVELS = (0.0, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)  # relative loss gap
PLOT_NAMES = ("landscape", "convergence", "uv")


@dataclass
class Plot:
    """A drawn figure and the numbers it shows."""

    name: str
    figure: Any  # matplotlib.figure.Figure
    data: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path, dpi: int = 130) -> Path:
        path = Path(path)
        self.figure.savefig(path, dpi=dpi)
        return path


# ------------------------------------------------------------------------------- model
@dataclass
class _Model:
    """What the plots need from the study: the sampler's view of it and the fitted bowl."""

    sampler: Any
    hist: Any
    box: np.ndarray
    w_star: np.ndarray
    hessian: np.ndarray
    posterior: Any
    region: Any
    bottom: np.ndarray  # the bowl's own bottom (may lie outside the region)

    def gap(self, w: np.ndarray) -> np.ndarray:
        """Predicted relative loss gap at (u, v) points (n×2) to the bowl's lowest trusted point
        ``w_star`` (its bottom, or the lowest point of the trust region when the bottom lies
        outside it)."""
        return np.expm1(self._q(np.atleast_2d(w)) - self._q(self.w_star[None])[0])

    def _q(self, w: np.ndarray) -> np.ndarray:
        d = w - self.bottom
        return np.einsum("ni,ij,nj->n", d, self.hessian, d)


def _resolve_sampler(study: Any, sampler: Any) -> Any:
    from steplaw_opt.samplers._plateau import PlateauSampler

    if sampler is None:
        sampler = study.sampler
    if not isinstance(sampler, PlateauSampler):
        from steplaw_opt.samplers import sampler_from_study

        sampler = sampler_from_study(study)
    return sampler


def _model(study: Any, sampler: Any, trials: int | None = None) -> _Model:
    from steplaw_opt.samplers._refined import _declared

    view = study if trials is None else _Prefix(study, trials)
    hist = sampler.history(view)
    target = sampler.target
    box = sampler._box(target, *_declared(study, sampler))
    rng = np.random.default_rng(0)
    if len(hist.y):
        hist.group_of(target)  # the target gets its offset in the fit even without runs there
        posterior = sampler.fit(hist)
        region, _ = sampler.trust_region(hist, posterior, box, rng)
        w_star, hessian = posterior.optimum(), posterior.hessian
    else:
        posterior = None
        region, _ = sampler.trust_region(hist, None, box, rng)
        w_star, hessian = np.asarray(sampler.prior.mean, dtype=float), sampler._bowl.H0
    bottom = np.asarray(w_star, dtype=float)
    if not region.contains(w_star)[0]:
        # The bowl's bottom lies outside the trusted region: gaps are measured from its lowest
        # point inside the region, which is also where the refined optimum sits.
        from steplaw_opt.samplers._region import constrained_argmin

        w_star = constrained_argmin(region, w_star, hessian)
    return _Model(sampler, hist, box, w_star, hessian, posterior, region, bottom)


class _Prefix:
    """The study as it was after its first ``k`` trials (for the convergence plot)."""

    def __init__(self, study: Any, k: int) -> None:
        self._trials = study.get_trials(deepcopy=False)[:k]
        self.direction = study.direction

    def get_trials(self, deepcopy: bool = False, states: Any = None) -> list[Any]:
        if states is None:
            return list(self._trials)
        return [t for t in self._trials if t.state in states]


def _ellipse(center: np.ndarray, shape: np.ndarray, radius2: float, n: int = 120) -> np.ndarray:
    angle = np.linspace(0, 2 * np.pi, n)
    circle = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    chol = np.linalg.cholesky(shape + 1e-12 * np.eye(2))
    return center + math.sqrt(radius2) * circle @ chol.T


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _trial_points(study: Any, sampler: Any) -> list[dict[str, Any]]:
    from steplaw_opt._records import trials_table

    return [r for r in trials_table(study, sampler) if r["u"] is not None]


# ------------------------------------------------------------------------------- landscape
def landscape_plot(study: Any, sampler: Any = None, refined: Any = None) -> Plot:
    """The loss landscape at the target in (lr, batch tokens), in the style of the Step Law
    paper's Figure 1. ``refined`` defaults to :func:`refined_optimum` of the study."""
    from matplotlib.colors import BoundaryNorm
    from matplotlib.lines import Line2D

    sampler = _resolve_sampler(study, sampler)
    if refined is None:
        from steplaw_opt.samplers import refined_optimum

        refined = refined_optimum(study, sampler=sampler, n_draws=500)
    model = _model(study, sampler)
    target = sampler.target
    ln_lr0, ln_b0 = sampler.space.origin(target)
    per = sampler.space.tokens_per_batch_unit(target)

    def to_axes(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = np.atleast_2d(w)
        return np.exp(ln_lr0 + w[:, 0]), np.exp(ln_b0 + w[:, 1]) * per

    points = _trial_points(study, sampler)
    w_obs = np.array([[p["u"], p["v"]] for p in points]).reshape(-1, 2)
    prior_ell = _ellipse(sampler.prior.mean, sampler.prior.cov, sampler._radius2)
    trust_ell = _ellipse(model.region.center, model.region.shape, model.region.radius2)
    w_ref = np.array([refined.u, refined.v])
    everything = np.concatenate([w_obs, prior_ell, trust_ell, w_ref[None], np.zeros((1, 2))])
    lo, hi = everything.min(axis=0) - 0.25, everything.max(axis=0) + 0.25
    # A region far wider than the search box (a law far off, as in the demo) would shrink the
    # runs to a corner: the view stops a little beyond the box.
    box_lo, box_hi = model.box[0] - 0.25, model.box[1] + 0.25
    lo = np.where(np.isfinite(box_lo), np.maximum(lo, box_lo), lo)
    hi = np.where(np.isfinite(box_hi), np.minimum(hi, box_hi), hi)
    if len(w_obs):  # every run stays in view, even one mapped beyond the box (a failed proxy)
        lo = np.minimum(lo, w_obs.min(axis=0) - 0.3)
        hi = np.maximum(hi, w_obs.max(axis=0) + 0.3)
    gu, gv = np.meshgrid(np.linspace(lo[0], hi[0], 160), np.linspace(lo[1], hi[1], 160))
    grid_gap = model.gap(np.stack([gu.ravel(), gv.ravel()], 1)).reshape(gu.shape)
    # Outside the search bounds the bowl is not a recommendation: leave it blank.
    box = model.box
    outside = (gu < box[0, 0]) | (gu > box[1, 0]) | (gv < box[0, 1]) | (gv > box[1, 1])
    grid_gap = np.where(outside, np.nan, grid_gap)
    gx, gy = to_axes(np.stack([gu.ravel(), gv.ravel()], 1))

    fig = _figure(7.6, 5.8)
    ax = fig.add_subplot()
    levels = [*GAP_LEVELS, max(float(np.nanmax(grid_gap)), GAP_LEVELS[-1] * 1.01)]
    cmap = _cmap()
    norm = BoundaryNorm(levels, cmap.N)
    filled = ax.contourf(
        gx.reshape(gu.shape),
        gy.reshape(gu.shape),
        grid_gap,
        levels=levels,
        cmap=cmap,
        norm=norm,
        alpha=0.55,
    )
    lines = ax.contour(
        gx.reshape(gu.shape),
        gy.reshape(gu.shape),
        grid_gap,
        levels=GAP_LEVELS[1:6],
        colors="k",
        linewidths=0.5,
        alpha=0.6,
    )
    for label in ax.clabel(lines, fmt=lambda g: f"{g:.2%}", fontsize=7):
        # above the trust region's and the prior's outlines, which may cross it
        label.set_bbox({"facecolor": "white", "alpha": 0.6, "edgecolor": "none", "pad": 0.4})
        label.set_zorder(3)
    cbar = fig.colorbar(filled, ax=ax, ticks=GAP_LEVELS)
    cbar.ax.set_yticklabels([f"{g:.2%}" for g in GAP_LEVELS])
    cbar.set_label(
        "relative loss gap: background, predicted at the target;\n"
        "trials, observed (to the best run at their scale)"
    )

    # Three outlines, three colours and three dash patterns, so they read apart in print too.
    # The trust region first: where it is still the prior's ellipse, the prior's blue dots
    # show on its dashes.
    inside = (prior_ell >= lo) & (prior_ell <= hi)
    prior_label = "law's prior (99 %)"
    if inside.all(axis=1).mean() < 0.5:  # a law far off: its prior is wider than the box
        prior_label += ", mostly beyond the view"
    for ell, style, colour, label in (
        (trust_ell, (0, (6, 3)), "black", "trust region"),
        (prior_ell, (0, (1, 1.5)), "#1f5fbf", prior_label),
    ):
        ex, ey = to_axes(ell)
        ax.plot(ex, ey, color=colour, ls=style, linewidth=1.5, label=label)

    ok = [i for i, p in enumerate(points) if p["gap"] is not None]
    bad = [i for i, p in enumerate(points) if p["gap"] is None]
    ox, oy = to_axes(w_obs) if len(w_obs) else (np.empty(0), np.empty(0))
    if ok:
        ax.scatter(
            ox[ok],
            oy[ok],
            c=[points[i]["gap"] for i in ok],
            cmap=cmap,
            norm=norm,
            s=46,
            edgecolors="black",
            linewidths=0.8,
            zorder=8,  # above the star: the runs at the bottom sit under it
            gid="trials",
        )
    if bad:
        ax.scatter(ox[bad], oy[bad], marker="x", color="crimson", s=46, zorder=8, gid="failed")
    law_x, law_y = to_axes(np.zeros(2))
    ax.scatter(
        law_x, law_y, marker="D", s=60, color="white", edgecolors="black", zorder=6, gid="law"
    )
    lr_lo, lr_hi = refined.lr_interval_95
    b_lo, b_hi = refined.batch_tokens_interval_95
    ax.errorbar(
        [refined.lr],
        [refined.batch_tokens],
        xerr=[[max(refined.lr - lr_lo, 0.0)], [max(lr_hi - refined.lr, 0.0)]],
        yerr=[[max(refined.batch_tokens - b_lo, 0.0)], [max(b_hi - refined.batch_tokens, 0.0)]],
        fmt="*",
        markersize=16,
        color="gold",
        markeredgecolor="black",
        ecolor="black",
        capsize=3,
        zorder=7,
        gid="refined",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    _sparse_minor_labels(ax)
    ax.set_xlabel("peak learning rate (proxy runs at the target's u, v)")
    ax.set_ylabel("batch size (tokens)")
    ax.set_title(
        f"{study.study_name}: loss landscape at N={_size(target.N)}, D={_size(target.D)}",
        fontsize=10,
    )
    # The search bounds (clipped to the axes where unbounded).
    lo_b = np.where(np.isfinite(box[0]), box[0], lo)
    hi_b = np.where(np.isfinite(box[1]), box[1], hi)
    (bx0, by0), (bx1, by1) = (np.ravel(to_axes(lo_b)), np.ravel(to_axes(hi_b)))
    (vx0, vy0), (vx1, vy1) = np.ravel(to_axes(lo)), np.ravel(to_axes(hi))
    beyond = bx0 <= vx0 and bx1 >= vx1 and by0 <= vy0 and by1 >= vy1
    ax.plot(
        [bx0, bx1, bx1, bx0, bx0],
        [by0, by0, by1, by1, by0],
        color="0.45",
        lw=1.0,
        ls=(0, (8, 2, 1, 2)),
        label="search bounds (beyond the view)" if beyond else "search bounds",
        gid="bounds",
    )
    # Zoomed to the runs, the law, the refined optimum and the two regions; the search bounds
    # are drawn where they fall inside.
    ax.set_xlim(vx0, vx1)
    ax.set_ylim(vy0, vy1)
    # the law's marker, the star and its two error bars (points along them)
    bar_x = np.geomspace(lr_lo, lr_hi, 9) if lr_lo > 0 else []
    bar_y = np.geomspace(b_lo, b_hi, 9) if b_lo > 0 else []
    obstacles = np.array(
        [
            [law_x[0], law_y[0]],
            [refined.lr, refined.batch_tokens],
            *([x, refined.batch_tokens] for x in bar_x),
            *([refined.lr, y] for y in bar_y),
        ]
    )
    _label_trials(ax, fig, ox, oy, [str(p["trial"]) for p in points], obstacles)
    handles = ax.get_legend_handles_labels()[0] + [
        Line2D([], [], marker="o", ls="", mfc="white", mec="black", label="trial (number)"),
        Line2D([], [], marker="x", ls="", color="crimson", label="failed trial"),
        Line2D([], [], marker="D", ls="", mfc="white", mec="black", label="law"),
        Line2D(
            [],
            [],
            marker="*",
            ls="",
            mfc="gold",
            mec="black",
            ms=12,
            label="refined optimum (95 %)",
        ),
    ]
    # Below the axes, so it never hides a trial marker.
    ax.legend(
        handles=handles,
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.12),
        ncol=3,
        frameon=False,
    )
    ax.grid(True, which="both", alpha=0.2)
    data = {
        "trials": [
            {
                "number": p["trial"],
                "lr": float(ox[i]),
                "batch_tokens": float(oy[i]),
                "gap": p["gap"],
                "failed": p["gap"] is None,
            }
            for i, p in enumerate(points)
        ],
        "n_observed": len(ok),
        "n_failed": len(bad),
        "law": (float(law_x[0]), float(law_y[0])),
        "refined": (float(refined.lr), float(refined.batch_tokens)),
        "prior_ellipse": np.column_stack(to_axes(prior_ell)),
        "trust_ellipse": np.column_stack(to_axes(trust_ell)),
        "bowl_optimum_uv": model.w_star.tolist(),
    }
    return Plot("landscape", fig, data)


def _sparse_minor_labels(ax: Any) -> None:
    """On log axes spanning less than a decade or two matplotlib labels every minor tick, and
    3×10⁻³ runs into 4×10⁻³: label the minor ticks at 2 and 5 × 10ᵏ only, in the major labels'
    notation, and none on an axis wider than 1.2 decades (the decades' labels suffice)."""
    from matplotlib.ticker import FuncFormatter

    def label(x: float, _pos: int) -> str:
        if x <= 0:
            return ""
        exponent = math.floor(math.log10(x) + 1e-9)
        mantissa = round(x / 10.0**exponent, 6)
        return rf"${mantissa:g}\times10^{{{exponent}}}$" if mantissa in (2.0, 5.0) else ""

    for axis in (ax.xaxis, ax.yaxis):

        def label_if_narrow(x: float, pos: int, axis: Any = axis) -> str:
            lo, hi = sorted(axis.get_view_interval())
            wide = lo > 0 and math.log10(hi / lo) > 1.2  # the decades' labels suffice
            return "" if wide else label(x, pos)

        axis.set_minor_formatter(FuncFormatter(label_if_narrow))


def _label_trials(
    ax: Any, fig: Any, xs: Any, ys: Any, labels: list[str], obstacles: np.ndarray
) -> None:
    """Each trial's number beside its marker, at the first of eight offsets that keeps it
    clear of the labels already placed, of the other markers and of ``obstacles`` (the law's
    and the refined optimum's markers; in display pixels)."""
    fig.canvas.draw()  # the axes' limits and transform as they will be saved
    to_px = ax.transData.transform
    markers = to_px(np.column_stack([xs, ys])) if len(labels) else np.empty((0, 2))
    big = to_px(obstacles)  # larger markers: kept further away
    scale = fig.dpi / 72.0
    offsets = [(5, 5), (5, -11), (-12, 5), (-12, -11), (8, -3), (-15, -3), (-3, 9), (-3, -15)]
    placed: list[np.ndarray] = []
    for i, text in enumerate(labels):
        best, others = offsets[0], np.delete(markers, i, axis=0)
        for dx, dy in offsets:
            at = markers[i] + scale * np.array([dx + 3, dy + 3])  # the label's middle
            clear_labels = all(np.abs(at - q).max() > 9 * scale for q in placed)
            clear_markers = not len(others) or np.hypot(*(others - at).T).min() > 6 * scale
            clear_big = np.hypot(*(big - at).T).min() > 11 * scale
            if clear_labels and clear_markers and clear_big:
                best = (dx, dy)
                break
        placed.append(markers[i] + scale * np.array([best[0] + 3, best[1] + 3]))
        ax.annotate(
            text,
            (xs[i], ys[i]),
            xytext=best,
            textcoords="offset points",
            fontsize=7,
            zorder=5,
        )


def _cmap() -> Any:
    from matplotlib import colormaps

    return colormaps["viridis"]


def _size(x: float | None) -> str:
    from steplaw_opt.sizes import format_size

    return format_size(float(x or 0))


# ------------------------------------------------------------------------------- convergence
def convergence_series(
    study: Any, sampler: Any = None, n_draws: int = 400
) -> dict[str, list[float]]:
    r"""After each finished trial k, in percent: the expected loss gap at the target of the
    recommendation made from trials ≤ k, by the model fitted on those trials only — the median
    and 10–90 % band of :math:`e^{(w_k - w^*)^\top H_k (w_k - w^*)} - 1` over posterior draws
    :math:`w^*` of the optimum (the prior's before any run) — and the observed run's loss above
    the best loss at its scale; compute spent.

    A model scoring its own earlier answers (the final fit judging every earlier
    recommendation) shows the last one at zero gap whatever the truth; this series shows, at
    each step, only what was known then, and the data themselves beside it."""
    from steplaw_opt.samplers._refined import optimum_draws

    sampler = _resolve_sampler(study, sampler)
    trials = study.get_trials(deepcopy=False)
    keys = ("trial", "compute", "recommended", "recommended_lo", "recommended_hi", "observed")
    out: dict[str, list[float]] = {k: [] for k in keys}
    best_at: dict[float, float] = {}
    for t in trials:
        if t.state.name == "COMPLETE" and t.value is not None:
            d = float(t.user_attrs.get("steplaw.D", 0.0))
            best_at[d] = min(best_at.get(d, math.inf), float(t.value))
    rng = np.random.default_rng(0)
    spent = 0.0
    for k, t in enumerate(trials, 1):
        if not t.state.is_finished():
            continue
        if t.user_attrs.get("steplaw.failure") != "interrupted":
            spent += float(t.user_attrs.get("steplaw.compute", 0.0))
        now = _model(study, sampler, trials=k)
        draws = optimum_draws(sampler, now.posterior, now.region, rng, n_draws)
        d = draws - now.w_star
        gaps = 100.0 * np.expm1(np.einsum("ni,ij,nj->n", d, now.hessian, d))
        lo, mid, hi = np.percentile(gaps, [10, 50, 90])
        scale_d = float(t.user_attrs.get("steplaw.D", 0.0))
        observed = math.nan
        if t.state.name == "COMPLETE" and t.value is not None and best_at.get(scale_d):
            observed = 100.0 * (float(t.value) / best_at[scale_d] - 1.0)
        out["trial"].append(t.number)
        out["compute"].append(spent)
        out["recommended"].append(float(mid))
        out["recommended_lo"].append(float(lo))
        out["recommended_hi"].append(float(hi))
        out["observed"].append(observed)
    return out


def convergence_plot(study: Any, sampler: Any = None) -> Plot:
    """The recommendation's expected gap at the target (with its 10–90 % band) and the observed
    runs, against trials and against compute spent, in percent."""
    from matplotlib.ticker import FuncFormatter

    series = convergence_series(study, sampler)
    fig = _figure(10.0, 4.0)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key, label in (
        (axes[0], "trial", "trial number"),
        (axes[1], "compute", "compute spent (target-run equivalents)"),
    ):
        x = series[key]
        ax.fill_between(
            x,
            series["recommended_lo"],
            series["recommended_hi"],
            step="post",
            alpha=0.2,
            label="10–90 % of what it may cost",
        )
        ax.step(
            x,
            series["recommended"],
            where="post",
            marker="o",
            ms=4,
            label="recommendation so far: expected gap",
            gid=f"recommended-{key}",
        )
        ax.scatter(
            x,
            series["observed"],
            marker="s",
            s=14,
            color="black",
            alpha=0.6,
            label="each run: loss above the best at its scale",
            gid=f"observed-{key}",
        )
        ax.axhline(0.25, color="grey", ls=":", lw=1, label="0.25 % plateau")
        ax.set_yscale("symlog", linthresh=0.1)  # percent; the best run of a scale sits at 0
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g} %"))
        ax.set_xlabel(label)
        ax.grid(True, which="both", alpha=0.2)
    axes[0].set_ylabel("loss gap at the target (%)")
    axes[0].legend(fontsize=7)
    fig.suptitle(
        f"{study.study_name}: convergence (each point by the model fitted on the runs so far)",
        fontsize=10,
    )
    return Plot("convergence", fig, dict(series))


# ------------------------------------------------------------------------------- (u, v)
def uv_plot(study: Any, sampler: Any = None, refined: Any = None) -> Plot | None:
    """Observations in law-normalised (u, v), one colour per scale; None for one scale."""
    sampler = _resolve_sampler(study, sampler)
    points = _trial_points(study, sampler)
    scales = sorted({(p["N"] or 0.0, p["D"] or 0.0) for p in points})
    if len(scales) < 2:
        return None
    model = _model(study, sampler)
    fig = _figure(7.0, 5.6)
    ax = fig.add_subplot()
    cmap = _cmap()
    counts = {}
    for i, (n, d) in enumerate(scales):
        sel = [p for p in points if (p["N"] or 0.0, p["D"] or 0.0) == (n, d)]
        ok = [p for p in sel if p["gap"] is not None]
        bad = [p for p in sel if p["gap"] is None]
        colour = cmap(i / max(len(scales) - 1, 1) * 0.9)
        ax.scatter(
            [p["u"] for p in ok],
            [p["v"] for p in ok],
            color=colour,
            s=40,
            edgecolors="black",
            linewidths=0.6,
            label=f"N={_size(n)}, D={_size(d)}",
            gid=f"scale-{i}",
        )
        if bad:
            ax.scatter([p["u"] for p in bad], [p["v"] for p in bad], color=colour, marker="x", s=40)
        for p in sel:
            ax.annotate(
                str(p["trial"]),
                (p["u"], p["v"]),
                xytext=(4, 4),
                textcoords="offset points",
                fontsize=7,
            )
        counts[f"N={n:g},D={d:g}"] = len(sel)
    prior = _ellipse(sampler.prior.mean, sampler.prior.cov, sampler._radius2)
    ax.plot(prior[:, 0], prior[:, 1], ":", color="#333333", label="prior 99 %")
    ax.scatter([0], [0], marker="D", s=50, color="white", edgecolors="black", label="law", zorder=5)
    ax.scatter(
        [model.w_star[0]],
        [model.w_star[1]],
        marker="*",
        s=200,
        color="gold",
        edgecolors="black",
        label="bowl optimum",
        zorder=6,
    )
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel("u = ln lr − ln lr*(scale)")
    ax.set_ylabel("v = ln B − ln B*(scale)")
    ax.set_title(f"{study.study_name}: observations in law-normalised coordinates", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.2)
    return Plot("uv", fig, {"per_scale": counts, "optimum_uv": model.w_star.tolist()})


# ------------------------------------------------------------------------------- all
def study_plots(study: Any, sampler: Any = None, refined: Any = None) -> list[Plot]:
    """Every plot that applies to the study (the (u, v) plot for multi-scale studies only)."""
    sampler = _resolve_sampler(study, sampler)
    plots = [landscape_plot(study, sampler, refined), convergence_plot(study, sampler)]
    uv = uv_plot(study, sampler, refined)
    if uv is not None:
        plots.append(uv)
    return plots


def write_plots(
    study: Any, folder: str | Path, *, sampler: Any = None, refined: Any = None
) -> list[Path]:
    """Write :func:`study_plots` as ``<folder>/<name>.png``; returns the paths."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SteplawInputError(f"cannot write plots to {str(folder)!r}: {exc.strerror}") from None
    return [p.save(folder / f"{p.name}.png") for p in study_plots(study, sampler, refined)]
