"""``steplaw-opt bench --report DIR``: the benchmark as a markdown page and two figures.

- ``budget-curves.png`` — the recommendation's gap (mean of the noise-free surfaces) against
  trials, one line per method, the law's gap as a dashed line; one panel per landscape × prior;
- ``coverage.png`` — how often the refined optimum's 68 % and 95 % intervals contain the
  surfaces' argmins, against trials, with the nominal levels drawn;
- ``README.md`` — what was run, the headline table per landscape and prior, every other table,
  and the wall time.

matplotlib (Agg canvas, no pyplot state) is imported when a report is written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from steplaw_opt.bench._runner import PRIOR_LABELS, REFINED, ROW_ORDER, BenchResult, _pct
from steplaw_opt.errors import SteplawInputError

FIGURES = ("budget-curves.png", "coverage.png")


def check_report_dir(path: str | Path) -> Path:
    """The report folder, checked before the bench runs (so a typo does not cost the run);
    it is created only when the report is written."""
    folder = Path(path)
    if folder.exists():
        if not folder.is_dir():
            raise SteplawInputError(f"--report {str(folder)!r} is a file, not a folder")
        if not os.access(folder, os.W_OK):
            raise SteplawInputError(f"--report {str(folder)!r} is not writable")
        return folder
    parent = folder.resolve().parent
    if not parent.is_dir():
        raise SteplawInputError(f"--report {str(folder)!r}: {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise SteplawInputError(f"--report {str(folder)!r}: {str(parent)!r} is not writable")
    return folder


def _figure(rows: int, cols: int) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * cols, 3.2 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> None:
    """Write atomically: a reader never sees half a PNG."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".png.tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, format="png")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _panels(result: BenchResult) -> tuple[Any, list[tuple[Any, pd.DataFrame, str, str]]]:
    """A figure with one panel per landscape × prior: (figure, [(axes, summary rows, shift,
    prior)])."""
    summary = result.summary()
    cfg = result.config
    fig = _figure(len(cfg.shifts), len(cfg.priors))
    axes = fig.subplots(len(cfg.shifts), len(cfg.priors), squeeze=False)
    panels = []
    for row, shift in enumerate(cfg.shifts):
        for col, prior in enumerate(cfg.priors):
            sub = summary[(summary["shift"] == shift) & (summary["prior"] == prior)]
            panels.append((axes[row][col], sub, shift, prior))
    return fig, panels


