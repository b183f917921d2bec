"""Proxy-run mode of the replay benchmark.

For every N of a released grid that has several D, the target is the largest D (or, with
``targets="all"``, every D that has a smaller one) and proxy runs may only use the smaller D of
that N (:class:`~steplaw_opt.objectives.GridReplayObjective`).
:func:`~steplaw_opt.tune.tune` spends a budget of proxy compute (ΣN·D of the runs ÷ N·D of the
target), then ``K`` final runs at the target itself: the first where the pooled model puts the
optimum, the others by expected improvement at the target. The score is the gap of the run the
user keeps — the best of the ``K`` target runs — to the target grid's best loss, beside

- the law alone: one target run at the law's point, no proxy run;
- target runs only: the same ``K`` target runs with no proxy run (PlateauSampler on the target
  alone), so that what the proxies add is visible on its own;
- the refined optimum after everything (what a further run would use).

``K = 0`` scores the refined optimum after the proxies alone. Each gap is reported on the raw grid
(the loss of the nearest grid point) and on the smoothed surface of the main benchmark
(:func:`~steplaw_opt.bench._surface.smooth_surface`): the raw grid's run-to-run noise (~0.05–0.1 %
near the minimum) is as large as the law's own gap, so the smoothed score says whether a point is
better, the raw score what one run there measured. Priors: the published law, and the law refitted
without the target setting (leave-one-setting-out, the authors' method).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from steplaw_opt.bench._grids import GridSetting, load_grids
from steplaw_opt.errors import SteplawInputError
from steplaw_opt.objectives import GridReplayObjective
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
    # smaller D at its N (12 targets on the dense grids: more targets, less noise in the mean)
    targets: str = "largest"


def _loo_law(grid_path: str | Path | None, target_key: tuple[float, float]) -> Any:
    frame = pd.read_csv(grid_path or _default_path())
    keep = ~((frame["N"] == target_key[0]) & (frame["D"] == target_key[1]))
    return fit_law_ols(frame[keep], name="loo-refit")


def _default_path() -> Path:
    from steplaw_opt.bench._grids import default_grid_path

    return default_grid_path()


class _Scorer:
    """Raw and smoothed gaps of (lr, batch) points at one target setting."""

    def __init__(self, setting: GridSetting) -> None:
        from steplaw_opt.bench._surface import smooth_surface

        self.setting = setting
        self.surface = smooth_surface(setting)

    def gaps(self, lr: float, batch: float) -> tuple[float, float]:
        i = self.setting.nearest_index(lr, batch)
        return self.setting.gap(float(self.setting.loss[i])), self.surface.gap(i)

    def kept(self, points: list[tuple[float, float]]) -> tuple[float, float]:
        """Gaps of the point whose measured loss is lowest (the run a user keeps)."""
        best = min(points, key=lambda p: self.setting.loss_at(*p))
        return self.gaps(*best)


def _tune_once(
    target: Scale,
    objective: GridReplayObjective,
    law: Any,
    proxy_budget: float,
    k: int,
    seed: int,
    sampler: str,
) -> tuple[Any, list[tuple[float, float]]]:
    """One tune: the result and the (lr, batch) of its runs at the target, in order."""
    from steplaw_opt.tune import tune

    at_target: list[tuple[float, float]] = []

    def record(event: Any) -> None:
        if event.phase == "end" and event.loss is not None and event.scale.D == target.D:
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
        on_trial=record,
    )
    return result, at_target


def run_proxy_bench(
    config: ProxyBenchConfig, progress: Callable[[int, int, str], None] | None = None
) -> pd.DataFrame:
    """One row per (prior, target, K, budget, seed): raw and smoothed gaps (fractions) of the law
    alone, of K target runs only, of proxies + K target runs, and of the refined optimum."""
    settings = load_grids(config.grid_path)
    objective = GridReplayObjective(settings)
    by_n: dict[float, list[float]] = {}
    for s in settings:
        by_n.setdefault(s.N, []).append(s.D)
    if config.targets not in ("largest", "all"):
        raise SteplawInputError(f"targets must be 'largest' or 'all', got {config.targets!r}")
    targets = [
        Scale(N=n, D=d)
        for n, ds in sorted(by_n.items())
        for d in sorted(ds)[1:]
        if config.targets == "all" or d == max(ds)
    ]
    jobs = [
        (p, t, k, b, seed)
        for p in config.priors
        for t in targets
        for k in config.target_runs
        for b in config.budgets
        for seed in range(config.seeds)
    ]
    rows: list[dict[str, Any]] = []
    laws: dict[tuple[str, float, float], Any] = {}
    scorers: dict[tuple[float, float], _Scorer] = {}
    baselines: dict[tuple[str, float, float, int, int], tuple[float, float]] = {}
    for done, (prior, target, k, budget, seed) in enumerate(jobs):
        if progress is not None:
            progress(done, len(jobs), f"{prior} N={target.N:.3g} K={k} budget {budget:g}")
        key = (prior, float(target.N or 0), float(target.D or 0))
        if key not in laws:
            laws[key] = (
                load_law("step-law")
                if prior == "published"
                else _loo_law(config.grid_path, key[1:])
            )
        law = laws[key]
        if key[1:] not in scorers:
            scorers[key[1:]] = _Scorer(objective.setting(target))
        scorer = scorers[key[1:]]
        seq_len = scorer.setting.seq_len
        law_point = (law.lr_at(target), law.batch_tokens_at(target) / seq_len)
        law_raw, law_smooth = scorer.gaps(*law_point)
        tune_seed = 1009 * seed + int(target.N or 0) % 997
        base_key = (*key, k, seed)
        if base_key not in baselines:  # the same K target runs, no proxy run
            if k == 0:
                baselines[base_key] = (law_raw, law_smooth)
            else:
                _, points = _tune_once(target, objective, law, 0.0, k, tune_seed, config.sampler)
                baselines[base_key] = scorer.kept(points)
        start = time.perf_counter()
        row: dict[str, Any] = {
            "prior": prior,
            "N": target.N,
            "D": target.D,
            "target_runs": k,
            "budget": budget,
            "seed": seed,
            "gap_law": law_raw,
            "gap_law_smooth": law_smooth,
            "gap_target_only": baselines[base_key][0],
            "gap_target_only_smooth": baselines[base_key][1],
        }
        try:
            result, points = _tune_once(
                target, objective, law, budget, k, tune_seed, config.sampler
            )
        except SteplawInputError:  # the budget buys no proxy run: the law is the answer
            row.update(runs=0, compute=0.0)
            row.update(gap_refined=law_raw, gap_refined_smooth=law_smooth)
            row.update(gap=row["gap_target_only"], gap_smooth=row["gap_target_only_smooth"])
        else:
            opt = result.refined
            refined = scorer.gaps(opt.lr, opt.batch_sequences)
            kept = scorer.kept(points) if points else refined
            row.update(
                runs=result.n_complete + result.n_failed - k,
                compute=result.compute_spent - k,
                gap=kept[0],
                gap_smooth=kept[1],
                gap_refined=refined[0],
                gap_refined_smooth=refined[1],
            )
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
    if progress is not None:
        progress(len(jobs), len(jobs), "done")
    return pd.DataFrame(rows)


GAP_COLUMNS = {
    "law": "gap_law",
    "law_smooth": "gap_law_smooth",
    "target_only": "gap_target_only",
    "target_only_smooth": "gap_target_only_smooth",
    "proxies": "gap",
    "proxies_smooth": "gap_smooth",
    "proxies_median": "gap",
    "refined": "gap_refined",
    "refined_smooth": "gap_refined_smooth",
}


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean gaps (%) per prior, K and budget, over targets and seeds, with the proxy compute
    spent: law alone, K target runs only, proxies + K target runs (mean and median), refined."""
    runs = runs.assign(setting=runs["N"].astype(str) + "/" + runs["D"].astype(str))
    grouped = runs.groupby(["prior", "target_runs", "budget"])
    aggs: dict[str, tuple[str, str]] = {
        "targets": ("setting", "nunique"),
        "compute": ("compute", "mean"),
        "runs": ("runs", "mean"),
    }
    for name, col in GAP_COLUMNS.items():
        aggs[name] = (col, "median" if name.endswith("_median") else "mean")
    out = grouped.agg(**aggs).reset_index()  # type: ignore[call-overload]
    for name in GAP_COLUMNS:
        out[name] = 100 * out[name]
    return out


