"""The released Step Law grids as an objective: try every workflow on measured data."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from steplaw_opt.bench._grids import GridSetting, load_grids
from steplaw_opt.errors import SteplawInputError
from steplaw_opt.objectives._base import Objective, RunContext
from steplaw_opt.scale import Scale

PROXY_SCALES = ("same-n", "cheaper")  # GridReplayObjective(proxy_scales=…)


class GridReplayObjective(Objective):
    """Returns the measured smooth loss of the grid point nearest to (lr, batch) in
    (ln lr, ln batch), at the released setting with the run's (N, D).

    Proxy runs may only use the settings the grid has: with ``proxy_scales="same-n"`` (the
    default) the D values at the target's N (:meth:`allowed_tokens`); with ``"cheaper"`` every
    setting of any N and D whose compute N·D is at most ``max_proxy_cost`` times the target's
    (:meth:`allowed_scales`: a ladder across model size). ``batch_size`` is in sequences of
    2,048 tokens (or tokens with ``batch_unit="tokens"``).
    """

    name = "replay"

    def __init__(
        self,
        grid: str | Path | Sequence[GridSetting] | None = None,
        *,
        batch_unit: str = "sequences",
        proxy_scales: str = "same-n",
        max_proxy_cost: float = 1.0,
    ) -> None:
        if proxy_scales not in PROXY_SCALES:
            raise SteplawInputError(
                f"proxy_scales must be 'same-n' or 'cheaper', got {proxy_scales!r}"
            )
        if not (isinstance(max_proxy_cost, (int, float)) and 0 < max_proxy_cost <= 1):
            raise SteplawInputError(f"max_proxy_cost must be in (0, 1], got {max_proxy_cost!r}")
        self.proxy_scales = proxy_scales
        self.max_proxy_cost = float(max_proxy_cost)
        if grid is None or isinstance(grid, (str, Path)):
            self.settings = load_grids(grid)
        else:
            self.settings = list(grid)
        self.batch_unit = batch_unit
        self._by_scale = {(s.N, s.D): s for s in self.settings}

    def setting(self, scale: Scale) -> GridSetting:
        key = (float(scale.N or 0), float(scale.D or 0))
        for (n, d), s in self._by_scale.items():
            if abs(n / key[0] - 1) < 1e-6 and abs(d / key[1] - 1) < 1e-6:
                return s
        known = ", ".join(f"N={n:.4g} D={d:.4g}" for n, d in sorted(self._by_scale))
        raise SteplawInputError(
            f"the grid has no setting at N={key[0]:.4g}, D={key[1]:.4g}; it has: {known}"
        )

    def allowed_tokens(self, scale: Scale) -> Sequence[float]:
        self.setting(scale)  # the target itself must be in the grid
        return sorted(d for (n, d) in self._by_scale if abs(n / float(scale.N or 0) - 1) < 1e-6)

    def allowed_scales(self, target: Scale) -> Sequence[Scale] | None:
        if self.proxy_scales == "same-n":
            return None
        own = self.setting(target)
        limit = float(target.N or 0) * float(target.D or 0) * self.max_proxy_cost * (1 + 1e-9)
        return [
            Scale(N=n, D=d, seq_len=target.seq_len)
            for (n, d), s in sorted(self._by_scale.items())
            if n * d <= limit and s is not own
        ]

    def run(self, lr: float, batch_size: float, scale: Scale, context: RunContext) -> float:
        s = self.setting(scale)
        sequences = batch_size if self.batch_unit == "sequences" else batch_size / s.seq_len
        index = s.nearest_index(lr, sequences)
        context.notes["grid_lr"] = float(s.lr[index])
        context.notes["grid_batch"] = float(s.batch[index])
        return float(s.loss[index])
