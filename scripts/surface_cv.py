"""Which noise-free surface do the released runs themselves support near the minimum?

The bench scores recommendations on three surfaces that disagree about where the flat bottom
is (the GP's argmin lies about 0.1 ln units of lr above the cubic's on most settings). The
grids hold one run per cell, so the only direct test of a surface's shape is how well it
predicts runs it was not fitted on. For every released setting and every cell within
``--near`` of the setting's best run, the cell is left out, all three surfaces are refitted to
the rest exactly as the bench fits them, and the left-out run's ln loss is predicted. Printed,
per setting and pooled: the RMS and median absolute prediction error (%) and the mean error
(+: the surface predicts too low), and in how many settings each surface predicts best.

A prediction error holds the run's own noise (about 0.07 % RMS) plus the surface's misfit, so
no surface can go below the noise; what matters is the difference between surfaces.

    python scripts/surface_cv.py [--near 0.01] [path/to/dense_lr_bs_loss.csv]

Takes about 70 s on 2 cores at ``--near 0.01`` (537 left-out cells; the GP fits dominate).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time

import numpy as np

from steplaw_opt.bench import load_grids
from steplaw_opt.bench._grids import GridSetting, default_grid_path
from steplaw_opt.bench._surfaces import SURFACE_NAMES, fit_surface


def held_out_errors(setting: GridSetting, near: float) -> dict[str, np.ndarray]:
    """ln(measured / predicted) of each cell within ``near`` of the best run, per surface, with
    the cell left out of the fit."""
    rel = setting.loss / setting.min_loss - 1.0
    errors: dict[str, list[float]] = {name: [] for name in SURFACE_NAMES}
    for i in np.flatnonzero(rel <= near):
        keep = np.ones(len(setting.loss), dtype=bool)
        keep[i] = False
        rest = dataclasses.replace(
            setting, lr=setting.lr[keep], batch=setting.batch[keep], loss=setting.loss[keep]
        )
        for name in SURFACE_NAMES:
            # fitted afresh: the cache of noise_free_surfaces would keep every left-out grid
            predicted = float(fit_surface(rest, name)(setting.lr[i], setting.batch[i]))
            errors[name].append(math.log(setting.loss[i] / predicted))
    return {name: np.asarray(e) for name, e in errors.items()}


def _rms(e: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(e))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grid_csv", nargs="?", default=str(default_grid_path()))
    parser.add_argument(
        "--near", type=float, default=0.01, help="leave out cells within this of the best [0.01]"
    )
    args = parser.parse_args()
    if not 0 < args.near < 1:
        parser.error(f"--near must be in (0, 1), got {args.near!r}")
    start = time.perf_counter()
    pooled: dict[str, list[np.ndarray]] = {name: [] for name in SURFACE_NAMES}
    best_in = dict.fromkeys(SURFACE_NAMES, 0)
    names = " / ".join(SURFACE_NAMES)
    print(f"setting, cells left out, RMS prediction error % per surface: {names}")
    for index, setting in enumerate(load_grids(args.grid_csv)):
        errors = held_out_errors(setting, args.near)
        rms = {name: _rms(e) for name, e in errors.items()}
        best_in[min(rms, key=rms.__getitem__)] += 1
        for name, e in errors.items():
            pooled[name].append(e)
        print(
            f"{index:2d} {setting}  {len(errors['gp']):3d}  "
            + " / ".join(f"{100 * rms[n]:.3f}" for n in SURFACE_NAMES)
        )
    n = sum(len(e) for e in pooled["gp"])
    print(f"\npooled over {n} left-out cells within {args.near:.1%} of each best run:")
    for name in SURFACE_NAMES:
        e = np.concatenate(pooled[name])
        print(
            f"  {name:15s} RMS {100 * _rms(e):.4f} %  median |error| "
            f"{100 * float(np.median(np.abs(e))):.4f} %  mean {100 * float(e.mean()):+.4f} %  "
            f"best in {best_in[name]} settings"
        )
    print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
