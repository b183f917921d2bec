r"""Proxy-run mode of the replay benchmark: cheap runs at smaller settings, scored at the target.

Targets and proxies:

- ``proxy_scales="same-n"`` (default): for every N of a released grid that has several D, the
  target is its largest D (or, with ``targets="all"``, every D that has a smaller one) and proxy
  runs may only use the smaller D of that N;
- ``proxy_scales="cheaper"``: proxy runs may use every setting of any N and D whose compute
  N·D is at most ``max_proxy_cost`` times the target's (a ladder across model size;
  :class:`~steplaw_opt.objectives.GridReplayObjective`), and every setting that has one is a
  target (``targets="all"``) or only the largest D of each N.

:func:`~steplaw_opt.tune.tune` spends a budget of proxy compute (ΣN·D of the runs ÷ N·D of the
target), then ``K`` final runs at the target itself: the first where the pooled model puts the
optimum, the others by expected improvement at the target. Each row scores

- the law alone: the law's point at the target, no run;
- target runs only: the same ``K`` target runs with no proxy run (PlateauSampler on the target
  alone), so that what the proxies add is visible on its own;
- proxies + K target runs: the run the user keeps, the best measured of the ``K``;
- the refined optimum after everything — with ``K = 0``, after the proxies alone: the point a
  user would train the target with.

Scores (fractions; the tables print %): the point's gap on each noise-free surface of the target
setting (:mod:`~steplaw_opt.bench._surfaces`: a cubic, a quadratic and a Gaussian process,
evaluated at the point itself) and their mean (``*_surfaces``), and, labelled raw, the measured
loss of the nearest grid cell (``gap_law``, ``gap``, ``gap_refined``, …): near the minimum the
raw grid's run-to-run noise (~0.07 %) is as large as the law's own gap. Calibration: the
fraction of the surfaces' argmins inside the refined optimum's 68 % and 95 % intervals of lr and
batch, and the intervals' ln-widths.

Landscapes (``shifts``): the released grids, or shifted ones
(:mod:`~steplaw_opt.bench._shift`) where every setting's optimum is moved by a known offset —
constant, or drifting with ln D, ln N or both — so the law is wrong by a known amount that may
differ between the proxies and the target. The bowl's drift terms (``drift``) are the model of
such an error (:func:`~steplaw_opt.landscape.fit_bowl`). Priors: the published law, and the law
refitted on the released grids without the target setting (leave-one-setting-out, the authors'
method); on a shifted landscape both are wrong by the shift.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from steplaw_opt.bench._grids import GridSetting, load_grids
from steplaw_opt.bench._shift import Shift
from steplaw_opt.bench._surfaces import SURFACE_NAMES, NoiseFreeSurface, noise_free_surfaces
from steplaw_opt.errors import SteplawInputError
from steplaw_opt.objectives import GridReplayObjective
from steplaw_opt.objectives._base import RunContext
from steplaw_opt.objectives._replay import PROXY_SCALES
from steplaw_opt.priors import fit_law_ols, load_law
from steplaw_opt.scale import Scale


@dataclass(frozen=True)
class ProxyBenchConfig:
    grid_path: str | Path | None = None
    budgets: tuple[float, ...] = (0.25, 0.5, 1.0)
    seeds: int = 3
    priors: tuple[str, ...] = ("published", "loo")
    sampler: str = "plateau"
    target_runs: tuple[int, ...] = (1, 2)  # K: final runs at the target after the proxies
    # "largest": the largest D of each N (the protocol); "all": every setting with a
    # cheaper proxy setting (12 targets on the dense grids with "same-n": less noise in the mean)
    targets: str = "largest"
    shifts: tuple[str, ...] = ("none",)  # Shift texts: none, const:0.5, drift-D:0.5, …
    drift: tuple[bool, ...] = (False,)  # the sampler's drift terms off and/or on
    proxy_scales: str = "same-n"
    max_proxy_cost: float = 1.0  # with "cheaper": each proxy setting's N·D ÷ the target's
    surfaces: tuple[str, ...] = SURFACE_NAMES

    def __post_init__(self) -> None:
        if self.targets not in ("largest", "all"):
            raise SteplawInputError(f"targets must be 'largest' or 'all', got {self.targets!r}")
        if self.proxy_scales not in PROXY_SCALES:
            raise SteplawInputError(
                f"proxy_scales must be 'same-n' or 'cheaper', got {self.proxy_scales!r}"
            )
        if not 0 < self.max_proxy_cost <= 1:
            raise SteplawInputError(
                f"max_proxy_cost must be in (0, 1], got {self.max_proxy_cost!r}"
            )
        for text in self.shifts:
            Shift.parse(text)
        for d in self.drift:
            if not isinstance(d, bool):
                raise SteplawInputError(f"drift must be True or False, got {d!r}")
        for name in self.surfaces:
            if name not in SURFACE_NAMES:
                raise SteplawInputError(
                    f"unknown surface {name!r}; known: {', '.join(SURFACE_NAMES)}"
                )
        if not (self.budgets and self.priors and self.shifts and self.drift and self.surfaces):
            raise SteplawInputError("budgets, priors, shifts, drift and surfaces must be non-empty")


class ShiftedGridReplayObjective(GridReplayObjective):
    """:class:`~steplaw_opt.objectives.GridReplayObjective` on a shifted landscape: a run at
    (lr, batch) at setting s returns the measured loss of the cell of s nearest to
    (lr·e^−δu(s), batch·e^−δv(s)), with δ(s) the shift's offset at s."""

    def __init__(
        self,
        settings: Sequence[GridSetting],
        offsets: Mapping[tuple[float, float], tuple[float, float]],
        **kwargs: Any,
    ) -> None:
        super().__init__(settings, **kwargs)
        self.offsets = {key: (float(u), float(v)) for key, (u, v) in offsets.items()}

    def offset(self, scale: Scale) -> tuple[float, float]:
        s = self.setting(scale)
        return self.offsets.get((s.N, s.D), (0.0, 0.0))

    def run(self, lr: float, batch_size: float, scale: Scale, context: RunContext) -> float:
        du, dv = self.offset(scale)
        return super().run(lr * math.exp(-du), batch_size * math.exp(-dv), scale, context)


