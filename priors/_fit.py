"""Fitting a hyperparameter scaling law to grid-search results, the Step Law authors' way.

The method (Li et al., 2025, arXiv 2503.04715): for every (N, D) setting keep each run whose
final loss is within ``eps`` (relative, 0.25 % by default) of the setting's best loss — the
"near-optimal" runs, so the fit sees the plateau rather than one noisy argmin — and fit by
ordinary least squares

    ln lr          = a0 + a1 · ln N + a2 · ln D
    ln B_tokens    = b0 + b1 · ln D          (B_tokens = batch in sequences × seq_len)

The result is a :class:`~steplaw_opt.priors.Law` with power-law forms, its validity range set to
the N and D range of the data, the analytic OLS coefficient covariance σ²(XᵀX)⁻¹ of each
regression (no cross covariance: the two fits are done separately), and the RMS residual of the
near-optimal runs around each fit as the law's residual scatter.

:func:`fit_law` is the general version behind ``steplaw-opt fit`` (docs/fit.md): runs from a
CSV (:func:`read_runs_csv`) or Optuna studies (:func:`runs_from_study`), validated row by row;
three forms (:data:`FORMS`); and 1,000 bootstrap refits solved as one batch of weighted normal
equations (:func:`bootstrap_ols`), which give the card's covariance including the lr–batch cross
block.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from steplaw_opt.errors import SteplawInputError
from steplaw_opt.priors._law import Law

if TYPE_CHECKING:
    import pandas as pd

_CITATION = {
    "authors": "Houyi Li et al.",
    "title": "Predictable Scale: Part I — Optimal Hyperparameter Scaling Law in Large Language "
    "Model Pre-training (fitting method)",
    "venue": "arXiv",
    "arxiv": "2503.04715",
    "year": 2025,
    "url": "https://arxiv.org/abs/2503.04715",
}


_EXACT = 1e-9  # an RMS residual (ln units) below this is an exact fit: no covariance


def _column(frame: pd.DataFrame, name: str) -> np.ndarray:
    import pandas as pd

    return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)


def _check_columns(frame: pd.DataFrame, loss_column: str) -> None:
    needed = ("lr", "bs", "N", "D", loss_column)
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise SteplawInputError(f"fit_law_ols: missing column(s) {missing}")


def near_optimal_mask(groups: np.ndarray, loss: np.ndarray, eps: float) -> np.ndarray:
    """True for each run whose loss is within ``eps`` (relative) of its group's minimum.

    ``groups`` holds an integer group id per run (from ``np.unique(..., return_inverse=True)``).
    """
    best = np.full(int(groups.max()) + 1, np.inf)
    np.minimum.at(best, groups, loss)
    return loss <= best[groups] * (1.0 + eps)


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coefficients, their covariance σ²(XᵀX)⁻¹ (σ² = RSS / (n − p)), and the residuals."""
    n, p = x.shape
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ beta
    sigma2 = float(resid @ resid) / (n - p)
    cov = sigma2 * np.linalg.inv(x.T @ x)
    return beta, cov, resid


def _positive_definite(m: np.ndarray) -> bool:
    eig = np.linalg.eigvalsh(m)
    return bool(eig.min() > 1e-12 * max(eig.max(), 1e-300))


