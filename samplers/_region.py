"""The bowl's lowest point inside a trust region (an ellipse intersected with a box).

The refined optimum, the sampler's proposals and the landscape plot all need it: when the bowl's
bottom lies outside the region the law trusts (a slope that keeps falling towards a bound), the
answer is the bowl's lowest point inside the region.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def bottom_in_region(posterior: Any, region: Any, group: int | None = None) -> np.ndarray:
    """The bowl's bottom (at ``group``'s scale, when given: the drift terms move it), or, when
    it lies outside the trusted region (a slope that keeps falling towards a bound, say), the
    bowl's lowest point inside the region."""
    w = posterior.optimum() if group is None else posterior.optimum_at(group)
    if region.contains(w)[0]:
        return w
    return constrained_argmin(region, w, posterior.hessian)


def constrained_argmin(
    region: Any, w_star: np.ndarray, hessian: np.ndarray, resolution: int = 241
) -> np.ndarray:
    r"""The point of ``region`` (ellipse ∩ box) minimising :math:`(w - w^*)^\top H (w - w^*)`:
    a convex problem in 2-D, solved on a dense grid over the region's bounding box and refined
    on a second, finer grid around the best cell."""
    lo, hi = region.ellipse_extent()
    lo, hi = np.maximum(lo, region.box[0]), np.minimum(hi, region.box[1])
    best = region.clip_to_box(region.center)
    for _ in range(2):
        us = np.linspace(lo[0], hi[0], resolution)
        vs = np.linspace(lo[1], hi[1], resolution)
        pts = np.stack(np.meshgrid(us, vs), -1).reshape(-1, 2)
        pts = pts[region.contains(pts)]
        if len(pts) == 0:
            break
        d = pts - w_star
        best = pts[int(np.argmin(np.einsum("ni,ij,nj->n", d, hessian, d)))]
        step = (hi - lo) / (resolution - 1)
        lo, hi = np.maximum(best - 2 * step, lo), np.minimum(best + 2 * step, hi)
    return best
