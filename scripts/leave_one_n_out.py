"""Leave-one-N-out on the released dense runs: published law vs refit vs Bayesian refinement.

For each model size N of ``dense_lr_bs_loss.csv``, hold out every setting with that N and
predict each held-out setting's optimum with

(a) the published Step Law card (``step-law``; it saw these runs, so it is not held out),
(b) ``fit_law`` on the other sizes (the authors' method, 0.25 % rule),
(c) ``refine_law``: the published card refined with the other sizes.

Scores per held-out setting: the error of the predicted lr and batch against the setting's best
grid point, in ln units, and the loss gap on the grid: snap the prediction to the nearest grid
point of the setting in (ln lr, ln bs) and take its smooth loss / the setting's minimum − 1.

Then the intervals' coverage (issue 17): how often the held-out setting's optimum falls inside
each law's 68 % and 95 % intervals of the law's mean (coefficient covariance only) and of where
the optimum is (``Prediction.optimum``: coefficient covariance + the card's residual scatter,
widened outside its validity range), lr and batch apart, with the median ln-width. The optimum
is taken two ways: the setting's best grid cell (lowest ``smooth loss``, the truth of the
errors above) and the argmin of the bench's ``cubic-3%`` noise-free surface of the setting. Each
law's covariance and residual are its own: the published card's (the authors' 1,000 bootstrap
fits; the residual measured on all runs, so it saw the held-out ones), the refit's (bootstrap of
the other sizes' near-optimal runs, 1,000 resamples as the authors do; residual their RMS around
the refit; validity their N range, so a held-out smallest or largest N is an extrapolation), the
refinement's (posterior covariance; residual the other sizes' RMS around it).

Usage: python scripts/leave_one_n_out.py [path/to/dense_lr_bs_loss.csv] [--json]
(``--json``: the rows, each with its two optima and its intervals.)
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from steplaw_opt.bench import default_grid_path, load_grids, noise_free_surfaces
from steplaw_opt.priors import fit_law, load_law, read_runs_csv, refine_law
from steplaw_opt.sizes import format_size

METHODS = ("published", "refit", "refined")
TRUTHS = {"grid": "best grid cell", "cubic": "cubic-3% surface argmin"}
KINDS = {"mean": "law's mean", "optimum": "optimum"}
MASSES = ("68%", "95%")
QUANTITIES = ("lr", "batch")


def leave_one_n_out(path: Path, eps: float = 0.0025) -> list[dict]:
    """One row per held-out setting and method: ln errors of lr and batch, the loss gap, the
    two optima (best grid cell, cubic surface argmin) and the law's intervals there."""
    runs = read_runs_csv(path)
    grids = load_grids(path)
    published = load_law("step-law")
    rows = []
    for n in np.unique(runs.N):
        rest = runs.subset(runs.N != n)
        laws = {
            "published": published,
            "refit": fit_law(rest, eps=eps, n_bootstrap=1000, name="loo-refit").law,
            "refined": refine_law(published, rest, eps=eps, name="loo-refined").law,
        }
        for g in (g for g in grids if g.N == n):
            best = g.best_index
            (cubic,) = noise_free_surfaces(g, names=("cubic-3%",))
            for method, law in laws.items():
                p = law.predict(g.scale)
                rows.append(
                    {
                        "N": g.N,
                        "D": g.D,
                        "method": method,
                        "d_ln_lr": math.log(p.lr) - math.log(g.lr[best]),
                        "d_ln_batch": math.log(p.batch_sequences) - math.log(g.batch[best]),
                        "gap": g.gap(g.loss_at(p.lr, p.batch_sequences)),
                        "truth": {
                            "grid": {"lr": float(g.lr[best]), "batch": float(g.batch[best])},
                            "cubic": {"lr": cubic.argmin_lr, "batch": cubic.argmin_batch},
                        },
                        "intervals": _intervals(p),
                    }
                )
    return rows


def _intervals(p) -> dict:
    """``{"mean"|"optimum": {"lr"|"batch": {"68%"|"95%": [low, high]}}}``, batch in sequences
    (the grids' unit); a kind the law cannot give is left out."""
    doc = p.to_dict()
    out = {}
    if doc["lr_interval"]:
        out["mean"] = {"lr": doc["lr_interval"], "batch": doc["batch_sequences_interval"]}
    if doc["optimum_interval"]:
        opt = doc["optimum_interval"]
        out["optimum"] = {"lr": opt["lr"], "batch": opt["batch_sequences"]}
    return out


