"""Does the drift model cost anything where there is nothing to drift?

The proxy benchmark (``steplaw-opt bench --proxy``'s protocol: every released dense grid that
has a smaller D at its N is a target, proxy runs only at those smaller D, no final target run)
with ``PlateauSampler(drift=False)`` and ``drift=True``. The released grids are the data the
law was fitted on, so the law's error there does not drift: this checks the drift terms' cost,
not their gain (a landscape whose error drifts across proxy scales is not benchmarked yet).
Prints the mean gap (%) of the refined optimum on the smoothed surface and on the raw grid.

    python scripts/drift_proxy.py [path/to/dense_lr_bs_loss.csv]
"""

from __future__ import annotations

import sys

import steplaw_opt.samplers as samplers
from steplaw_opt.bench._proxy import ProxyBenchConfig, run_proxy_bench

COLUMNS = ["gap_law_smooth", "gap_refined_smooth", "gap_law", "gap_refined"]


def main(grid_path: str | None) -> None:
    plain = samplers.PlateauSampler

    class Drifting(plain):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, drift=True, **kwargs)  # type: ignore[arg-type]

    config = ProxyBenchConfig(
        grid_path=grid_path, budgets=(0.5, 1.0), target_runs=(0,), targets="all"
    )
    for name, cls in (("drift=False", plain), ("drift=True", Drifting)):
        samplers.PlateauSampler = cls  # tune builds its sampler from this name
        try:
            runs = run_proxy_bench(config)
        finally:
            samplers.PlateauSampler = plain
        table = runs.groupby(["prior", "budget"])[COLUMNS].mean() * 100
        print(f"{name}: mean gap % over {runs.groupby(['prior', 'budget']).size().iloc[0]} runs")
        print(table.round(4).to_string(), "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
