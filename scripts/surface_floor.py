"""How well does each noise-free surface score a point when the landscape is KNOWN?

The bench scores a recommendation on three surfaces fitted to one noisy run per cell. A surface
is itself an estimate, so it has a floor: even the true argmin scores a gap on it, because the
fitted minimum sits where the noise happened to be low. This script measures that floor.

For every released setting, each surface's own formula is taken as a known smooth landscape
(the truth): inside the region the surface trusts, its formula; outside, the formula but never
less than the surface's window above the minimum (there noise cannot decide), and never more
than 10 % above it. Synthetic grids hold the truth at the released cells times run-to-run noise
(ln-normal, sd 0.08 %, the released grids' residual level); every surface is refitted to each
and two figures are printed, mean % over settings × draws (90th percentile in brackets):

- argmin error: the fitted surface's argmin, scored on the truth;
- floor: the truth's argmin, scored on the fitted surface — what a perfect method would score
  on that surface, and so the least a target on it can ask.

    python scripts/surface_floor.py [--draws 3] [--noise 0.0008] [path/to/dense_lr_bs_loss.csv]

Takes about 30 s per draw on 2 cores (the GP fits dominate).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable

import numpy as np

from steplaw_opt.bench import load_grids
from steplaw_opt.bench._grids import GridSetting, default_grid_path
from steplaw_opt.bench._surfaces import (
    SURFACE_NAMES,
    SURFACE_WINDOWS,
    NoiseFreeSurface,
    _trusted,
    noise_free_surfaces,
)

CAP = 0.10  # far cells: at most 10 % above the minimum, out of every surface's window


def smooth_truth(surface: NoiseFreeSurface) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The surface's formula as a landscape defined everywhere, (ln lr, ln batch) → loss."""
    floor = surface.min_value * (1.0 + SURFACE_WINDOWS[surface.name])
    cap = surface.min_value * (1.0 + CAP)

    def loss(ln_lr: np.ndarray, ln_b: np.ndarray) -> np.ndarray:
        x = (ln_lr - surface.center[0]) / surface.scale[0]
        y = (ln_b - surface.center[1]) / surface.scale[1]
        value = np.exp(surface.predict_ln(x, y))
        trusted, _ = _trusted(surface, ln_lr, ln_b)
        value = np.where(trusted, value, np.maximum(value, floor))
        return np.minimum(value, cap)

    return loss


def measure(grids: list[GridSetting], draws: int, noise: float, seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    err = {(t, f): [] for t in SURFACE_NAMES for f in SURFACE_NAMES}
    floor = {(t, f): [] for t in SURFACE_NAMES for f in SURFACE_NAMES}
    for grid in grids:
        for truth in noise_free_surfaces(grid):
            true_loss = smooth_truth(truth)
            clean = true_loss(np.log(grid.lr), np.log(grid.batch))
            t_lr, t_b = np.log(truth.argmin_lr), np.log(truth.argmin_batch)
            t_min = float(true_loss(np.array([t_lr]), np.array([t_b]))[0])
            for _ in range(draws):
                noisy = clean * np.exp(noise * rng.standard_normal(clean.shape))
                synthetic = dataclasses.replace(grid, loss=noisy)
                for fitted in noise_free_surfaces(synthetic):
                    at = true_loss(np.log([fitted.argmin_lr]), np.log([fitted.argmin_batch]))
                    err[(truth.name, fitted.name)].append(100 * (float(at[0]) / t_min - 1))
                    floor[(truth.name, fitted.name)].append(
                        100 * fitted.gap(truth.argmin_lr, truth.argmin_batch)
                    )
    return err, floor


def _table(title: str, values: dict) -> None:
    print(f"\n{title} (rows: the truth; columns: the surface fitted to its noisy cells)")
    print("| truth | " + " | ".join(SURFACE_NAMES) + " |")
    print("| --- |" + " --- |" * len(SURFACE_NAMES))
    for t in SURFACE_NAMES:
        cells = [
            f"{np.mean(values[(t, f)]):.4f} ({np.percentile(values[(t, f)], 90):.4f})"
            for f in SURFACE_NAMES
        ]
        print(f"| {t} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grid_csv", nargs="?", default=str(default_grid_path()))
    parser.add_argument("--draws", type=int, default=3, help="noisy grids per truth [3]")
    parser.add_argument("--noise", type=float, default=0.0008, help="run noise, ln sd [0.0008]")
    args = parser.parse_args()
    if args.draws < 1 or not 0 < args.noise < 0.05:
        parser.error(f"need --draws ≥ 1 and --noise in (0, 0.05), got {args.draws}, {args.noise}")
    started = time.monotonic()
    grids = load_grids(args.grid_csv)
    err, floor = measure(grids, args.draws, args.noise)
    print(f"{len(grids)} settings × {args.draws} noisy grids per truth, noise {args.noise:.2%}; "
          "mean % (90th percentile)")  # fmt: skip
    _table("argmin error: the fitted surface's argmin scored on the truth", err)
    _table("floor: the truth's argmin scored on the fitted surface", floor)
    print(f"\nwall time {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
