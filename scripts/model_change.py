"""The refined optimum before and after the landscape-model change of the yardstick issue.

"Before" is the previous bowl prior (one Gaussian prior on the law's error, weight window
τ 0.2 %, cut 0.6 %); "now" is the shipped one (priors/data/landscape.toml). Both run the same
bench: PlateauSampler, published law, 17 settings × 3 seeds, the released grids and the
``const:0.5`` shifted landscape, scored on the mean of the three noise-free surfaces.

    python scripts/model_change.py [path/to/dense_lr_bs_loss.csv]
"""

from __future__ import annotations

import dataclasses
import sys

from steplaw_opt import landscape
from steplaw_opt.bench import BenchConfig, run_bench

BUDGETS = (3, 5, 10, 20)


def rows(label: str, grid: str | None) -> None:
    config = BenchConfig(
        grid_path=grid,
        methods=("law", "plateau"),
        priors=("published",),
        seeds=3,
        shifts=("none", "const:0.5"),
    )
    summary = run_bench(config).summary()
    for shift in config.shifts:
        sub = summary[(summary["shift"] == shift) & (summary["method"] == "plateau")]
        sub = sub.set_index("budget")["mean_mean"]
        cells = " / ".join(f"{sub.loc[k]:.3f}" for k in BUDGETS)
        print(f"{label:7s} {shift:10s} k = {'/'.join(map(str, BUDGETS))}: {cells} %")


def main() -> None:
    grid = sys.argv[1] if len(sys.argv) > 1 else None
    shipped = landscape.BowlPrior.default()
    previous = dataclasses.replace(
        shipped, tau=0.002, cut=0.006, law_widths=(1.0,), law_weights=(1.0,)
    )
    original = landscape.BowlPrior.default
    landscape.BowlPrior.default = classmethod(lambda cls: previous)  # type: ignore[method-assign]
    try:
        rows("before", grid)
    finally:
        landscape.BowlPrior.default = original  # type: ignore[method-assign]
    rows("now", grid)


if __name__ == "__main__":
    main()
