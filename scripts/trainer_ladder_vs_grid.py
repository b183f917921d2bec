"""Proxies at smaller models on the built-in trainer, scored against ground-truth grids.

For each trainer grid (docs/data/trainer_grid.csv: N = 1e5; docs/data/trainer_grid_4e5.csv:
N = 4e5, 4× the first; both D = 2e6 tokens, seq_len 128, seed 0) it compares, against the
grid's best full run:

- the law alone: the Step Law's point at the target;
- tune: ``tune()`` with the built-in trainer and proxies ONLY at smaller models on fewer tokens
  (a ladder, ``--ladder``: N/4 on D/4 and N/8 on D/8 by default), at each budget, then its
  refined optimum;
- TPE: Optuna's TPESampler given the same compute, all of it at the ladder's cheapest rung, its
  best (lr, batch) carried to the target along the law (same u, v).

Every study runs with ``--seeds`` seeds (the sampler's seed: a different study each time, the
trainer's own seed fixed, as the grid's). Each recommendation is trained once at the target
(seed 0, as the grid) and scored gap = loss / grid best − 1; the printout gives each method's
mean and worst gap per grid and budget. The law point's run-to-run noise (the grids' repeats at
other seeds) is printed beside it: a gap below it is within noise.

Both searches use the same bounds: lr in [1e-4, 0.3], batch in [2, 64] sequences.

    python scripts/trainer_ladder_vs_grid.py                 # both grids, one CSV each
    python scripts/trainer_ladder_vs_grid.py --grid 1e5 --seeds 1 --budgets 0.1   # a quick look
    python scripts/trainer_ladder_vs_grid.py --methods tune   # after a model change: TPE and
                                                              # the law's point do not move
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import time
from pathlib import Path

import optuna
import torch

from steplaw_opt import Scale, load_law
from steplaw_opt.objectives import BuiltinTrainerObjective, RunContext
from steplaw_opt.trainer import train
from steplaw_opt.tune import ladder_scales, plan_proxies, tune

REPO = Path(__file__).resolve().parents[1]
GRIDS = {
    "1e5": REPO / "docs" / "data" / "trainer_grid.csv",
    "4e5": REPO / "docs" / "data" / "trainer_grid_4e5.csv",
}
OUT = REPO / "docs" / "data" / "trainer_ladder_{grid}.csv"  # one per grid: they can run at once
TOKENS = 2e6
SEQ_LEN = 128
LR_BOUNDS = (1e-4, 0.3)
BATCH_BOUNDS = (2, 64)


def grid_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def grid_best(rows: list[dict[str, str]]) -> float:
    return min(float(r["loss"]) for r in rows if r["diverged"] == "False" and r["seed"] == "0")


def repeat_noise(rows: list[dict[str, str]]) -> float:
    """Relative sd of the law point's repeats (the cell run at several seeds)."""
    by_cell: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        by_cell.setdefault((r["lr"], r["batch_size"]), []).append(float(r["loss"]))
    repeated = max(by_cell.values(), key=len)
    return statistics.stdev(repeated) / statistics.mean(repeated) if len(repeated) > 1 else 0.0


def at_target(target: Scale, lr: float, batch: float) -> float:
    return train(lr, max(BATCH_BOUNDS[0], round(batch)), target, seed=0).loss