def _dress(ax: Any, budgets: Sequence[int], shift: str, prior: str, ylabel: str) -> None:
    ax.set_xscale("log")
    ax.set_xticks(list(budgets), [str(k) for k in budgets])
    ax.set_xlabel("trials k")
    ax.set_ylabel(ylabel)
    ax.set_title(f"shift {shift}, {PRIOR_LABELS[prior]}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)


def budget_curves(result: BenchResult, path: Path) -> Path:
    """Gap of the recommendation against trials, one panel per landscape × prior."""
    cfg = result.config
    fig, panels = _panels(result)
    styles = ["-o", "-s", "-^", "-v", "-D", "-P", "-X", "-*"]
    for n, (ax, sub, shift, prior) in enumerate(panels):
        law = sub[sub["method"] == "law"]["mean_mean"]
        methods = [m for m in ROW_ORDER if m != "law" and (sub["method"] == m).any()]
        for i, method in enumerate(methods):
            rows = sub[sub["method"] == method].sort_values("budget")
            ax.plot(rows["budget"], rows["mean_mean"], styles[i % len(styles)], ms=4, label=method)
        if not law.empty:
            ax.axhline(float(law.iloc[0]), color="black", ls="--", lw=1, label="law alone")
        ax.set_yscale("log")
        _dress(ax, cfg.budgets, shift, prior, "gap of the recommendation, %")
        if n == 0:
            ax.legend(fontsize=7)
    fig.suptitle(
        f"noise-free gap (mean of {len(cfg.surfaces)} surfaces), {len(result.settings)} "
        f"settings × {cfg.seeds} seeds",
        fontsize=10,
    )
    _save(fig, path)
    return path


def coverage_curves(result: BenchResult, path: Path) -> Path:
    """Share of surface argmins inside the refined optimum's intervals, against trials."""
    fig, panels = _panels(result)
    for n, (ax, sub, shift, prior) in enumerate(panels):
        for method in (m for m in REFINED if (sub["method"] == m).any()):
            rows = sub[sub["method"] == method].sort_values("budget")
            for level, style in (("68", "--"), ("95", "-")):
                both = (rows[f"cover{level}_lr"] + rows[f"cover{level}_batch"]) / 2
                ax.plot(rows["budget"], both, style, marker="o", ms=3, label=f"{method} {level} %")
        ax.axhline(0.68, color="grey", ls=":", lw=1)
        ax.axhline(0.95, color="grey", ls=":", lw=1)
        ax.set_ylim(0, 1.02)
        _dress(ax, result.config.budgets, shift, prior, "coverage (lr and batch)")
        if n == 0:
            ax.legend(fontsize=7)
    fig.suptitle("calibration of the refined optimum's intervals (nominal: dotted)", fontsize=10)
    _save(fig, path)
    return path


def _markdown_table(
    summary: pd.DataFrame, budgets: Sequence[int], cell: Any, methods: Sequence[str] = ROW_ORDER
) -> str:
    has_law = (summary["method"] == "law").any()
    cols = ([0] if has_law else []) + list(budgets)
    head = "| method | " + " | ".join("law (k=0)" if k == 0 else f"k={k}" for k in cols) + " |"
    lines = [head, "| --- " * (len(cols) + 1) + "|"]
    for method in methods:
        rows = summary[summary["method"] == method].set_index("budget")
        if rows.empty:
            continue
        cells = [cell(rows.loc[k]) if k in rows.index else "—" for k in cols]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(result: BenchResult) -> str:
    """The report page (figures referenced by their file names)."""
    summary = result.summary()
    cfg = result.config
    names = list(cfg.surfaces)
    out = [
        "# steplaw-opt bench",
        "",
        f"{len(result.settings)} settings × {cfg.seeds} seeds; budgets {list(cfg.budgets)}; "
        f"methods {', '.join(cfg.methods)}; landscapes {', '.join(cfg.shifts)}; surfaces "
        f"{', '.join(names)}. Wall time {result.wall_time_s:.0f} s.",
        "",
        "The headline is the gap of the point a user would train with (the refined optimum for "
        "steplaw-opt's samplers, the best trial for the others, the law's point for the law), "
        "on noise-free surfaces of the released grids, in %. The best observed trial's raw "
        "loss is partly luck (one run per cell) and is shown last.",
        "",
        "![budget curves](budget-curves.png)",
        "",
        "![coverage](coverage.png)",
        "",
    ]
    for note in result.notes:
        out += [f"*note: {note}*", ""]
    for shift in cfg.shifts:
        for prior in cfg.priors:
            sub = summary[(summary["shift"] == shift) & (summary["prior"] == prior)]
            out += [f"## shift {shift}, {PRIOR_LABELS[prior]}", ""]
            out += [
                "Recommendation, mean of the surfaces, mean % (median %):",
                "",
                _markdown_table(
                    sub,
                    cfg.budgets,
                    lambda r: f"{_pct(r['mean_mean'])} ({_pct(r['median_mean'])})",
                ),
                "",
                f"Each surface ({' / '.join(names)}), mean %:",
                "",
                _markdown_table(
                    sub, cfg.budgets, lambda r: " / ".join(_pct(r[f"mean_{n}"]) for n in names)
                ),
                "",
                "Out of sample (raw loss of the recommended cell when never run), mean % (how "
                "many qualified):",
                "",
                _markdown_table(
                    sub,
                    cfg.budgets,
                    lambda r: f"{_pct(r['mean_oos'])} ({int(r['oos_n'])}/{int(r['runs'])})",
                ),
                "",
                "Best observed trial, raw grid (partly luck), mean %:",
                "",
                _markdown_table(sub, cfg.budgets, lambda r: _pct(r["mean_raw"])),
                "",
            ]
            refined = [m for m in REFINED if (sub["method"] == m).any()]
            if refined:
                out += [
                    "Calibration of the refined optimum — share of surface argmins inside the "
                    "68 % | 95 % intervals (lr/batch); median 95 % ln-width (lr/batch):",
                    "",
                    _markdown_table(
                        sub[sub["method"].isin(refined)],
                        cfg.budgets,
                        lambda r: (
                            f"{r['cover68_lr']:.2f}/{r['cover68_batch']:.2f} \\| "
                            f"{r['cover95_lr']:.2f}/{r['cover95_batch']:.2f}; "
                            f"{r['width95_lr']:.2f}/{r['width95_batch']:.2f}"
                        ),
                        methods=refined,
                    ),
                    "",
                ]
    fits = []
    for n in names:
        rms = [s["surfaces"][n]["residual_rms_near_pct"] for s in result.settings]
        fits.append(f"{n} {sum(rms) / max(len(rms), 1):.3f} %")
    out += [
        "Surfaces: RMS residual of the cells within 0.5 % of each minimum — "
        + ", ".join(fits)
        + " (run-to-run noise ≈ 0.07 %).",
        "",
    ]
    return "\n".join(out)


def write_report(folder: str | Path, result: BenchResult, overhead: Any = None) -> Path:
    """Write ``README.md`` and the figures to ``folder``; returns the page's path."""
    out = check_report_dir(folder)
    out.mkdir(exist_ok=True)
    budget_curves(result, out / FIGURES[0])
    coverage_curves(result, out / FIGURES[1])
    page = markdown(result)
    if overhead is not None:
        frame, _ = overhead
        page += "\n## Time per suggestion, ms (median)\n\n"
        hist = sorted(frame["history"].unique())
        page += "| method | " + " | ".join(f"{h} trials" for h in hist) + " |\n"
        page += "| --- " * (len(hist) + 1) + "|\n"
        for method in dict.fromkeys(frame["method"]):
            cells = []
            for h in hist:
                r = frame[(frame["method"] == method) & (frame["history"] == h)]
                cells.append("—" if r.empty else f"{r['median_ms'].iloc[0]:.1f}")
            page += f"| {method} | " + " | ".join(cells) + " |\n"
    path = out / "README.md"
    fd, tmp = tempfile.mkstemp(dir=out, suffix=".md.tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(page)
    os.replace(tmp, path)
    return path