def _loo_law(frame: pd.DataFrame, target_key: tuple[float, float]) -> Any:
    keep = ~((frame["N"] == target_key[0]) & (frame["D"] == target_key[1]))
    return fit_law_ols(frame[keep], name="loo-refit")


def _default_path() -> Path:
    from steplaw_opt.bench._grids import default_grid_path

    return default_grid_path()


class _Scorer:
    """Gaps of (lr, batch) points at one target setting on one landscape: on each noise-free
    surface (evaluated at the shifted-back point), their mean, and the nearest cell's raw loss."""

    def __init__(
        self,
        setting: GridSetting,
        surfaces: Sequence[NoiseFreeSurface],
        offset: tuple[float, float],
    ) -> None:
        self.setting = setting
        self.surfaces = surfaces
        self.offset = offset

    def unshift(self, lr: float, batch: float) -> tuple[float, float]:
        return lr * math.exp(-self.offset[0]), batch * math.exp(-self.offset[1])

    def gaps(self, lr: float, batch: float, prefix: str) -> dict[str, float]:
        lr0, b0 = self.unshift(lr, batch)
        out = {f"{prefix}_{s.name}": s.gap(lr0, b0) for s in self.surfaces}
        out[f"{prefix}_surfaces"] = float(np.mean(list(out.values())))
        out[prefix] = self.setting.gap(self.setting.loss_at(lr0, b0))
        return out

    def kept(self, points: list[tuple[float, float]], prefix: str) -> dict[str, float]:
        """Gaps of the point whose measured loss is lowest (the run a user keeps)."""
        best = min(points, key=lambda p: self.setting.loss_at(*self.unshift(*p)))
        return self.gaps(*best, prefix)

    def truths(self) -> list[tuple[float, float]]:
        """Each surface's argmin (lr, batch in sequences) on this landscape."""
        fu, fv = math.exp(self.offset[0]), math.exp(self.offset[1])
        return [(s.argmin_lr * fu, s.argmin_batch * fv) for s in self.surfaces]

    def coverage(self, opt: Any) -> dict[str, float]:
        """Fraction of the surfaces' argmins inside the refined optimum's intervals and the
        intervals' ln-widths (``cover95_lr``, ``width95_batch``, …)."""
        seq = float(self.setting.seq_len)
        intervals = {
            "68_lr": (opt.lr_interval_68, 0, 1.0),
            "95_lr": (opt.lr_interval_95, 0, 1.0),
            "68_batch": (opt.batch_tokens_interval_68, 1, seq),
            "95_batch": (opt.batch_tokens_interval_95, 1, seq),
        }
        out: dict[str, float] = {}
        truths = self.truths()
        for name, ((lo, hi), axis, unit) in intervals.items():
            lo, hi = lo / unit, hi / unit
            out[f"cover{name}"] = float(np.mean([lo <= t[axis] <= hi for t in truths]))
            out[f"width{name}"] = float(math.log(hi / lo))
        return out


