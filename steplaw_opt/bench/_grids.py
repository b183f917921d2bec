"""Replay of released hyperparameter grids: the benchmark's objective.

The Step Law authors released the final losses of their grid-searched runs
(``dense_lr_bs_loss.csv``: one row per run with columns ``lr``, ``bs``, ``N``, ``D`` and
``smooth loss``). Replaying a grid answers "what would this (lr, batch) have cost at this
setting?" with the measured loss of the nearest grid point in (ln lr, ln batch), so any sampler
can be scored on real measurements without training anything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from steplaw_opt._records import ATTR_RAN_WITH
from steplaw_opt.errors import SteplawInputError
from steplaw_opt.scale import Scale

REQUIRED_COLUMNS = ("lr", "bs", "N", "D")
DEFAULT_LOSS_COLUMN = "smooth loss"
DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "steplaw"
LR_GRID_STEP = math.log(math.sqrt(2.0))  # the released lr values sit on a √2 grid


def default_grid_path() -> Path:
    """``../shared/data/steplaw/dense_lr_bs_loss.csv`` beside the checkout."""
    return DEFAULT_DATA / "dense_lr_bs_loss.csv"


@dataclass(frozen=True)
class GridSetting:
    """One (N, D) setting of a released grid: the measured loss at each (lr, batch) point.

    ``batch`` is in sequences of ``seq_len`` tokens, as in the released data.
    """

    key: tuple[float, ...]  # the values of the group-by columns
    N: float
    D: float
    lr: np.ndarray
    batch: np.ndarray
    loss: np.ndarray
    seq_len: int = 2048

    @property
    def scale(self) -> Scale:
        return Scale(N=self.N, D=self.D, seq_len=self.seq_len)

    @property
    def min_loss(self) -> float:
        return float(self.loss.min())

    @property
    def best_index(self) -> int:
        return int(np.argmin(self.loss))

    def nearest_index(self, lr: float, batch: float) -> int:
        """Index of the grid point nearest to (lr, batch) in (ln lr, ln batch)."""
        d = (np.log(self.lr) - math.log(lr)) ** 2 + (np.log(self.batch) - math.log(batch)) ** 2
        return int(np.argmin(d))

    def loss_at(self, lr: float, batch: float) -> float:
        """The measured loss of the nearest grid point."""
        return float(self.loss[self.nearest_index(lr, batch)])

    def gap(self, loss: float) -> float:
        """Relative gap of ``loss`` to the setting's best measured loss (0.001 = 0.1 %)."""
        return loss / self.min_loss - 1.0

    def __str__(self) -> str:
        from steplaw_opt.sizes import format_size

        return f"N={format_size(self.N)} D={format_size(self.D)}"


def canonical_lr(lr: np.ndarray) -> np.ndarray:
    """Snap printed lr values to the √2 grid they sit on (0.000345 and 0.0003453 are one value).

    Values that are not within 2 % of a √2 multiple of the smallest value are kept as they are.
    """
    base = float(np.min(lr))
    k = np.round(np.log(lr / base) / LR_GRID_STEP)
    snapped = base * np.exp(k * LR_GRID_STEP)
    close = np.abs(np.log(lr / snapped)) < 0.02
    return np.where(close, snapped, lr)