def coverage(truths: Sequence[float], intervals: Sequence[Sequence[float]]) -> tuple[float, float]:
    """(share of ``truths`` inside their ``[low, high]``, median ln-width of the intervals)."""
    if len(truths) != len(intervals) or not truths:
        raise ValueError("coverage needs one interval per truth, and at least one")
    inside = [lo <= t <= hi for t, (lo, hi) in zip(truths, intervals, strict=True)]
    widths = [math.log(hi / lo) for lo, hi in intervals]
    return sum(inside) / len(inside), float(np.median(widths))


def coverage_table(rows: list[dict]) -> list[dict]:
    """One entry per (truth, method, interval kind): coverage and median ln-width of each
    quantity at each mass, over the held-out settings."""
    out = []
    for truth in TRUTHS:
        for method in METHODS:
            sel = [r for r in rows if r["method"] == method]
            for kind in KINDS:
                if not all(kind in r["intervals"] for r in sel):
                    continue
                entry: dict = {"truth": truth, "method": method, "kind": kind, "n": len(sel)}
                for q in QUANTITIES:
                    for m in MASSES:
                        share, width = coverage(
                            [r["truth"][truth][q] for r in sel],
                            [r["intervals"][kind][q][m] for r in sel],
                        )
                        entry[f"{q} {m}"] = share
                        entry[f"{q} {m} width"] = width
                out.append(entry)
    return out


def print_coverage(table: list[dict]) -> None:
    print()
    print(
        "Coverage of the held-out settings' optima: share inside the 68 % | 95 % intervals, "
        "lr and batch; median ln-width of the 95 % interval (lr / batch)"
    )
    head = f"{'method':<10} {'interval':<11} {'lr 68|95 %':>12} {'batch 68|95 %':>14}"
    for truth, label in TRUTHS.items():
        sel = [e for e in table if e["truth"] == truth]
        print(f"\ntruth: {label} ({sel[0]['n']} held-out settings per method)")
        print(f"{head} {'95 % ln-width':>14}")
        for e in sel:
            lr = f"{e['lr 68%']:.0%} | {e['lr 95%']:.0%}"
            b = f"{e['batch 68%']:.0%} | {e['batch 95%']:.0%}"
            w = f"{e['lr 95% width']:.2f} / {e['batch 95% width']:.2f}"
            print(f"{e['method']:<10} {KINDS[e['kind']]:<11} {lr:>12} {b:>14} {w:>14}")
    print(
        "law's mean = the law's coefficient covariance only; optimum = + its residual scatter, "
        "widened outside its validity range (what `steplaw-opt predict` shows as 'optimum'). "
        "published saw the held-out runs; refit and refined did not."
    )


def _summary(rows: list[dict], method: str) -> str:
    r = [x for x in rows if x["method"] == method]
    lr = np.mean([abs(x["d_ln_lr"]) for x in r])
    b = np.mean([abs(x["d_ln_batch"]) for x in r])
    gap = np.mean([x["gap"] for x in r]) * 100
    return f"{lr:6.3f} {b:6.3f} {gap:6.3f}"


def print_table(rows: list[dict]) -> None:
    head = "  ".join(f"{m:^20}" for m in METHODS)
    sub = "  ".join(f"{'|Δln lr| |Δln B|  gap%':^20}" for _ in METHODS)
    print(f"{'held-out N':>12} {'settings':>8}  {head}")
    print(f"{'':>12} {'':>8}  {sub}")
    for n in sorted({x["N"] for x in rows}):
        sel = [x for x in rows if x["N"] == n]
        k = len(sel) // len(METHODS)
        cells = "  ".join(f"{_summary(sel, m):^20}" for m in METHODS)
        print(f"{format_size(n):>12} {k:>8}  {cells}")
    k = len(rows) // len(METHODS)
    cells = "  ".join(f"{_summary(rows, m):^20}" for m in METHODS)
    print(f"{'all (mean)':>12} {k:>8}  {cells}")
    medians = "  ".join(
        f"{np.median([x['gap'] for x in rows if x['method'] == m]) * 100:>20.3f}" for m in METHODS
    )
    print(f"{'median gap%':>12} {k:>8}  {medians}")
    print(
        "(a) published = the step-law card; (b) refit = fit_law on the other N; "
        "(c) refined = step-law refined with the other N. |Δ| in ln units against the "
        "setting's best grid point; gap = loss at the snapped prediction / setting min − 1."
    )


def main(argv: list[str]) -> None:
    args = [a for a in argv if a != "--json"]
    path = Path(args[0]) if args else default_grid_path()
    rows = leave_one_n_out(path)
    if "--json" in argv:
        print(json.dumps(rows, indent=2))  # coverage_table(rows) is the coverage
    else:
        print_table(rows)
        print_coverage(coverage_table(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
