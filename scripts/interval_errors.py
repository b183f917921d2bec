"""Are the refined optimum's intervals the right width? Its errors beside its half-widths.

The bench reports how often the 68 % and 95 % intervals of the refined lr and batch hold the
noise-free surfaces' argmins. This script says by how much an interval is too wide or too
narrow: for every bench run (PlateauSampler, published and leave-one-setting-out priors) it
takes the ln distance from the recommendation to each surface's argmin, |ln(truth / rec)|, and
the interval's half-width on that side, and prints per landscape and axis: the coverage, the
68th and 95th percentiles of the error (what calibrated half-widths would be), and the median
half-widths the intervals have.

    python scripts/interval_errors.py [--seeds 9] [--budget 10] [--shifts none,const:0.5]

Takes about 25 s per shift at 9 seeds on 2 cores.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

import steplaw_opt.bench._runner as runner
from steplaw_opt.bench import BenchConfig, run_bench


def _side_errors(rec: Any, truths: Sequence[tuple[float, float]]) -> list[tuple]:
    """(axis, |ln(truth/rec)|, 68 % half-width, 95 % half-width) towards each truth."""
    rows = []
    for axis, (centre, i68, i95) in enumerate(
        ((rec.lr, rec.lr_68, rec.lr_95), (rec.batch, rec.batch_68, rec.batch_95))
    ):
        for truth in truths:
            d = math.log(truth[axis] / centre)
            side = 1 if d > 0 else 0
            h68 = abs(math.log(i68[side] / centre))
            h95 = abs(math.log(i95[side] / centre))
            rows.append((axis, abs(d), h68, h95))
    return rows


def interval_errors(config: BenchConfig) -> np.ndarray:
    """Rows (axis, error, h68, h95) of every refined recommendation the bench scores."""
    collected: list[tuple] = []
    original = runner._coverage

    def recording(rec: Any, truths: Sequence[tuple[float, float]]) -> dict[str, float]:
        if rec.lr_68 is not None:
            collected.extend(_side_errors(rec, truths))
        return original(rec, truths)

    # The bench's own coverage step sees each recommendation with its truths: listen there.
    runner._coverage = recording
    try:
        run_bench(config)
    finally:
        runner._coverage = original
    return np.asarray(collected, dtype=float).reshape(-1, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=9, help="seeds per setting [9]")
    parser.add_argument("--budget", type=int, default=10, help="trials [10]")
    parser.add_argument("--shifts", default="none,const:0.5", help="landscapes [none,const:0.5]")
    args = parser.parse_args()
    if args.seeds < 1 or args.budget < 1:
        parser.error("--seeds and --budget must be at least 1")
    start = time.perf_counter()
    print("landscape, axis: coverage 68 % | 95 %; errors, 68th / 95th pct; median half-widths")
    for shift in args.shifts.split(","):
        config = BenchConfig(
            methods=("law", "plateau"),
            priors=("published", "loo"),
            seeds=args.seeds,
            shifts=(shift,),
            budgets=(args.budget,),
        ).checked()
        rows = interval_errors(config)
        for axis, name in ((0, "lr"), (1, "batch")):
            a = rows[rows[:, 0] == axis]
            err, h68, h95 = a[:, 1], a[:, 2], a[:, 3]
            print(
                f"{shift:10s} {name:5s}: {np.mean(err <= h68):.2f} | {np.mean(err <= h95):.2f}; "
                f"errors {np.quantile(err, 0.68):.3f} / {np.quantile(err, 0.95):.3f}; "
                f"half-widths {np.median(h68):.3f} / {np.median(h95):.3f}  (n={len(a)})"
            )
    print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