def load_grids(
    path: str | Path | None = None,
    *,
    loss_column: str = DEFAULT_LOSS_COLUMN,
    group_by: Sequence[str] = ("N", "D"),
    seq_len: int = 2048,
) -> list[GridSetting]:
    """Read a released grid CSV into one :class:`GridSetting` per group.

    Rows with a missing or non-finite loss are dropped (a run that did not finish has no
    measurement to replay); rows with a non-positive lr, batch, N or D are an error naming the
    row. Duplicate grid points within a setting keep the lower loss.
    """
    import pandas as pd

    path = Path(path) if path is not None else default_grid_path()
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise SteplawInputError(f"grid file not found: {str(path)!r}") from None
    except (OSError, ValueError) as exc:
        raise SteplawInputError(f"cannot read grid file {str(path)!r}: {exc}") from None
    needed = [*REQUIRED_COLUMNS, loss_column, *group_by]
    missing = [c for c in dict.fromkeys(needed) if c not in frame.columns]
    if missing:
        raise SteplawInputError(f"{path.name}: missing column(s) {missing}")
    for col in ("lr", "bs", "N", "D"):
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = ~(np.isfinite(values) & (values > 0))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise SteplawInputError(
                f"{path.name}: row {row + 2} has a bad {col} value {frame[col].iloc[row]!r}"
            )
        frame[col] = values.astype(float)
    frame[loss_column] = pd.to_numeric(frame[loss_column], errors="coerce")
    frame = frame[np.isfinite(frame[loss_column])]
    if frame.empty:
        raise SteplawInputError(f"{path.name}: no row has a finite {loss_column!r}")
    frame = frame.assign(lr=canonical_lr(frame["lr"].to_numpy()))
    settings = []
    for key, group in frame.groupby(list(group_by), sort=True):
        best = group.groupby(["lr", "bs"], as_index=False)[loss_column].min()
        settings.append(
            GridSetting(
                key=tuple(np.atleast_1d(key).tolist()),
                N=float(group["N"].iloc[0]),
                D=float(group["D"].iloc[0]),
                lr=best["lr"].to_numpy(),
                batch=best["bs"].to_numpy(dtype=float),
                loss=best[loss_column].to_numpy(),
                seq_len=seq_len,
            )
        )
    return settings


class ReplayObjective:
    """An objective that returns the measured loss of the nearest grid point.

    Example:
        >>> import optuna
        >>> from steplaw_opt.bench import ReplayObjective, load_grids
        >>> setting = load_grids()[0]                       # doctest: +SKIP
        >>> objective = ReplayObjective(setting)            # doctest: +SKIP
        >>> study = optuna.create_study()                   # doctest: +SKIP
        >>> study.optimize(objective, n_trials=5)           # doctest: +SKIP
    """

    def __init__(
        self,
        setting: GridSetting,
        *,
        lr_param: str = "lr",
        batch_param: str = "batch_size",
        lr_bounds: tuple[float, float] | None = None,
        batch_bounds: tuple[float, float] | None = None,
    ) -> None:
        self.setting = setting
        self.lr_param = lr_param
        self.batch_param = batch_param
        self.lr_bounds = lr_bounds or (float(setting.lr.min()), float(setting.lr.max()))
        self.batch_bounds = batch_bounds or (
            float(setting.batch.min()),
            float(setting.batch.max()),
        )

    def __call__(self, trial: object) -> float:
        lr = trial.suggest_float(self.lr_param, *self.lr_bounds, log=True)  # type: ignore[attr-defined]
        batch = trial.suggest_float(self.batch_param, *self.batch_bounds, log=True)  # type: ignore[attr-defined]
        return self._run_cell(trial, lr, batch, (0.0, 0.0))

    def _run_cell(
        self, trial: object, lr: float, batch: float, offset: tuple[float, float]
    ) -> float:
        """The loss of the cell nearest to (lr, batch) on the landscape moved by ``offset``,
        and where that cell lies recorded in the trial (``steplaw.ran_with``): the run was
        made there, not at the proposal, which can be half a cell away."""
        fu, fv = math.exp(offset[0]), math.exp(offset[1])
        i = self.setting.nearest_index(lr / fu, batch / fv)
        ran = {
            self.lr_param: float(self.setting.lr[i]) * fu,
            self.batch_param: float(self.setting.batch[i]) * fv,
        }
        if hasattr(trial, "set_user_attr"):
            trial.set_user_attr(ATTR_RAN_WITH, ran)
        return float(self.setting.loss[i])