def tpe_point(target: Scale, rung: Scale, n_runs: int, seed: int) -> tuple[float, float]:
    """TPE's best at ``rung`` after ``n_runs``, carried to ``target`` along the law."""
    law = load_law("step-law")
    objective = BuiltinTrainerObjective()

    def run(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", *LR_BOUNDS, log=True)
        batch = trial.suggest_int("batch_size", *BATCH_BOUNDS, log=True)
        return objective.run(lr, batch, rung, RunContext())

    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(run, n_trials=n_runs, catch=(Exception,))
    bp = study.best_params
    lr = bp["lr"] * law.lr_at(target) / law.lr_at(rung)
    batch = bp["batch_size"] * law.batch_tokens_at(target) / law.batch_tokens_at(rung)
    return lr, batch


def run_grid(
    name: str,
    budgets: list[float],
    seeds: int,
    factors: list[float],
    start: float,
    methods: set[str],
) -> list[dict[str, object]]:
    """The law, tune and TPE (those of them in ``methods``) at every budget and seed on the grid
    of target N = ``name``."""
    law = load_law("step-law")
    rows: list[dict[str, object]] = []
    grid = grid_rows(GRIDS[name])
    n = float(grid[0]["N"])  # the trainer's shape for the grid's N, as the grid ran it
    target = Scale(N=float(name), D=TOKENS, seq_len=SEQ_LEN)
    best, noise = grid_best(grid), repeat_noise(grid)
    ladder = [target.N / f for f in factors]
    rungs = ladder_scales(target, ladder)
    cheapest = min(rungs, key=lambda s: float(s.N) * float(s.D))

    def record(method: str, budget: float, seed: int, lr: float, batch: float) -> None:
        loss = at_target(target, lr, batch)
        gap = loss / best - 1 if math.isfinite(loss) else math.inf
        rows.append(
            {
                "grid_N": name,
                "method": method,
                "budget": budget,
                "seed": seed,
                "lr": f"{lr:.5g}",
                "batch_size": max(BATCH_BOUNDS[0], round(batch)),
                "loss": f"{loss:.4f}",
                "grid_best": f"{best:.4f}",
                "gap": f"{gap:.4%}",
            }
        )
        print(
            f"[{time.perf_counter() - start:5.0f} s] N={name} {method:5s} budget {budget:<5g} "
            f"seed {seed}: lr {lr:.4g} batch {batch:.3g} -> {loss:.4f} ({gap:.2%})",
            flush=True,
        )

    repeats = f", run-to-run sd at the law's point {noise:.2%}" if noise else ""
    print(f"grid N={name} (trainer N {n:.0f}): best {best:.4f}{repeats}")
    if "law" in methods:
        record("law", 0.0, 0, law.lr_at(target), law.batch_tokens_at(target) / SEQ_LEN)
    for budget in budgets:
        plan = plan_proxies(target, budget, allowed_scales=rungs)
        print(
            f"  budget {budget:g}: "
            + ", ".join(f"{s.runs} at N={s.scale.N:.3g} D={s.scale.D:.3g}" for s in plan.stages)
        )
        n_tpe = max(
            1,
            int(
                budget / (float(cheapest.N) * float(cheapest.D)) * float(target.N) * float(target.D)
                + 1e-9
            ),
        )
        for seed in range(seeds):
            if "TPE" in methods:
                record("TPE", budget, seed, *tpe_point(target, cheapest, n_tpe, seed))
            if "tune" not in methods:
                continue
            result = tune(
                target,
                BuiltinTrainerObjective(),
                budget=budget,
                ladder=ladder,
                storage=":memory:",
                seed=seed,
                lr_bounds=LR_BOUNDS,
                batch_bounds=BATCH_BOUNDS,
            )
            opt = result.refined
            record("tune", budget, seed, opt.lr, opt.batch_sequences)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", action="append", choices=sorted(GRIDS), help="default: both")
    p.add_argument("--budgets", default="0.1,0.25")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--ladder", default="4,8", help="factors of N (tokens in proportion)")
    p.add_argument("--out", default=str(OUT), help="{grid} is the grid's N")
    p.add_argument("--methods", default="law,tune,TPE", help="a comma list of law, tune, TPE")
    args = p.parse_args()
    methods = set(args.methods.split(","))
    if not methods or methods - {"law", "tune", "TPE"}:
        p.error(f"--methods: choose from law, tune, TPE, got {args.methods!r}")
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    budgets = [float(b) for b in args.budgets.split(",")]
    factors = [float(f) for f in args.ladder.split(",")]
    rows: list[dict[str, object]] = []
    start = time.perf_counter()
    for name in args.grid or sorted(GRIDS):
        mine = run_grid(name, budgets, args.seeds, factors, start, methods)
        out = Path(args.out.format(grid=name))
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(mine[0]))
            w.writeheader()
            w.writerows(mine)
        print(f"wrote {out}")
        rows += mine
    summarise(rows)
    print(f"wall time {time.perf_counter() - start:.0f} s")


def summarise(rows: list[dict[str, object]]) -> None:
    print("\ngap to the grid's best full run (mean / worst over seeds)")
    keys = sorted({(str(r["grid_N"]), str(r["method"]), float(r["budget"])) for r in rows})
    for grid, method, budget in keys:
        gaps = [
            float(str(r["gap"]).rstrip("%"))
            for r in rows
            if (r["grid_N"], r["method"], float(r["budget"])) == (grid, method, budget)
        ]
        print(
            f"  N={grid}  {method:5s} budget {budget:<5g} n={len(gaps)}  "
            f"mean {statistics.mean(gaps):6.2f} %  worst {max(gaps):6.2f} %"
        )


if __name__ == "__main__":
    main()