def fit_law_ols(
    frame: pd.DataFrame,
    *,
    eps: float = 0.0025,
    loss_column: str = "smooth loss",
    seq_len: int = 2048,
    name: str = "refit",
) -> Law:
    """Fit lr* = c·N^a·D^b and B*_tokens = c'·D^b' to grid-search runs by OLS on near-optimal runs.

    Args:
        frame: one row per run with columns ``lr``, ``bs`` (batch in sequences), ``N``, ``D``
            and ``loss_column``. Rows with a missing or non-finite loss are dropped.
        eps: a run is near-optimal when its loss ≤ (1 + eps) × its (N, D) group's minimum.
        loss_column: the loss the runs are compared on.
        seq_len: tokens per sequence, to express the batch in tokens.
        name: the name of the returned law.

    Returns:
        A :class:`Law` (see ``docs/law-cards.md``). When a regression fits its points exactly
        (RMS residual below 1e-9 in ln units) its covariance is meaningless and ``[covariance]`` is
        left out.

    Raises:
        SteplawInputError: a missing column, a non-positive lr/bs/N/D/loss, a bad ``eps`` or
            ``seq_len``, fewer than 2 distinct N or D values, collinear ln N and ln D, or too few
            near-optimal runs to estimate the residual variance.
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0 <= eps < math.inf):
        raise SteplawInputError(f"fit_law_ols: eps must be a non-negative number, got {eps!r}")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len <= 0:
        raise SteplawInputError(f"fit_law_ols: seq_len must be a positive integer, got {seq_len!r}")
    _check_columns(frame, loss_column)
    loss = _column(frame, loss_column)
    keep = np.isfinite(loss)
    lr, bs, n, d = (_column(frame, c)[keep] for c in ("lr", "bs", "N", "D"))
    loss = loss[keep]
    for label, values in (("lr", lr), ("bs", bs), ("N", n), ("D", d), (loss_column, loss)):
        bad = ~(np.isfinite(values) & (values > 0))
        if bad.any():
            raise SteplawInputError(
                f"fit_law_ols: column {label!r} has a non-positive or non-numeric value "
                f"({values[np.flatnonzero(bad)[0]]!r})"
            )
    for label, values in (("N", n), ("D", d)):
        if np.unique(values).size < 2:
            raise SteplawInputError(
                f"fit_law_ols: need at least 2 distinct {label} values, got {np.unique(values)}"
            )

    _, groups = np.unique(np.stack([n, d], axis=1), axis=0, return_inverse=True)
    near = near_optimal_mask(groups.ravel(), loss, float(eps))
    ln_n, ln_d = np.log(n[near]), np.log(d[near])
    x_lr = np.stack([np.ones_like(ln_n), ln_n, ln_d], axis=1)
    x_b = x_lr[:, [0, 2]]
    if near.sum() <= 3:
        raise SteplawInputError(
            f"fit_law_ols: only {int(near.sum())} near-optimal runs (eps={eps}); need at least 4"
        )
    if np.linalg.matrix_rank(x_lr) < 3:
        raise SteplawInputError(
            "fit_law_ols: ln N and ln D are collinear among the near-optimal runs; "
            "the lr exponents cannot be separated"
        )
    a, cov_a, res_a = _ols(x_lr, np.log(lr[near]))
    b, cov_b, res_b = _ols(x_b, np.log(bs[near] * seq_len))

    card: dict[str, Any] = {
        "schema": 1,
        "name": name,
        "title": f"OLS refit ({eps * 100:g} % rule, {int(near.sum())} near-optimal runs)",
        "notes": (
            f"Refitted by steplaw-opt with the Step Law authors' method: per (N, D) setting, "
            f"the runs within {eps * 100:g} % of the setting's best {loss_column!r} "
            f"({int(near.sum())} of {loss.size} runs, {int(groups.max()) + 1} settings) enter an "
            "OLS fit of ln lr on (ln N, ln D) and of ln batch_tokens on ln D. Covariance: "
            "analytic OLS, no cross covariance. Residual: RMS of the near-optimal runs."
        ),
        "citation": dict(_CITATION),
        "variables": {"N": "non-embedding parameters", "D": "training tokens"},
        "validity": {"N": [float(n.min()), float(n.max())], "D": [float(d.min()), float(d.max())]},
        "lr": {
            "meaning": "peak",
            "form": "power",
            "coefficient": float(np.exp(a[0])),
            "exponents": {"N": float(a[1]), "D": float(a[2])},
        },
        "batch": {
            "unit": "tokens",
            "form": "power",
            "coefficient": float(np.exp(b[0])),
            "exponents": {"D": float(b[1])},
        },
        "residual": {
            "lr_sd": float(np.sqrt(np.mean(res_a**2))),
            "batch_sd": float(np.sqrt(np.mean(res_b**2))),
        },
    }
    exact = min(card["residual"].values()) < _EXACT
    if not exact and _positive_definite(cov_a) and _positive_definite(cov_b):
        card["covariance"] = {
            "source": "analytic OLS covariance sigma^2 (X^T X)^-1, fits independent",
            "lr_terms": ["intercept", "N", "D"],
            "lr": cov_a.tolist(),
            "batch_terms": ["intercept", "D"],
            "batch": cov_b.tolist(),
            "lr_batch": np.zeros((3, 2)).tolist(),
        }
    return Law.from_dict(card, source=f"fit_law_ols(eps={eps})")


# ============================================================================ runs and fit_law
# The general fitter behind ``steplaw-opt fit``: runs from a CSV or an Optuna study, a choice of
# law form, and a vectorised bootstrap. ``fit_law_ols`` above stays as the benchmark's quick path.

FitForm = Literal["step", "batch-on-N", "compute"]
#: The regressors of each form: (lr variables, batch variables); every regression has an
#: intercept. ``C = 6 N D`` (card ``compute = "6ND"``).
FORMS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "step": (("N", "D"), ("D",)),
    "batch-on-N": (("N", "D"), ("N", "D")),
    "compute": (("C",), ("C",)),
}
_VARIABLE_TEXT = {
    "N": "non-embedding parameters",
    "D": "training tokens",
    "C": "training compute in FLOPs, C = 6·N·D",
}
_MAX_EPS = 0.5
_MAX_BOOTSTRAP = 100_000
_CHUNK_CELLS = 4_000_000  # resamples × runs per bootstrap chunk: bounds the weight matrix memory


@dataclass(frozen=True)
class Runs:
    """Validated training runs: one entry per run, batch in tokens, loss possibly non-finite.

    ``labels`` name each run in messages (``"row 17"`` of a CSV, ``"trial 3"`` of a study);
    a non-finite loss marks a run that diverged or did not finish: it is kept here, never
    near-optimal, and listed in the fit's ``excluded``.
    """

    lr: np.ndarray
    batch_tokens: np.ndarray
    N: np.ndarray
    D: np.ndarray
    loss: np.ndarray
    labels: tuple[str, ...]
    source: str = "<runs>"
    notes: tuple[str, ...] = ()  # what the reader skipped and why (failed trials, say)

    def __post_init__(self) -> None:
        n = self.lr.size
        if not all(a.shape == (n,) for a in (self.batch_tokens, self.N, self.D, self.loss)):
            raise SteplawInputError(f"{self.source}: run arrays differ in length")
        if len(self.labels) != n:
            raise SteplawInputError(f"{self.source}: {len(self.labels)} labels for {n} runs")

    def __len__(self) -> int:
        return int(self.lr.size)

    def subset(self, mask: np.ndarray) -> Runs:
        """The runs where ``mask`` is true."""
        idx = np.flatnonzero(mask)
        return Runs(
            self.lr[idx],
            self.batch_tokens[idx],
            self.N[idx],
            self.D[idx],
            self.loss[idx],
            tuple(self.labels[i] for i in idx),
            self.source,
            self.notes,
        )

    def values(self, variable: str) -> np.ndarray:
        """``N``, ``D`` or ``C = 6 N D`` per run."""
        if variable == "C":
            return 6.0 * self.N * self.D
        return {"N": self.N, "D": self.D}[variable]

    def groups(self) -> tuple[np.ndarray, np.ndarray]:
        """The distinct (N, D) settings (G × 2) and each run's setting index."""
        keys, inverse = np.unique(np.stack([self.N, self.D], axis=1), axis=0, return_inverse=True)
        return keys, inverse.ravel()