def _tune_once(
    target: Scale,
    objective: GridReplayObjective,
    law: Any,
    proxy_budget: float,
    k: int,
    seed: int,
    sampler: str,
    drift: bool,
) -> tuple[Any, list[tuple[float, float]]]:
    """One tune: the result and the (lr, batch) of its runs at the target, in order."""
    from steplaw_opt.tune import tune

    at_target: list[tuple[float, float]] = []

    def record(event: Any) -> None:
        at = event.scale.D == target.D and event.scale.N == target.N
        if event.phase == "end" and event.loss is not None and at:
            at_target.append((event.lr, event.batch_size))

    result = tune(
        target,
        objective,
        law=law,
        budget=proxy_budget + k,
        target_runs=k,
        storage=":memory:",
        seed=seed,
        sampler=sampler,  # type: ignore[arg-type]
        drift=drift,
        on_trial=record,
    )
    return result, at_target


def _targets(config: ProxyBenchConfig, objective: GridReplayObjective) -> list[Scale]:
    by_n: dict[float, list[float]] = {}
    for s in objective.settings:
        by_n.setdefault(s.N, []).append(s.D)
    out = []
    for n, ds in sorted(by_n.items()):
        for d in sorted(ds):
            if config.targets == "largest" and d != max(ds):
                continue
            scale = Scale(N=n, D=d)
            if config.proxy_scales == "same-n":
                has_proxy = d > min(ds)
            else:
                has_proxy = bool(objective.allowed_scales(scale))
            if has_proxy:
                out.append(scale)
    if not out:
        raise SteplawInputError(
            "no target setting has a cheaper proxy setting within max_proxy_cost "
            f"{config.max_proxy_cost:g}"
        )
    return out


