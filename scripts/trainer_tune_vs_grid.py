"""The law alone, `tune` (budget 1.0) and Optuna's TPE with the same compute, on the built-in
trainer, scored against the ground-truth grid of full target runs (docs/data/trainer_grid.csv).

Target: N = 1e5 (the trainer's shape for it), D = 2e6 tokens, seq_len 128 — the grid's target.
Every recommendation is trained once at the target (seed 0, as the grid) and its held-out loss
compared with the grid's best: gap = loss / best − 1.

- law alone: the Step Law's point at the target;
- tune: `tune()` with the built-in trainer, budget 1.0 target-run equivalents of proxy runs at
  D/16, D/8, D/4, then its refined optimum;
- TPE: Optuna's TPESampler given the same compute: 16 runs at D/16 (16 × 1/16 = 1.0), its best
  (lr, batch) carried to the target along the law (same u, v).

Both searches use the same bounds: lr in [1e-4, 0.3], batch in [2, 64] sequences.

    python scripts/trainer_tune_vs_grid.py            # writes docs/data/trainer_comparison.csv
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import optuna
import torch

from steplaw_opt import Scale, load_law
from steplaw_opt.objectives import BuiltinTrainerObjective
from steplaw_opt.trainer import train
from steplaw_opt.tune import tune

REPO = Path(__file__).resolve().parents[1]
GRID = REPO / "docs" / "data" / "trainer_grid.csv"
OUT = REPO / "docs" / "data" / "trainer_comparison.csv"
TARGET = Scale(N=1e5, D=2e6, seq_len=128)
LR_BOUNDS = (1e-4, 0.3)
BATCH_BOUNDS = (2, 64)


def grid_best() -> float:
    with GRID.open() as f:
        return min(float(r["loss"]) for r in csv.DictReader(f) if r["diverged"] == "False")


def at_target(lr: float, batch: float) -> float:
    return train(lr, max(BATCH_BOUNDS[0], round(batch)), TARGET, seed=0).loss


def main() -> None:
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    law = load_law("step-law")
    best = grid_best()
    rows = []
    start = time.perf_counter()

    lr0, b0 = law.lr_at(TARGET), law.batch_tokens_at(TARGET) / TARGET.seq_len
    rows.append(("law alone", 0.0, lr0, b0, at_target(lr0, b0)))
    print(f"law alone: lr {lr0:.4g} batch {b0:.3g} -> {rows[-1][-1]:.4f}", flush=True)

    result = tune(
        TARGET,
        BuiltinTrainerObjective(),
        budget=1.0,
        storage=":memory:",
        seed=0,
        lr_bounds=LR_BOUNDS,
        batch_bounds=BATCH_BOUNDS,
    )
    opt = result.refined
    rows.append(
        (
            "tune (budget 1.0)",
            result.compute_spent,
            opt.lr,
            opt.batch_sequences,
            at_target(opt.lr, opt.batch_sequences),
        )
    )
    print(
        f"tune: lr {opt.lr:.4g} batch {opt.batch_sequences:.3g} -> {rows[-1][-1]:.4f}", flush=True
    )

    proxy = TARGET.with_tokens(TARGET.D / 16)
    objective = BuiltinTrainerObjective()

    def tpe_objective(trial: optuna.Trial) -> float:
        from steplaw_opt.objectives import RunContext

        lr = trial.suggest_float("lr", *LR_BOUNDS, log=True)
        batch = trial.suggest_int("batch_size", *BATCH_BOUNDS, log=True)
        return objective.run(lr, batch, proxy, RunContext())

    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(tpe_objective, n_trials=16, catch=(Exception,))
    bp = study.best_params
    # Carry the proxy's best to the target along the law: same (u, v).
    lr_t = bp["lr"] * law.lr_at(TARGET) / law.lr_at(proxy)
    b_t = bp["batch_size"] * law.batch_tokens_at(TARGET) / law.batch_tokens_at(proxy)
    rows.append(("TPE, same compute", 1.0, lr_t, b_t, at_target(lr_t, b_t)))
    print(f"TPE: lr {lr_t:.4g} batch {b_t:.3g} -> {rows[-1][-1]:.4f}", flush=True)

    with OUT.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "proxy_compute", "lr", "batch_size", "loss", "grid_best", "gap"])
        for name, compute, lr, batch, loss in rows:
            w.writerow(
                [
                    name,
                    f"{compute:.3f}",
                    f"{lr:.5g}",
                    round(batch),
                    f"{loss:.4f}",
                    f"{best:.4f}",
                    f"{loss / best - 1:.4%}",
                ]
            )
    print(f"\ngrid best {best:.4f} (docs/data/trainer_grid.csv); target N=1e5 D=2e6 seq 128")
    for name, compute, lr, batch, loss in rows:
        gap = loss / best - 1 if math.isfinite(loss) else math.inf
        print(
            f"{name:20s} compute {compute:.2f}  lr {lr:.4g}  batch {round(batch):3d}  "
            f"loss {loss:.4f}  gap {gap:.2%}"
        )
    print(f"wall time {time.perf_counter() - start:.0f} s; wrote {OUT}")


if __name__ == "__main__":
    main()
