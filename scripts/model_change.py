"""The refined optimum before and after the last landscape-model and design change.

"previous" is the model and sampler the yardstick issue shipped first: a symmetric bowl (no
asymmetry term; curvature prior and noise fitted without it), expected improvement for every
proposal, 8 lattice trials, repeat radius 0.15. "now" is the shipped one
(priors/data/landscape.toml and PlateauSampler's defaults): the bowl with its cubic term in u,
the design step after 4 lattice trials, repeat radius 0.3. Both run the same bench:
PlateauSampler, published law, 17 settings × 3 seeds, the released grids and the ``const:0.5``
shifted landscape, scored on the mean of the three noise-free surfaces and on each.

    python scripts/model_change.py [path/to/dense_lr_bs_loss.csv]
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import numpy as np

from steplaw_opt import landscape
from steplaw_opt.bench import BenchConfig, run_bench
from steplaw_opt.bench import _runner as runner
from steplaw_opt.bench._surfaces import SURFACE_NAMES

BUDGETS = (3, 5, 10, 20)
PREVIOUS_SAMPLER = {"acquisition": "ei", "n_coarse": 8, "resolution": 0.15}


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
        sub = sub.set_index("budget")
        cells = " / ".join(f"{sub.loc[k, 'mean_mean']:.3f}" for k in BUDGETS)
        print(f"{label:8s} {shift:10s} k = {'/'.join(map(str, BUDGETS))}: {cells} %")
        surfaces = [f"mean_{name}" for name in SURFACE_NAMES]
        for k in (10, 20):
            each = " / ".join(f"{sub.loc[k, c]:.4f}" for c in surfaces)
            names = ", ".join(SURFACE_NAMES)
            print(f"{'':8s} {'':10s}   k = {k}, each surface ({names}): {each} %")


def main() -> None:
    grid = sys.argv[1] if len(sys.argv) > 1 else None
    shipped = landscape.BowlPrior.default()
    previous = dataclasses.replace(
        shipped,
        h_mean=np.array([0.006416, -0.002641, 0.006003]),
        h_sd=np.array([0.001348, 0.001015, 0.001029]),
        noise_sd=0.001486,
        k_sd=0.0,
    )
    original_default = landscape.BowlPrior.default
    original_maker = runner.make_plateau_sampler

    def previous_maker(setting: Any, law: Any, config: Any, seed: int, acquisition: str = "ei"):
        from steplaw_opt.samplers import PlateauSampler

        kwargs = runner._sampler_kwargs(setting, law, config, seed)
        return PlateauSampler(setting.scale, **{**PREVIOUS_SAMPLER, **kwargs})

    landscape.BowlPrior.default = classmethod(lambda cls: previous)  # type: ignore[method-assign]
    runner.make_plateau_sampler = previous_maker  # type: ignore[assignment]
    try:
        rows("previous", grid)
    finally:
        landscape.BowlPrior.default = original_default  # type: ignore[method-assign]
        runner.make_plateau_sampler = original_maker
    rows("now", grid)


if __name__ == "__main__":
    main()