def run_proxy_bench(
    config: ProxyBenchConfig, progress: Callable[[int, int, str], None] | None = None
) -> pd.DataFrame:
    """One row per (prior, shift, drift, target, K, budget, seed): the gaps (fractions) of the
    law alone, of K target runs only, of proxies + K target runs and of the refined optimum on
    each noise-free surface, their mean and the raw grid, and the refined intervals' coverage."""
    import warnings

    settings = load_grids(config.grid_path)
    frame = pd.read_csv(config.grid_path or _default_path())
    kwargs = {"proxy_scales": config.proxy_scales, "max_proxy_cost": config.max_proxy_cost}
    objectives: dict[str, ShiftedGridReplayObjective] = {}
    for text in config.shifts:
        shift = Shift.parse(text)
        offsets = shift.offsets(settings)
        by_key = {(s.N, s.D): tuple(o) for s, o in zip(settings, offsets, strict=True)}
        objectives[shift.label] = ShiftedGridReplayObjective(settings, by_key, **kwargs)  # type: ignore[arg-type]
    plain = next(iter(objectives.values()))
    targets = _targets(config, plain)
    jobs = [
        (p, sh, dr, t, k, b, seed)
        for p in config.priors
        for sh in objectives
        for dr in config.drift
        for t in targets
        for k in config.target_runs
        for b in config.budgets
        for seed in range(config.seeds)
    ]
    rows: list[dict[str, Any]] = []
    laws: dict[tuple[str, float, float], Any] = {}
    surfaces: dict[tuple[float, float], list[NoiseFreeSurface]] = {}
    baselines: dict[tuple, dict[str, float]] = {}
    for done, (prior, shift, drift, target, k, budget, seed) in enumerate(jobs):
        if progress is not None:
            progress(done, len(jobs), f"{prior} {shift} N={target.N:.3g} K={k} budget {budget:g}")
        objective = objectives[shift]
        setting = objective.setting(target)
        key = (float(setting.N), float(setting.D))
        if (prior, *key) not in laws:
            laws[(prior, *key)] = (
                load_law("step-law") if prior == "published" else _loo_law(frame, key)
            )
        law = laws[(prior, *key)]
        if key not in surfaces:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # BoTorch's advice on input scaling
                surfaces[key] = noise_free_surfaces(setting, config.surfaces)
        scorer = _Scorer(setting, surfaces[key], objective.offset(target))
        law_point = (law.lr_at(target), law.batch_tokens_at(target) / setting.seq_len)
        law_gaps = scorer.gaps(*law_point, "gap_law")
        tune_seed = 1009 * seed + int(target.N or 0) % 997
        base_key = (prior, shift, *key, k, seed)
        if base_key not in baselines:  # the same K target runs, no proxy run
            if k == 0:
                base = {n.replace("gap_law", "gap_target_only"): v for n, v in law_gaps.items()}
            else:
                _, points = _tune_once(
                    target, objective, law, 0.0, k, tune_seed, config.sampler, False
                )
                base = scorer.kept(points, "gap_target_only")
            baselines[base_key] = base
        start = time.perf_counter()
        row: dict[str, Any] = {
            "prior": prior,
            "shift": shift,
            "drift": drift,
            "N": target.N,
            "D": target.D,
            "target_runs": k,
            "budget": budget,
            "seed": seed,
            **law_gaps,
            **baselines[base_key],
        }
        try:
            result, points = _tune_once(
                target, objective, law, budget, k, tune_seed, config.sampler, drift
            )
        except SteplawInputError:  # the budget buys no proxy run: the law is the answer
            row.update(runs=0, compute=0.0)
            row.update({n.replace("gap_law", "gap_refined"): v for n, v in law_gaps.items()})
            row.update(
                {n.replace("gap_target_only", "gap"): v for n, v in baselines[base_key].items()}
            )
        else:
            opt = result.refined
            refined = scorer.gaps(opt.lr, opt.batch_sequences, "gap_refined")
            kept = (
                scorer.kept(points, "gap")
                if points
                else {n.replace("gap_refined", "gap"): v for n, v in refined.items()}
            )
            row.update(
                runs=result.n_complete + result.n_failed - k,
                compute=result.compute_spent - k,
                **kept,
                **refined,
                **scorer.coverage(opt),
            )
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
    if progress is not None:
        progress(len(jobs), len(jobs), "done")
    return pd.DataFrame(rows)


