"""How close can a bowl get to each noise-free surface's argmin with ALL of a grid's cells?

A floor for the refined optimum: a study sees 5–20 runs, this sees every cell of each released
grid (at the shipped weight window, with the published law as the prior), so what it still
misses is the model's own bias against each surface. Printed for the symmetric bowl (no
asymmetry term) and the shipped one, then how much the surfaces disagree among themselves:
each one's argmin scored on the others, and the single point best for their mean.

    python scripts/bowl_floor.py [path/to/dense_lr_bs_loss.csv]
"""

from __future__ import annotations

import dataclasses
import math
import sys

import numpy as np

from steplaw_opt import load_law
from steplaw_opt.bench import load_grids
from steplaw_opt.bench._surfaces import SURFACE_NAMES, noise_free_surfaces
from steplaw_opt.landscape import BowlPrior, fit_bowl
from steplaw_opt.samplers import PlateauSampler


def bowl_gaps(grids, surfaces, bowl: BowlPrior) -> tuple[np.ndarray, np.ndarray]:
    """Mean gap (%) on each surface of the whole-grid bowl's bottom, and the mean offset of that
    bottom from each surface's argmin (ln lr, ln batch)."""
    law = load_law("step-law")
    gaps, offsets = [], []
    for grid, surfs in zip(grids, surfaces, strict=True):
        sampler = PlateauSampler(grid.scale, law=law, seq_len=grid.seq_len, bowl_prior=bowl)
        ln_lr0, ln_b0 = sampler.space.origin(grid.scale)
        w = np.column_stack([np.log(grid.lr) - ln_lr0, np.log(grid.batch) - ln_b0])
        post = fit_bowl(
            w, np.log(grid.loss), np.zeros(len(w), dtype=int), 1,
            prior_mean=sampler.prior.mean, prior_cov=sampler.prior.cov, bowl=bowl,
            curvature_scale=1.0,
        )  # fmt: skip
        u, v = post.optimum()
        lr, batch = math.exp(ln_lr0 + u), math.exp(ln_b0 + v)
        gaps.append([100 * s.gap(lr, batch) for s in surfs])
        offsets.append(
            [[math.log(lr / s.argmin_lr), math.log(batch / s.argmin_batch)] for s in surfs]
        )
    return np.mean(gaps, axis=0), np.mean(offsets, axis=0)


def disagreement(grids, surfaces) -> tuple[np.ndarray, np.ndarray]:
    """(cross[i, j]: surface i's argmin scored on surface j, mean %; the gaps on each surface of
    the lattice point minimising the surfaces' mean gap, mean %)."""
    n = len(SURFACE_NAMES)
    cross, compromise = np.zeros((n, n)), np.zeros(n)
    for surfs in surfaces:
        for i, a in enumerate(surfs):
            for j, b in enumerate(surfs):
                cross[i, j] += 100 * b.gap(a.argmin_lr, a.argmin_batch) / len(surfaces)
        ln_lr = [math.log(s.argmin_lr) for s in surfs]
        ln_b = [math.log(s.argmin_batch) for s in surfs]
        lrs = np.exp(np.linspace(min(ln_lr) - 0.3, max(ln_lr) + 0.3, 41))
        bs = np.exp(np.linspace(min(ln_b) - 0.3, max(ln_b) + 0.3, 41))
        lr_mesh, b_mesh = np.meshgrid(lrs, bs)
        mean_gap = sum(s(lr_mesh, b_mesh) / s.min_value - 1 for s in surfs) / n
        k = np.unravel_index(np.argmin(mean_gap), mean_gap.shape)
        compromise += np.array([100 * s.gap(lr_mesh[k], b_mesh[k]) for s in surfs]) / len(surfaces)
    return cross, compromise


def main() -> None:
    grids = load_grids(sys.argv[1] if len(sys.argv) > 1 else None)
    surfaces = [noise_free_surfaces(g) for g in grids]
    names = " / ".join(SURFACE_NAMES)
    shipped = BowlPrior.default()
    print(f"{len(grids)} settings; gaps in % on {names}; offsets (ln lr, ln batch) bowl − argmin")
    for label, bowl in (
        ("symmetric bowl", dataclasses.replace(shipped, k_sd=0.0)),
        ("shipped bowl (asymmetry term)", shipped),
    ):
        gaps, offsets = bowl_gaps(grids, surfaces, bowl)
        cells = " / ".join(f"{g:.4f}" for g in gaps)
        offs = ", ".join(f"({o[0]:+.3f}, {o[1]:+.3f})" for o in offsets)
        print(f"  {label}, whole grid, τ {bowl.tau:g}: {cells} %; offsets {offs}")
    cross, compromise = disagreement(grids, surfaces)
    print("  each surface's argmin scored on each surface (rows: argmin of; columns: scored on):")
    for name, row in zip(SURFACE_NAMES, cross, strict=True):
        print(f"    {name:15s} " + " / ".join(f"{x:.4f}" for x in row))
    print(
        "  the point best for the mean of the surfaces: "
        + " / ".join(f"{x:.4f}" for x in compromise)
        + " %"
    )


if __name__ == "__main__":
    main()
