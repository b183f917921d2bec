"""Ground-truth grid of the built-in trainer at a tiny target: the yardstick for `tune`.

Runs full target runs of :mod:`steplaw_opt.trainer` on a grid of (lr, batch) log-spaced around
the Step Law's prediction for the target — by default 6 learning rates (the law's × 2^-5 … 2^0)
× 6 batch sizes (the law's × 2^-4 … 2^1, in sequences: 1, 2, 4, 9, 18, 36) at N = 1e5 (d_model 64,
d_ff 175, 2 layers), D = 2e6 tokens, seq_len 128, seed 0 — then repeats the law's own point with
two more seeds to show the run-to-run noise. It writes ``docs/data/trainer_grid.csv`` (columns
lr, batch_size, N, D, seq_len, loss, val_loss, diverged, seconds, seed; ``loss`` is the held-out
loss the tuner minimises, D the tokens actually trained) after every run, so an interrupted
grid keeps its rows and ``--resume`` skips them, and prints a summary: the grid's best point,
the law's point, the grid point nearest the law's point and its gap to the best.

The grid is lopsided on purpose. A first pass centred on the law (lr × 2^-3 … 2^2, batch
× 2^-2 … 2^1) found the optimum at its low-lr, small-batch corner — at this tiny byte-level
scale the law, fitted on 60M–1B-parameter models, overshoots both — so the grid was extended
downwards (twice, as batch 2 then beat batch 4) with ``--resume``; the committed CSV keeps the
first pass's four extra points (lr × 2 and × 4 at batch 4 and 9).

Why this target: one core trains this model at ~45k tokens/s (less at batch ≤ 4, and 2-3×
slower on a loaded machine), so a 2e6-token run takes 40–200 s (batch 1 is the slowest) and
the grid 40-60 minutes on ONE core (the script sets torch to one thread, so other work can
share the machine). The issue's N ≈ 1e5, D ≈ 2e7 would take hours.

    python scripts/trainer_grid.py                       # the committed grid
    python scripts/trainer_grid.py --tokens 5e5 --out /tmp/g.csv   # a quicker look

The second grid, ``docs/data/trainer_grid_4e5.csv`` (N = 4e5: d_model 96, d_ff 335, 3 layers;
D = 2e6, seq_len 128; 4× the first model, so that ladders of smaller models can be scored on
two targets), is 23 seed-0 cells — lr × 2^-5 … 2^-1 at batches 2, 4, 9 and 18 sequences (law ×
2^-3 … 2^0), and lr × 2^0 at batches 4, 9, 18 — plus two more seeds at (lr × 2^-1, batch 18),
the cell next to the law's point (the law's own point is 31 % above the best there, far out on
the bowl's wall where repeats say little about the noise near the bottom). It ran in shards,
one per core, their rows concatenated under one header (4,294 s of runs):

    python scripts/trainer_grid.py --params 4e5 --lr-exponents=-5,-4,-3,-2,-1 \
        --batch-exponents=-3,-1 --extra-seeds 0 --out /tmp/a.csv
    python scripts/trainer_grid.py --params 4e5 --lr-exponents=-5,-4,-3,-2,-1 \
        --batch-exponents=-2,0 --out /tmp/b.csv   # 2 repeats of its cell nearest the law
    python scripts/trainer_grid.py --params 4e5 --lr-exponents=0 --batch-exponents=-2,-1,0 \
        --extra-seeds 0 --out /tmp/c.csv
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import torch

from steplaw_opt import Scale, load_law
from steplaw_opt.trainer import load_corpus, train

COLUMNS = [
    "lr",
    "batch_size",
    "N",
    "D",
    "seq_len",
    "loss",
    "val_loss",
    "diverged",
    "seconds",
    "seed",
]
REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", type=float, default=1e5, help="non-embedding parameters N")
    p.add_argument("--tokens", type=float, default=2e6, help="training tokens D")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr-exponents", default="-5,-4,-3,-2,-1,0", help="lr = law · 2^k")
    p.add_argument("--batch-exponents", default="-4,-3,-2,-1,0,1", help="batch = law · 2^k")
    p.add_argument("--extra-seeds", type=int, default=2, help="repeats of the law's point")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "data" / "trainer_grid.csv")
    p.add_argument("--resume", action="store_true", help="keep rows already in --out")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    scale = Scale(N=args.params, D=args.tokens, seq_len=args.seq_len)
    law = load_law("step-law").predict(scale)
    law_bs = law.batch_sequences
    lrs = [law.lr * 2.0 ** float(k) for k in args.lr_exponents.split(",")]
    batches = sorted(
        {max(1, round(law_bs * 2.0 ** float(k))) for k in args.batch_exponents.split(",")}
    )
    law_point = (
        min(lrs, key=lambda x: abs(math.log(x / law.lr))),
        min(batches, key=lambda b: abs(math.log(b / law_bs))),
    )
    plan = [(lr, b, 0) for b in batches for lr in lrs]
    plan += [(*law_point, seed) for seed in range(1, 1 + args.extra_seeds)]

    rows: list[dict[str, object]] = []
    if args.resume and args.out.exists():
        with args.out.open() as f:
            rows = list(csv.DictReader(f))
    done = {(f"{float(r['lr']):.6g}", int(r["batch_size"]), int(r["seed"])) for r in rows}
    print(f"target {scale}, seq_len {args.seq_len}: law lr {law.lr:.4g}, batch {law_bs:.1f} seqs")
    load_corpus()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for i, (lr, b, seed) in enumerate(plan, 1):
        if (f"{lr:.6g}", b, seed) in done:
            continue
        r = train(lr, b, scale, seed=seed, device="cpu")
        rows.append(
            {
                "lr": f"{lr:.6g}",
                "batch_size": b,
                "N": r.N,
                "D": r.tokens,
                "seq_len": r.seq_len,
                "loss": f"{r.loss:.6f}",
                "val_loss": f"{r.val_loss:.6f}",
                "diverged": r.diverged,
                "seconds": f"{r.seconds:.1f}",
                "seed": seed,
            }
        )
        with args.out.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(rows)
        print(
            f"[{i}/{len(plan)}] lr {lr:.4g} batch {b:3d} seed {seed}: loss {r.loss:.4f} "
            f"({r.steps} steps, {r.seconds:.1f} s; {time.perf_counter() - start:.0f} s total)",
            flush=True,
        )
    summarise(rows, law.lr, law_bs, law_point)


def summarise(
    rows: list[dict[str, object]], law_lr: float, law_bs: float, law_point: tuple[float, int]
) -> None:
    """Print the grid's best point, the law's point and the gap of the grid point nearest it."""
    grid = [r for r in rows if int(str(r["seed"])) == 0]
    loss = {(float(str(r["lr"])), int(str(r["batch_size"]))): float(str(r["loss"])) for r in grid}
    lrs = sorted({k[0] for k in loss})
    batches = sorted({k[1] for k in loss})
    print("\nheld-out loss (nats/byte), seed 0; rows lr, columns batch (sequences):")
    print("lr        " + "".join(f"{b:>9d}" for b in batches))
    for lr in lrs:
        print(f"{lr:<10.4g}" + "".join(f"{loss.get((lr, b), math.nan):9.4f}" for b in batches))
    (best_lr, best_b), best = min(loss.items(), key=lambda kv: kv[1])
    print(f"grid best:        lr {best_lr:.4g}, batch {best_b}: loss {best:.4f}")
    print(f"Step Law point:   lr {law_lr:.4g}, batch {law_bs:.1f}")
    key = (float(f"{law_point[0]:.6g}"), law_point[1])
    if key in loss:
        print(
            f"nearest to law:   lr {key[0]:.4g}, batch {key[1]}: loss {loss[key]:.4f}, "
            f"gap {100 * (loss[key] / best - 1):.2f} %"
        )
    seeds = [
        float(str(r["loss"]))
        for r in rows
        if (float(str(r["lr"])), int(str(r["batch_size"]))) == key
    ]
    if len(seeds) > 1:
        mean = sum(seeds) / len(seeds)
        sd = math.sqrt(sum((x - mean) ** 2 for x in seeds) / (len(seeds) - 1))
        print(f"law point over {len(seeds)} seeds: {mean:.4f} ± {sd:.4f} ({100 * sd / mean:.2f} %)")


if __name__ == "__main__":
    main()