def print_summary(console: Any, runs: pd.DataFrame) -> None:
    from rich.table import Table

    table = Table(
        title="proxy-run mode: target = largest D of each N, proxy runs at smaller D, then K runs "
        "at the target (the best one kept); mean gap at the target, % — raw grid / smoothed "
        "surface",
        title_justify="left",
    )
    columns = ("prior", "K", "budget", "proxy runs", "proxy compute", "law alone",
               "K target runs only", "proxies + K target runs", "refined optimum")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="right")
    for r in summarise(runs).itertuples():
        table.add_row(
            r.prior,
            str(r.target_runs),
            f"{r.budget:g}",
            f"{r.runs:.1f}",
            f"{r.compute:.3f}",
            f"{r.law:.3f} / {r.law_smooth:.3f}",
            f"{r.target_only:.3f} / {r.target_only_smooth:.3f}",
            f"{r.proxies:.3f} / {r.proxies_smooth:.3f}",
            f"{r.refined:.3f} / {r.refined_smooth:.3f}",
        )
    console.print(table)
    console.print(
        "K = 1: the one target run goes where the pooled model puts the optimum (with no proxy "
        "run: the law's point). Raw: the nearest grid point's measured loss; smoothed: the main "
        "benchmark's cubic surface."
    )


def per_target(runs: pd.DataFrame) -> pd.DataFrame:
    cols = ["gap_law", "gap_target_only", "gap", "gap_smooth", "gap_refined"]
    return (
        runs.groupby(["prior", "N", "D", "target_runs", "budget"])[cols]
        .mean()
        .mul(100)
        .reset_index()
    )


__all__ = ["ProxyBenchConfig", "per_target", "print_summary", "run_proxy_bench", "summarise"]
