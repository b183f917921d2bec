"""Leave-one-N-out on the released dense runs: published law vs refit vs Bayesian refinement.

For each model size N of ``dense_lr_bs_loss.csv``, hold out every setting with that N and
predict each held-out setting's optimum with

(a) the published Step Law card (``step-law``; it saw these runs, so it is not held out),
(b) ``fit_law`` on the other sizes (the authors' method, 0.25 % rule),
(c) ``refine_law``: the published card refined with the other sizes.

Scores per held-out setting: the error of the predicted lr and batch against the setting's best
grid point, in ln units, and the loss gap on the grid: snap the prediction to the nearest grid
point of the setting in (ln lr, ln bs) and take its smooth loss / the setting's minimum − 1.

Usage: python scripts/leave_one_n_out.py [path/to/dense_lr_bs_loss.csv] [--json]
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from steplaw_opt.bench import default_grid_path, load_grids
from steplaw_opt.priors import fit_law, load_law, read_runs_csv, refine_law
from steplaw_opt.sizes import format_size

METHODS = ("published", "refit", "refined")


def leave_one_n_out(path: Path, eps: float = 0.0025) -> list[dict]:
    """One row per held-out setting and method: ln errors of lr and batch, and the loss gap."""
    runs = read_runs_csv(path)
    grids = load_grids(path)
    published = load_law("step-law")
    rows = []
    for n in np.unique(runs.N):
        rest = runs.subset(runs.N != n)
        laws = {
            "published": published,
            "refit": fit_law(rest, eps=eps, n_bootstrap=0, name="loo-refit").law,
            "refined": refine_law(published, rest, eps=eps, name="loo-refined").law,
        }
        for g in (g for g in grids if g.N == n):
            best = g.best_index
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
                    }
                )
    return rows


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
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows)


if __name__ == "__main__":
    main(sys.argv[1:])