def _show(value: Any) -> str:
    """A cell as the user wrote it: text quoted, numbers plain (``-64``, ``0.001``)."""
    if isinstance(value, str):
        return repr(value)
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return repr(value)


def _bad_value_error(source: str, label: str, column: str, value: Any, count: int) -> Exception:
    more = f" ({count} bad {column!r} values in all)" if count > 1 else ""
    return SteplawInputError(
        f"{source}: {label}: {column!r} is {_show(value)}, not a positive finite number{more}"
    )


def _positive_column(frame: pd.DataFrame, column: str, source: str, first_row: int) -> np.ndarray:
    """The column as floats; the first non-numeric or non-positive entry is an error naming it."""
    import pandas as pd

    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
    bad = ~(np.isfinite(values) & (values > 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raw = frame[column].iloc[i]
        raw = None if raw is None or (isinstance(raw, float) and math.isnan(raw)) else raw
        label = f"row {i + first_row}"
        raise _bad_value_error(source, label, column, "" if raw is None else raw, int(bad.sum()))
    return values


def _loss_column(frame: pd.DataFrame, column: str, source: str, first_row: int) -> np.ndarray:
    """Losses as floats: empty / NaN / inf marks a diverged run (kept, reported); text or a
    non-positive number is an error naming the row."""
    import pandas as pd

    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float, copy=True)
    text = raw.astype(str).str.strip().str.lower()
    missing = raw.isna().to_numpy() | text.isin(["", "nan", "inf", "-inf", "+inf"]).to_numpy()
    bad = (np.isnan(values) & ~missing) | (np.isfinite(values) & (values <= 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise SteplawInputError(
            f"{source}: row {i + first_row}: {column!r} is {_show(raw.iloc[i])}, not a positive "
            "number (leave it empty or NaN for a run that diverged)"
        )
    values[missing] = np.nan
    return values


def runs_from_frame(
    frame: pd.DataFrame,
    *,
    lr_col: str = "lr",
    batch_col: str = "bs",
    n_col: str = "N",
    d_col: str = "D",
    loss_col: str | None = None,
    batch_unit: Literal["sequences", "tokens"] = "sequences",
    seq_len: int = 2048,
    source: str = "<frame>",
    first_row: int = 2,
) -> Runs:
    """Validated :class:`Runs` from a table in the released format.

    Args:
        frame: one row per run.
        lr_col, batch_col, n_col, d_col: the columns holding the peak lr, the global batch,
            the non-embedding parameters and the training tokens.
        loss_col: the loss the runs are compared on; ``None`` picks ``"smooth loss"`` when
            present, else ``"loss"``.
        batch_unit: ``"sequences"`` (of ``seq_len`` tokens, as in the released data) or
            ``"tokens"``.
        first_row: the row number of the table's first data row in messages (2 for a CSV
            with one header line).

    Raises:
        SteplawInputError: a missing column, a bad unit or ``seq_len``, or a row whose lr,
            batch, N or D is not a positive number, or whose loss is text or non-positive.
    """
    if batch_unit not in ("sequences", "tokens"):
        raise SteplawInputError(f"batch unit must be 'sequences' or 'tokens', got {batch_unit!r}")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len <= 0:
        raise SteplawInputError(f"seq_len must be a positive integer, got {seq_len!r}")
    if loss_col is None:
        loss_col = "smooth loss" if "smooth loss" in frame.columns else "loss"
    needed = {"--lr-col": lr_col, "--batch-col": batch_col, "--n-col": n_col}
    needed |= {"--d-col": d_col, "--loss-col": loss_col}
    missing = [f"{c!r} ({flag})" for flag, c in needed.items() if c not in frame.columns]
    if missing:
        have = ", ".join(repr(str(c)) for c in frame.columns[:20])
        raise SteplawInputError(f"{source}: no column {', '.join(missing)}; columns are {have}")
    if frame.empty:
        raise SteplawInputError(f"{source}: no runs")
    lr, batch, n, d = (
        _positive_column(frame, c, source, first_row) for c in (lr_col, batch_col, n_col, d_col)
    )
    loss = _loss_column(frame, loss_col, source, first_row)
    tokens = batch * seq_len if batch_unit == "sequences" else batch
    labels = tuple(f"row {i + first_row}" for i in range(len(frame)))
    return Runs(lr, tokens, n, d, loss, labels, source)


def read_runs_csv(
    path: str | Path,
    *,
    lr_col: str = "lr",
    batch_col: str = "bs",
    n_col: str = "N",
    d_col: str = "D",
    loss_col: str | None = None,
    batch_unit: Literal["sequences", "tokens"] = "sequences",
    seq_len: int = 2048,
) -> Runs:
    """:func:`runs_from_frame` of a CSV file (same column and unit arguments); a missing or
    unreadable file is a one-line error."""
    import pandas as pd

    path = Path(path)
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise SteplawInputError(f"no such file: {str(path)!r}") from None
    except IsADirectoryError:
        raise SteplawInputError(f"{str(path)!r} is a directory, not a CSV file") from None
    except pd.errors.EmptyDataError:
        raise SteplawInputError(f"{str(path)!r} is empty") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SteplawInputError(f"cannot read CSV {str(path)!r}: {first}") from None
    return runs_from_frame(
        frame,
        lr_col=lr_col,
        batch_col=batch_col,
        n_col=n_col,
        d_col=d_col,
        loss_col=loss_col,
        batch_unit=batch_unit,
        seq_len=seq_len,
        source=path.name,
    )


# ----------------------------------------------------------------------------- the fit itself
@dataclass(frozen=True)
class SettingSummary:
    """One (N, D) setting: its best run and its near-optimal runs' centroid (ln units)."""

    N: float
    D: float
    n_runs: int
    n_near: int
    best_lr: float
    best_batch_tokens: float
    best_loss: float
    mean_ln_lr: float  # mean ln lr of the near-optimal runs
    mean_ln_batch: float  # mean ln batch_tokens of the near-optimal runs
    var_ln_lr: float  # their sample variance (0 for a single run)
    var_ln_batch: float


@dataclass(frozen=True)
class FitResult:
    r"""A fitted law with everything needed to judge it.

    Coefficients are in log space, lr terms first: ``(ln c_lr, e_lr…, ln c_B, e_B…)`` with
    names in :attr:`coef_names`. ``cov_ols`` is the analytic OLS covariance
    :math:`\hat\sigma^2 (X^\top X)^{-1}` of each regression (no cross block); ``cov_boot`` the
    covariance of the bootstrap fits (with the lr–batch cross block), ``None`` without a
    bootstrap. The card's covariance is ``cov_boot`` when present, else ``cov_ols``.
    """

    law: Law
    form: str
    lr_vars: tuple[str, ...]
    batch_vars: tuple[str, ...]
    coef: np.ndarray
    cov_ols: np.ndarray
    cov_boot: np.ndarray | None
    boot: np.ndarray  # (n_ok, p) bootstrap coefficient vectors
    residual_sd: tuple[float, float]
    r2: tuple[float, float]
    eps: float
    n_runs: int
    n_near: int
    settings: tuple[SettingSummary, ...]
    excluded: tuple[str, ...]  # labels of runs with a non-finite loss
    validity: dict[str, tuple[float, float]]
    bootstrap_requested: int
    bootstrap_degenerate: int
    bootstrap_seconds: float
    resample: str
    seed: int
    source: str
    card: dict[str, Any] = dataclasses.field(default_factory=dict)  # the card ``law`` came from

    @property
    def coef_names(self) -> tuple[str, ...]:
        return coef_names(self.lr_vars, self.batch_vars)

    @property
    def cov(self) -> np.ndarray:
        return self.cov_boot if self.cov_boot is not None else self.cov_ols

    def to_dict(self) -> dict[str, Any]:
        sd = np.sqrt(np.diag(self.cov_ols))
        boot_sd = None if self.cov_boot is None else np.sqrt(np.diag(self.cov_boot))
        return {
            "form": self.form,
            "source": self.source,
            "eps": self.eps,
            "coefficients": {
                name: {
                    "ols": float(self.coef[i]),
                    "ols_sd": float(sd[i]),
                    "bootstrap_sd": None if boot_sd is None else float(boot_sd[i]),
                    "bootstrap_mean": float(self.boot[:, i].mean()) if len(self.boot) else None,
                }
                for i, name in enumerate(self.coef_names)
            },
            "covariance": self.cov.tolist(),
            "residual_sd": {"lr": self.residual_sd[0], "batch": self.residual_sd[1]},
            "r2": {"lr": self.r2[0], "batch": self.r2[1]},
            "validity": {k: list(v) for k, v in self.validity.items()},
            "n_runs": self.n_runs,
            "n_near_optimal": self.n_near,
            "n_settings": len(self.settings),
            "excluded_runs": list(self.excluded),
            "bootstrap": {
                "requested": self.bootstrap_requested,
                "degenerate": self.bootstrap_degenerate,
                "seconds": self.bootstrap_seconds,
                "resample": self.resample,
                "seed": self.seed,
            },
            "settings": [s.__dict__ for s in self.settings],
        }


def coef_names(lr_vars: tuple[str, ...], batch_vars: tuple[str, ...]) -> tuple[str, ...]:
    """``("lr:intercept", "lr:N", …, "batch:intercept", "batch:D", …)``."""
    return tuple(
        [f"lr:{t}" for t in ("intercept", *lr_vars)]
        + [f"batch:{t}" for t in ("intercept", *batch_vars)]
    )


def features(n: np.ndarray, d: np.ndarray, variables: tuple[str, ...]) -> np.ndarray:
    """The design matrix ``[1, ln x_1, …]`` at scales (N, D), x ∈ {N, D, C = 6ND}."""
    n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
    values = {"N": n, "D": d, "C": 6.0 * n * d}
    return np.stack([np.ones(n.shape)] + [np.log(values[v]) for v in variables], axis=-1)


def design(runs: Runs, variables: tuple[str, ...]) -> np.ndarray:
    """The design matrix ``[1, ln x_1, …]`` of ``runs`` (n × (1 + k))."""
    return features(runs.N, runs.D, variables)


def check_eps(eps: float) -> float:
    """``eps`` as a float in [0, 0.5]."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps <= _MAX_EPS:
        raise SteplawInputError(
            f"eps must be a number in [0, {_MAX_EPS}] (0.0025 = 0.25 %), got {eps!r}"
        )
    return float(eps)


def check_form(form: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if form not in FORMS:
        raise SteplawInputError(f"unknown form {form!r}; choose one of {', '.join(FORMS)}")
    return FORMS[form]


def near_optimal(runs: Runs, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Settings (G × 2), each run's setting index, and the near-optimal mask.

    A run is near-optimal when its loss is finite and
    :math:`L \le (1 + \varepsilon) \min_{\text{setting}} L`.
    """
    keys, groups = runs.groups()
    finite = np.isfinite(runs.loss)
    loss = np.where(finite, runs.loss, np.inf)
    if not finite.any():
        raise SteplawInputError(f"{runs.source}: no run has a finite loss")
    best = np.full(len(keys), np.inf)
    np.minimum.at(best, groups, loss)
    return keys, groups, finite & (loss <= best[groups] * (1.0 + eps))


def _settings(runs: Runs, keys: np.ndarray, groups: np.ndarray, near: np.ndarray) -> list:
    out = []
    ln_lr, ln_b = np.log(runs.lr), np.log(runs.batch_tokens)
    loss = np.where(np.isfinite(runs.loss), runs.loss, np.inf)
    for g, (n, d) in enumerate(keys):
        members = groups == g
        sel = members & near
        if not sel.any():  # every run of the setting diverged
            continue
        best = int(np.flatnonzero(members)[np.argmin(loss[members])])
        k = int(sel.sum())
        out.append(
            SettingSummary(
                N=float(n),
                D=float(d),
                n_runs=int(members.sum()),
                n_near=k,
                best_lr=float(runs.lr[best]),
                best_batch_tokens=float(runs.batch_tokens[best]),
                best_loss=float(runs.loss[best]),
                mean_ln_lr=float(ln_lr[sel].mean()),
                mean_ln_batch=float(ln_b[sel].mean()),
                var_ln_lr=float(ln_lr[sel].var(ddof=1)) if k > 1 else 0.0,
                var_ln_batch=float(ln_b[sel].var(ddof=1)) if k > 1 else 0.0,
            )
        )
    return out


def _check_design(x: np.ndarray, variables: tuple[str, ...], what: str, runs: Runs) -> None:
    for j, v in enumerate(variables, start=1):
        distinct = np.unique(x[:, j]).size
        if distinct < 2:
            raise SteplawInputError(
                f"{runs.source}: need at least 2 distinct {v} values among the near-optimal "
                f"runs to fit the {what} exponent of {v}, got {distinct}"
            )
    if np.linalg.matrix_rank(x) < x.shape[1]:
        raise SteplawInputError(
            f"{runs.source}: {' and '.join('ln ' + v for v in variables)} are collinear among "
            f"the near-optimal runs; the {what} exponents cannot be separated"
        )
    if x.shape[0] <= x.shape[1]:
        raise SteplawInputError(
            f"{runs.source}: only {x.shape[0]} near-optimal runs for {x.shape[1]} {what} "
            "coefficients; need more runs or a larger eps"
        )


def bootstrap_ols(
    x_lr: np.ndarray,
    y_lr: np.ndarray,
    x_b: np.ndarray,
    y_b: np.ndarray,
    *,
    n_bootstrap: int,
    rng: np.random.Generator,
    clusters: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    r"""All bootstrap refits of both regressions at once, as weighted normal equations.

    Resample ``b`` draws multinomial counts :math:`w_b` over the n runs (the pairs bootstrap)
    or, with ``clusters``, over the settings (each run weighted by its setting's count), and
    solves :math:`(X^\top W_b X)\,\beta_b = X^\top W_b y` for every ``b`` in one batched
    ``np.linalg.solve``. :math:`X^\top W_b X` for all b is one matrix product
    ``W @ vec(x_i x_iᵀ)``. The lr and batch fits share each resample, so the cross covariance
    is estimated too.

    Returns:
        The (n_ok, p_lr + p_b) coefficient vectors of the resamples whose design was full
        rank, and the number of degenerate resamples left out.
    """
    n = x_lr.shape[0]
    chunk = max(1, _CHUNK_CELLS // max(n, 1))
    outer = {}
    for key, x, y in (("lr", x_lr, y_lr), ("b", x_b, y_b)):
        p = x.shape[1]
        outer[key] = ((x[:, :, None] * x[:, None, :]).reshape(n, p * p), x * y[:, None], p)
    fits, bad_total = [], 0
    for start in range(0, n_bootstrap, chunk):
        m = min(chunk, n_bootstrap - start)
        if clusters is None:
            w = rng.multinomial(n, np.full(n, 1.0 / n), size=m).astype(float)
        else:
            g = int(clusters.max()) + 1
            w = rng.multinomial(g, np.full(g, 1.0 / g), size=m).astype(float)[:, clusters]
        parts, ok = [], np.ones(m, dtype=bool)
        for xx, xy, p in outer.values():
            a = (w @ xx).reshape(m, p, p)
            rhs = w @ xy
            eig = np.linalg.eigvalsh(a)
            good = eig[:, 0] > 1e-10 * np.maximum(eig[:, -1], 1e-300)
            ok &= good
            a[~good] = np.eye(p)
            parts.append(np.linalg.solve(a, rhs[:, :, None])[:, :, 0])
        fits.append(np.concatenate(parts, axis=1)[ok])
        bad_total += int((~ok).sum())
    return np.concatenate(fits, axis=0), bad_total


def _r2(y: np.ndarray, resid: np.ndarray) -> float:
    tss = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(resid @ resid) / tss if tss > 0 else float("nan")


def fit_law(
    runs: Runs,
    *,
    eps: float = 0.0025,
    form: str = "step",
    n_bootstrap: int = 1000,
    seed: int = 0,
    resample: Literal["runs", "settings"] = "runs",
    name: str = "fit",
) -> FitResult:
    r"""Fit a law to runs with the Step Law authors' method, bootstrapped in one batch.

    Per (N, D) setting keep the runs with :math:`L \le (1+\varepsilon)\min L`; then, on the
    kept runs, ordinary least squares

    .. math::
        \ln \mathrm{lr} = a_0 + \textstyle\sum_j a_j \ln x_j, \qquad
        \ln B_\text{tokens} = b_0 + \textstyle\sum_k b_k \ln z_k

    with the regressors of ``form`` (:data:`FORMS`: ``step`` is lr on (N, D) and B on D,
    ``batch-on-N`` adds N to B, ``compute`` uses C = 6ND for both). The coefficient
    uncertainty comes from ``n_bootstrap`` resamples (:func:`bootstrap_ols`): the pairs
    bootstrap of the kept runs as the authors do (``resample="runs"``), or of whole settings
    (``"settings"``, honest when runs of one setting share its error).

    The card's coefficients are the OLS estimates (the bootstrap mean differs by Monte-Carlo
    noise and is reported); its covariance is the bootstrap covariance, or the analytic OLS
    one with ``n_bootstrap=0``; its residual is the RMS of the kept runs around the fit.

    Raises:
        SteplawInputError: a bad eps / form / n_bootstrap / resample, fewer than 2 distinct
            values of a regressor, collinear regressors, or too few kept runs.
    """
    import time

    eps = check_eps(eps)
    lr_vars, batch_vars = check_form(form)
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int):
        raise SteplawInputError(f"bootstrap count must be an integer, got {n_bootstrap!r}")
    if n_bootstrap == 1 or not 0 <= n_bootstrap <= _MAX_BOOTSTRAP:
        raise SteplawInputError(
            f"bootstrap count must be 0 (off) or 2..{_MAX_BOOTSTRAP}, got {n_bootstrap}"
        )
    if resample not in ("runs", "settings"):
        raise SteplawInputError(f"resample must be 'runs' or 'settings', got {resample!r}")
    if len(runs) == 0:
        raise SteplawInputError(f"{runs.source}: no runs")
    keys, groups, near = near_optimal(runs, eps)
    kept = runs.subset(near)
    x_lr, x_b = design(kept, lr_vars), design(kept, batch_vars)
    _check_design(x_lr, lr_vars, "lr", kept)
    _check_design(x_b, batch_vars, "batch", kept)
    y_lr, y_b = np.log(kept.lr), np.log(kept.batch_tokens)
    a, cov_a, res_a = _ols(x_lr, y_lr)
    b, cov_b, res_b = _ols(x_b, y_b)
    coef = np.concatenate([a, b])
    pa, pb = a.size, b.size
    cov_ols = np.zeros((pa + pb, pa + pb))
    cov_ols[:pa, :pa], cov_ols[pa:, pa:] = cov_a, cov_b

    t0 = time.perf_counter()
    boot, degenerate, cov_boot = np.empty((0, pa + pb)), 0, None
    if n_bootstrap:
        rng = np.random.default_rng(seed)
        clusters = groups[near] if resample == "settings" else None
        if clusters is not None:
            clusters = np.unique(clusters, return_inverse=True)[1].ravel()
        boot, degenerate = bootstrap_ols(
            x_lr, y_lr, x_b, y_b, n_bootstrap=n_bootstrap, rng=rng, clusters=clusters
        )
        if len(boot) < 2:
            raise SteplawInputError(
                f"{runs.source}: {degenerate} of {n_bootstrap} bootstrap resamples were "
                "degenerate; too few settings to bootstrap (try --bootstrap 0)"
            )
        cov_boot = np.cov(boot, rowvar=False)
    seconds = time.perf_counter() - t0

    validity = {v: _range(kept.values(v)) for v in dict.fromkeys(("N", "D", *lr_vars))}
    summaries = tuple(_settings(runs, keys, groups, near))
    excluded = tuple(
        lbl for lbl, ok in zip(runs.labels, np.isfinite(runs.loss), strict=True) if not ok
    )
    result = FitResult(
        law=None,  # type: ignore[arg-type]  # filled in below
        form=form,
        lr_vars=lr_vars,
        batch_vars=batch_vars,
        coef=coef,
        cov_ols=cov_ols,
        cov_boot=cov_boot,
        boot=boot,
        residual_sd=(float(np.sqrt(np.mean(res_a**2))), float(np.sqrt(np.mean(res_b**2)))),
        r2=(_r2(y_lr, res_a), _r2(y_b, res_b)),
        eps=eps,
        n_runs=len(runs),
        n_near=int(near.sum()),
        settings=summaries,
        excluded=excluded,
        validity=validity,
        bootstrap_requested=n_bootstrap,
        bootstrap_degenerate=degenerate,
        bootstrap_seconds=seconds,
        resample=resample,
        seed=seed,
        source=runs.source,
    )
    card = fit_card(result, name)
    return dataclasses.replace(result, law=Law.from_dict(card, source=name), card=card)


def _range(values: np.ndarray) -> tuple[float, float]:
    return float(values.min()), float(values.max())


def law_card(
    *,
    name: str,
    title: str,
    notes: str,
    lr_vars: tuple[str, ...],
    batch_vars: tuple[str, ...],
    coef: np.ndarray,
    cov: np.ndarray | None,
    cov_source: str,
    residual_sd: tuple[float, float],
    residual_source: str,
    validity: dict[str, tuple[float, float]],
    citation: dict[str, Any] | None = None,
    lr_meaning: str = "peak",
) -> dict[str, Any]:
    """A schema-1 card dict (``docs/law-cards.md``) for power laws in log-space coefficients.

    ``cov`` is the joint covariance of ``coef`` (lr block first); it is left out when it is
    not positive definite (an exact fit).
    """
    pa = 1 + len(lr_vars)
    variables = dict.fromkeys((*lr_vars, *batch_vars, *validity))
    card: dict[str, Any] = {"schema": 1, "name": name, "title": title, "notes": notes}
    if "C" in variables:
        card["compute"] = "6ND"
    card["citation"] = dict(citation or _CITATION)
    card["variables"] = {v: _VARIABLE_TEXT[v] for v in variables}
    card["validity"] = {k: [float(lo), float(hi)] for k, (lo, hi) in validity.items()}
    card["lr"] = {
        "meaning": lr_meaning,
        "form": "power",
        "coefficient": float(np.exp(coef[0])),
        "exponents": {v: float(coef[1 + i]) for i, v in enumerate(lr_vars)},
    }
    card["batch"] = {
        "unit": "tokens",
        "form": "power",
        "coefficient": float(np.exp(coef[pa])),
        "exponents": {v: float(coef[pa + 1 + i]) for i, v in enumerate(batch_vars)},
    }
    exact = min(residual_sd) < _EXACT
    if cov is not None and not exact and _positive_definite(cov):
        card["covariance"] = {
            "source": cov_source,
            "lr_terms": ["intercept", *lr_vars],
            "lr": cov[:pa, :pa].tolist(),
            "batch_terms": ["intercept", *batch_vars],
            "batch": cov[pa:, pa:].tolist(),
            "lr_batch": cov[:pa, pa:].tolist(),
        }
    card["residual"] = {
        "lr_sd": float(residual_sd[0]),
        "batch_sd": float(residual_sd[1]),
        "source": residual_source,
    }
    return card


def fit_card(fit: FitResult, name: str) -> dict[str, Any]:
    """The law card of a :class:`FitResult`."""
    boot = fit.cov_boot is not None
    cov_source = (
        f"{len(fit.boot)} bootstrap refits (resampling {fit.resample}, seed {fit.seed})"
        if boot
        else "analytic OLS covariance sigma^2 (X^T X)^-1, fits independent"
    )
    lr_text = ", ".join("ln " + v for v in fit.lr_vars)
    b_text = ", ".join("ln " + v for v in fit.batch_vars)
    notes = (
        f"Fitted by steplaw-opt fit (form {fit.form!r}) from {fit.source}: per (N, D) setting "
        f"the runs within {fit.eps * 100:g} % of the setting's best loss ({fit.n_near} of "
        f"{fit.n_runs} runs, {len(fit.settings)} settings) enter an OLS fit of ln lr on "
        f"({lr_text}) and of ln batch_tokens on ({b_text}). Coefficients: OLS. Covariance: "
        f"{cov_source}. Residual: RMS of the near-optimal runs around the fit."
    )
    return law_card(
        name=name,
        title=f"Fit of {fit.source} ({fit.eps * 100:g} % rule, {fit.n_near} near-optimal runs)",
        notes=notes,
        lr_vars=fit.lr_vars,
        batch_vars=fit.batch_vars,
        coef=fit.coef,
        cov=fit.cov,
        cov_source=cov_source,
        residual_sd=fit.residual_sd,
        residual_source="RMS of the near-optimal runs around the fit (ln units)",
        validity=fit.validity,
    )


# ----------------------------------------------------------------------------- Optuna studies
#: Trial user attributes that carry a trial's own scale (set by ``steplaw-opt tune``); without
#: them the study's ``steplaw.target.N`` / ``steplaw.target.D`` user attributes apply.
TRIAL_N, TRIAL_D, TRIAL_SEQ_LEN = "steplaw.N", "steplaw.D", "steplaw.seq_len"
STUDY_N, STUDY_D = "steplaw.target.N", "steplaw.target.D"


def _attr_number(value: Any, where: str) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise SteplawInputError(f"{where} is {value!r}, not a positive number")
    return float(value)


# While a command reads from MLflow (unless the user set them): one retry, 5 s per request, so a
# server that is down or never answers costs seconds, not MLflow's default of minutes.
MLFLOW_READ_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}


def mlflow_read_limits() -> contextlib.AbstractContextManager[None]:
    """Low retries and timeouts for MLflow's HTTP client while reading (``fit``, ``report``):
    an unreachable tracking server is one line within about 15 s."""
    from steplaw_opt._env import env_defaults

    return env_defaults(MLFLOW_READ_ENV)


def check_mlflow_store(uri: str) -> None:
    """Refuse reading from a local MLflow store that does not exist: MLflow would create an
    empty ``mlflow.db`` (and log about it) just to find nothing there."""
    from steplaw_opt._records import mask_url

    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :].split("?", 1)[0]
        if not Path(path).is_file():
            raise SteplawInputError(f"no MLflow store at {mask_url(uri)!r}: pass --tracking-uri")


def mlflow_error(uri: str, exc: BaseException) -> str:
    """The first line of an MLflow failure, cut, with the URI's password masked."""
    from steplaw_opt._records import mask_secrets

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = mask_secrets(text, uri)
    return text if len(text) <= 300 else text[:299] + "…"


def runs_from_mlflow(experiment: str, *, tracking_uri: str | None = None) -> Runs:
    """Runs recorded by ``steplaw-opt tune`` in an MLflow experiment: every nested trial run
    (tag ``steplaw.trial_number``) with its params ``lr``, ``batch_tokens``, ``N``, ``D`` and
    metric ``loss`` (a failed or diverged trial has no loss: kept as diverged, never fitted).

    ``tracking_uri``: MLflow's own default (``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``)
    when not given. Nothing is written.
    """
    import pandas as pd
    from mlflow import get_tracking_uri
    from mlflow.tracking import MlflowClient

    from steplaw_opt._records import mask_url

    uri = tracking_uri or get_tracking_uri()
    label = mask_url(tracking_uri) if tracking_uri else "the default tracking URI"
    check_mlflow_store(uri)
    with mlflow_read_limits():
        try:
            client = MlflowClient(uri)
            exp = client.get_experiment_by_name(experiment)
        except Exception as exc:  # MlflowException, a driver's error for a database URI
            raise SteplawInputError(
                f"cannot read MLflow at {label!r}: {mlflow_error(uri, exc)}"
            ) from None
        if exp is None:
            raise SteplawInputError(f"no MLflow experiment {experiment!r} at {label}")
        rows = _mlflow_trial_rows(client, exp.experiment_id, uri, label)
    if not rows:
        raise SteplawInputError(f"MLflow experiment {experiment!r} holds no steplaw-opt trial runs")
    frame = pd.DataFrame(rows)
    return runs_from_frame(
        frame,
        lr_col="lr",
        batch_col="batch_tokens",
        loss_col="loss",
        batch_unit="tokens",
        source=f"MLflow experiment {experiment!r}",
    )


def _mlflow_trial_rows(client: Any, experiment_id: str, uri: str, label: str) -> list[dict]:
    rows: list[dict] = []
    token = None
    while True:
        try:
            page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        except Exception as exc:
            raise SteplawInputError(
                f"cannot read MLflow at {label!r}: {mlflow_error(uri, exc)}"
            ) from None
        for run in page:
            if "steplaw.trial_number" not in run.data.tags:
                continue  # a parent run
            p = run.data.params
            rows.append(
                {
                    "lr": p.get("lr"),
                    "batch_tokens": p.get("batch_tokens"),
                    "N": p.get("N"),
                    "D": p.get("D"),
                    "loss": run.data.metrics.get("loss", float("nan")),
                }
            )
        token = page.token
        if not token:
            return rows


def runs_from_study(
    study: Any,
    *,
    lr_param: str = "lr",
    batch_param: str = "batch_size",
    batch_unit: Literal["sequences", "tokens"] = "sequences",
    seq_len: int = 2048,
) -> Runs:
    """Runs from an Optuna study's completed trials (any storage; nothing is written).

    Each trial's loss is its value (single-objective studies only), its lr and batch the
    params ``lr_param`` and ``batch_param`` (batch in sequences of the trial's seq_len, or in
    tokens), and its scale the trial user attributes ``steplaw.N``, ``steplaw.D`` and
    ``steplaw.seq_len`` when present, else the study user attributes ``steplaw.target.N`` and
    ``steplaw.target.D`` (and ``seq_len``). Failed, pruned and running trials are skipped and
    counted in :attr:`Runs.notes`.

    Raises:
        SteplawInputError: a multi-objective study, a completed trial without the params, or
            a trial whose scale is missing or not positive.
    """
    if batch_unit not in ("sequences", "tokens"):
        raise SteplawInputError(f"batch unit must be 'sequences' or 'tokens', got {batch_unit!r}")
    name = f"study {study.study_name!r}"
    if len(study.directions) != 1:
        raise SteplawInputError(f"{name} is multi-objective; fit needs one loss per trial")
    if study.direction.name != "MINIMIZE":
        raise SteplawInputError(f"{name} maximises its objective; fit needs a loss to minimise")
    target = study.user_attrs
    rows: list[tuple[float, ...]] = []
    labels: list[str] = []
    skipped: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        state = trial.state.name
        if state != "COMPLETE":
            skipped[state.lower()] = skipped.get(state.lower(), 0) + 1
            continue
        where = f"{name} trial {trial.number}"
        missing = [p for p in (lr_param, batch_param) if p not in trial.params]
        if missing:
            have = ", ".join(sorted(trial.params)) or "none"
            raise SteplawInputError(
                f"{where} has no param {missing[0]!r} (params: {have}; see --lr-param, "
                "--batch-param)"
            )
        attrs = trial.user_attrs

        def scale(key: str, study_key: str, attrs: Any = attrs, where: str = where) -> float:
            if key in attrs:
                return _attr_number(attrs[key], f"{where} user attribute {key!r}")
            if study_key in target:
                return _attr_number(target[study_key], f"{name} user attribute {study_key!r}")
            raise SteplawInputError(
                f"{where} has no user attribute {key!r} and the study has no {study_key!r}: "
                "the trial's scale is unknown"
            )

        n, d = scale(TRIAL_N, STUDY_N), scale(TRIAL_D, STUDY_D)
        sl = seq_len
        if TRIAL_SEQ_LEN in attrs:
            sl = _attr_number(attrs[TRIAL_SEQ_LEN], f"{where} user attribute {TRIAL_SEQ_LEN!r}")
        lr = _attr_number(trial.params[lr_param], f"{where} param {lr_param!r}")
        batch = _attr_number(trial.params[batch_param], f"{where} param {batch_param!r}")
        tokens = batch * sl if batch_unit == "sequences" else batch
        value = trial.value
        rows.append((lr, tokens, n, d, float("nan") if value is None else float(value)))
        labels.append(f"trial {trial.number}")
    if not rows:
        raise SteplawInputError(f"{name} has no completed trials")
    lr, tokens, n, d, loss = (np.array(c, dtype=float) for c in zip(*rows, strict=True))
    bad = np.isfinite(loss) & (loss <= 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise SteplawInputError(f"{name} {labels[i]}: loss {loss[i]!r} is not positive")
    notes = tuple(f"skipped {k} {s} trial(s)" for s, k in sorted(skipped.items()))
    return Runs(lr, tokens, n, d, loss, tuple(labels), name, notes)


def concat_runs(parts: list[Runs]) -> Runs:
    """Several :class:`Runs` as one (several studies, say)."""
    if len(parts) == 1:
        return parts[0]
    return Runs(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in ("lr", "batch_tokens")),
        *(np.concatenate([getattr(p, f) for p in parts]) for f in ("N", "D", "loss")),
        labels=tuple(f"{p.source} {lbl}" for p in parts for lbl in p.labels),
        source=" + ".join(p.source for p in parts),
        notes=tuple(f"{p.source}: {n}" for p in parts for n in p.notes),
    )