GAP_COLUMNS = {
    "law": "gap_law",
    "law_surfaces": "gap_law_surfaces",
    "target_only": "gap_target_only",
    "target_only_surfaces": "gap_target_only_surfaces",
    "proxies": "gap",
    "proxies_surfaces": "gap_surfaces",
    "refined": "gap_refined",
    "refined_surfaces": "gap_refined_surfaces",
}
KEYS = ["prior", "shift", "drift", "target_runs", "budget"]


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean gaps (%) per prior, shift, drift, K and budget, over targets and seeds: law alone,
    K target runs only, proxies + K target runs, refined optimum (raw and the surfaces' mean,
    and the refined optimum on each surface); ``removed``, the share of the law's mean gap on
    the surfaces the refined optimum removes (1 = all of it); the proxy compute spent; and the
    refined intervals' coverage and median ln-width."""
    runs = runs.assign(setting=runs["N"].astype(str) + "/" + runs["D"].astype(str))
    grouped = runs.groupby(KEYS)
    aggs: dict[str, tuple[str, str]] = {
        "targets": ("setting", "nunique"),
        "compute": ("compute", "mean"),
        "runs": ("runs", "mean"),
    }
    for name, col in GAP_COLUMNS.items():
        aggs[name] = (col, "mean")
    per_surface = sorted(
        c for c in runs.columns if c.startswith("gap_refined_") and c != "gap_refined_surfaces"
    )
    per_law = [c.replace("gap_refined_", "gap_law_") for c in per_surface]
    for col in per_surface + per_law:
        aggs[col] = (col, "mean")
    cover = [c for c in runs.columns if c.startswith("cover")]
    for col in cover:
        aggs[col] = (col, "mean")
    for col in (c for c in runs.columns if c.startswith("width")):
        aggs[col] = (col, "median")
    out = grouped.agg(**aggs).reset_index()  # type: ignore[call-overload]
    for name in [*GAP_COLUMNS, *per_surface, *per_law]:
        out[name] = 100 * out[name]
    out["removed"] = 1.0 - out["refined_surfaces"] / out["law_surfaces"]
    # the worst surface: a method must win on every one
    removed = [1.0 - out[c] / out[c.replace("gap_refined_", "gap_law_")] for c in per_surface]
    out["removed_worst_surface"] = (
        pd.concat(removed, axis=1).min(axis=1) if removed else float("nan")
    )
    return out


def print_summary(console: Any, runs: pd.DataFrame) -> None:
    from rich.table import Table

    summary = summarise(runs)
    title = (
        "proxy-run mode: proxy runs at cheaper settings, then K runs at the target (the best one "
        "kept); mean gap at the target, % — mean of the noise-free surfaces / raw grid cell"
    )
    table = Table(title=title, title_justify="left")
    columns = ("prior", "shift", "drift", "K", "budget", "targets", "proxy runs",
               "proxy compute", "law alone", "K target runs only", "proxies + K target runs",
               "refined optimum", "law's gap removed (worst surface)",
               "95 % cover lr/batch, width")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="right")
    for r in summary.itertuples():
        cover = (
            f"{r.cover95_lr:.2f}/{r.cover95_batch:.2f}, {r.width95_lr:.2f}/{r.width95_batch:.2f}"
            if hasattr(r, "cover95_lr") and not math.isnan(r.cover95_lr)
            else "—"
        )
        table.add_row(
            r.prior,
            r.shift,
            "on" if r.drift else "off",
            str(r.target_runs),
            f"{r.budget:g}",
            str(r.targets),
            f"{r.runs:.1f}",
            f"{r.compute:.3f}",
            f"{r.law_surfaces:.4f} / {r.law:.3f}",
            f"{r.target_only_surfaces:.4f} / {r.target_only:.3f}",
            f"{r.proxies_surfaces:.4f} / {r.proxies:.3f}",
            f"{r.refined_surfaces:.4f} / {r.refined:.3f}",
            f"{100 * r.removed:.0f} % ({100 * r.removed_worst_surface:.0f} %)",
            cover,
        )
    console.print(table)
    console.print(
        "K = 1: the one target run goes where the pooled model puts the optimum (with no proxy "
        "run: the law's point). Surfaces: cubic-3%, quadratic-1.5% and gp "
        "(steplaw_opt.bench._surfaces) at the point itself; raw: the nearest cell's measured "
        "loss. Removed: 1 − refined ÷ law on the surfaces' mean (and on the worst surface). "
        "Cover: share of the surfaces' argmins inside the refined 95 % intervals; width: their "
        "median ln-width."
    )


def per_target(runs: pd.DataFrame) -> pd.DataFrame:
    cols = ["gap_law_surfaces", "gap_target_only_surfaces", "gap_surfaces",
            "gap_refined_surfaces", "gap_law", "gap_refined"]  # fmt: skip
    return runs.groupby([*KEYS[:3], "N", "D", "target_runs", "budget"])[cols].mean().mul(100)


__all__ = [
    "ProxyBenchConfig",
    "ShiftedGridReplayObjective",
    "per_target",
    "print_summary",
    "run_proxy_bench",
    "summarise",
]
