"""The replay benchmark: how close to each setting's best loss a method gets in k trials.

Protocol (the project design, section "Benchmark"):

- Data: a released grid CSV (default ``../shared/data/steplaw/dense_lr_bs_loss.csv``), one
  :class:`~steplaw_opt.bench.GridSetting` per (N, D) group (17 in the released data).
- Objective: :class:`~steplaw_opt.bench.ReplayObjective` — the measured smooth loss of the grid
  point nearest to the proposal in (ln lr, ln batch). Every method searches the same box:
  ``lr`` (float, log) and ``batch_size`` (float, log, sequences) over the data's overall lr and
  batch range (2.44e-4 … 2.21e-2, 16 … 2048 for the released data).
- Runs: for every prior, setting, seed and method one Optuna study of ``max(budgets)`` trials;
  the score at budget k is read from its first k trials, so budgets of one run are nested.
- Recommendation at budget k: the best observed trial among the first k (``plateau (refined)``:
  the PlateauSampler's ``refined_optimum`` of a study holding only those k trials, snapped to
  the nearest grid point). ``law``: the law's point alone, snapped to the grid, reported at
  k = 0.
- Score: the gap of the recommended grid point, loss / setting minimum − 1, in %, on the raw
  grid (``gap_raw``) and on a smoothed surface (``gap_smooth``; see
  :func:`steplaw_opt.bench._surface.smooth_surface`), because the raw grid's noise (~0.05 %) is
  as large as the differences near the minimum. Also recorded: the number of distinct grid points
  among the first k trials (a proposal that lands on an evaluated point wastes a trial).
- Priors: ``published`` — the shipped Step Law card; ``loo`` — the law refitted with
  :func:`~steplaw_opt.priors.fit_law_ols` on every setting except the held-out one. The prior
  only reaches ``law``, ``walk``, ``plateau``, ``plateau-ts`` and ``botorch``; Optuna's stock
  samplers (random,
  TPE, GP, CMA-ES) run with their defaults and a seed, without the law point, so they are run
  once and their rows are reported under each prior.
- Methods: ``law``, ``random``, ``tpe``, ``gp``, ``cmaes``, ``walk`` (a naive neighbour walk from
  the law point that looks at the grid's point set — a reference, not a sampler) and
  ``plateau`` (rows ``plateau`` and ``plateau (refined)``), ``plateau-ts`` (the same sampler
  with Thompson sampling instead of expected improvement: the measurement behind the default)
  and ``botorch`` (:class:`~steplaw_opt.samplers.BoTorchPlateauSampler`, best observed).
- Seeds: the sampler seed of (seed s, setting i) is ``1009·s + i`` with i the setting's index in
  the full data, so a subset run reproduces the full run's rows.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from steplaw_opt.bench._grids import GridSetting, ReplayObjective, default_grid_path, load_grids
from steplaw_opt.bench._surface import SmoothSurface, best_observed, smooth_surface, walk_trace
from steplaw_opt.errors import SteplawInputError
from steplaw_opt.priors import Law, fit_law_ols, load_law

METHODS = ("law", "random", "tpe", "gp", "cmaes", "walk", "plateau", "plateau-ts", "botorch")
STOCK = ("random", "tpe", "gp", "cmaes")
PRIORS = ("published", "loo")
ROW_ORDER = (
    "law",
    "random",
    "tpe",
    "gp",
    "cmaes",
    "walk",
    "plateau",
    "plateau (refined)",
    "plateau-ts",
    "botorch",
)
LR_PARAM, BATCH_PARAM = "lr", "batch_size"
QUICK_SETTINGS = 5

ProgressFn = Callable[[int, int, str], None]


# --------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class BenchConfig:
    """What to run. ``settings`` are indices into the data's settings in ``load_grids`` order
    (None = all, or ``n_settings`` of them spread evenly over that order)."""

    grid_path: str | Path | None = None
    group_by: tuple[str, ...] = ("N", "D")
    budgets: tuple[int, ...] = (1, 3, 5, 10, 20)
    seeds: int = 3
    methods: tuple[str, ...] = METHODS
    priors: tuple[str, ...] = PRIORS
    settings: tuple[int, ...] | None = None
    n_settings: int | None = None  # without ``settings``: this many, evenly spread
    law: str = "step-law"
    loo_eps: float = 0.0025
    loss_column: str = "smooth loss"
    seq_len: int = 2048

    @classmethod
    def quick(cls, **overrides: Any) -> BenchConfig:
        """The CI configuration: 5 settings spread over the data, 1 seed, budgets 1, 3, 5,
        methods law, random, walk and plateau."""
        base = cls(
            seeds=1,
            budgets=(1, 3, 5),
            methods=("law", "random", "walk", "plateau"),
            n_settings=QUICK_SETTINGS,
        )
        return replace(base, **overrides)

    def checked(self) -> BenchConfig:
        """This config with budgets sorted; raises SteplawInputError naming a bad value."""
        budgets = tuple(sorted(set(self.budgets)))
        if not budgets or any(isinstance(b, bool) or int(b) != b or b < 1 for b in budgets):
            raise SteplawInputError(f"budgets must be positive integers, got {list(self.budgets)}")
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise SteplawInputError(f"seeds must be a positive integer, got {self.seeds!r}")
        for m in self.methods:
            if m not in METHODS:
                raise SteplawInputError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
        for p in self.priors:
            if p not in PRIORS:
                raise SteplawInputError(f"unknown prior {p!r}; choose from published, loo")
        if not self.methods or not self.priors:
            raise SteplawInputError("need at least one method and one prior")
        return replace(
            self,
            budgets=tuple(int(b) for b in budgets),
            methods=tuple(dict.fromkeys(self.methods)),
            priors=tuple(dict.fromkeys(self.priors)),
        )


# --------------------------------------------------------------------------------- result
@dataclass
class BenchResult:
    """Per-run rows and what is needed to summarise them.

    ``runs`` has one row per (prior, method, setting, seed, budget) with columns ``prior``,
    ``method``, ``setting`` (index), ``N``, ``D``, ``seed``, ``budget``, ``gap_raw`` and
    ``gap_smooth`` (fractions: 0.001 = 0.1 %), ``n_distinct``, and the recommended ``lr`` and
    ``batch`` (sequences).
    """

    config: BenchConfig
    runs: pd.DataFrame
    settings: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    wall_time_s: float = 0.0

    def summary(self) -> pd.DataFrame:
        """Mean, median and max gap in % (raw and smoothed) and mean distinct points, per
        prior × method × budget, over settings × seeds."""
        if self.runs.empty:
            return pd.DataFrame()
        g = self.runs.groupby(["prior", "method", "budget"], sort=False)
        out = g.agg(
            mean_raw=("gap_raw", "mean"),
            median_raw=("gap_raw", "median"),
            max_raw=("gap_raw", "max"),
            mean_smooth=("gap_smooth", "mean"),
            median_smooth=("gap_smooth", "median"),
            n_distinct=("n_distinct", "mean"),
            runs=("gap_raw", "size"),
        ).reset_index()
        for col in ("mean_raw", "median_raw", "max_raw", "mean_smooth", "median_smooth"):
            out[col] *= 100.0
        order = {m: i for i, m in enumerate(ROW_ORDER)}
        out["_m"] = out["method"].map(order)
        out["_p"] = out["prior"].map({p: i for i, p in enumerate(PRIORS)})
        out = out.sort_values(["_p", "_m", "budget"]).drop(columns=["_m", "_p"])
        return out.reset_index(drop=True)

    def to_dict(self) -> dict[str, Any]:
        """Every figure, JSON-ready."""
        cfg = asdict(self.config)
        cfg["grid_path"] = str(self.config.grid_path)
        return {
            "config": cfg,
            "notes": self.notes,
            "wall_time_s": self.wall_time_s,
            "settings": self.settings,
            "summary": self.summary().to_dict(orient="records"),
            "runs": self.runs.to_dict(orient="records"),
        }


# --------------------------------------------------------------------------------- helpers
@contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna logging at WARNING and its experimental warnings off, restored afterwards."""
    import optuna

    old = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(old)


def _sampler_kwargs(setting: GridSetting, law: Law, config: BenchConfig, seed: int) -> dict:
    """What the project's samplers are given in the bench: the setting's scale and the law."""
    return {
        "law": law,
        "lr_param": LR_PARAM,
        "batch_param": BATCH_PARAM,
        "batch_unit": "sequences",
        "seq_len": config.seq_len,
        "seed": seed,
    }


def make_plateau_sampler(
    setting: GridSetting, law: Law, config: BenchConfig, seed: int, acquisition: str = "ei"
) -> Any:
    """The project's PlateauSampler at a setting's scale, with its default settings
    (``plateau-ts``: the same with Thompson sampling instead of expected improvement)."""
    from steplaw_opt.samplers import PlateauSampler

    kwargs = _sampler_kwargs(setting, law, config, seed)
    return PlateauSampler(setting.scale, acquisition=acquisition, **kwargs)  # type: ignore[arg-type]


def make_botorch_sampler(setting: GridSetting, law: Law, config: BenchConfig, seed: int) -> Any:
    """The project's BoTorchPlateauSampler at a setting's scale, with its default settings."""
    from steplaw_opt.samplers import BoTorchPlateauSampler

    return BoTorchPlateauSampler(setting.scale, **_sampler_kwargs(setting, law, config, seed))


def _botorch_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "botorch", "gpytorch"))


def _cmaes_available() -> bool:
    try:
        import cmaes  # noqa: F401
    except ImportError:
        return False
    return True


def data_bounds(settings: Sequence[GridSetting]) -> tuple[tuple[float, float], tuple[float, float]]:
    """The overall lr and batch range of the data: the search box shared by every method."""
    lr = (min(float(s.lr.min()) for s in settings), max(float(s.lr.max()) for s in settings))
    bs = (min(float(s.batch.min()) for s in settings), max(float(s.batch.max()) for s in settings))
    return lr, bs


def sampler_seed(seed: int, setting_index: int) -> int:
    return 1009 * seed + setting_index


def law_index(setting: GridSetting, law: Law) -> int:
    """The grid point nearest to the law's prediction at the setting."""
    p = law.predict(setting.scale)
    if p.lr is None or p.batch_sequences is None:
        raise SteplawInputError(f"law {law.name!r} predicts no lr or batch at {setting}")
    return setting.nearest_index(p.lr, p.batch_sequences)


def _stock_sampler(method: str, seed: int) -> Any:
    import optuna

    samplers = {
        "random": optuna.samplers.RandomSampler,
        "tpe": optuna.samplers.TPESampler,
        "gp": optuna.samplers.GPSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
    }
    return samplers[method](seed=seed)


def _trial_indices(setting: GridSetting, trials: Sequence[Any]) -> np.ndarray:
    return np.array(
        [setting.nearest_index(t.params[LR_PARAM], t.params[BATCH_PARAM]) for t in trials],
        dtype=int,
    )


def _run_study(sampler: Any, objective: ReplayObjective, n_trials: int) -> Any:
    import optuna

    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=n_trials)
    return study


def _refined_indices(
    setting: GridSetting, study: Any, sampler: Any, refined_optimum: Any, budgets: Sequence[int]
) -> dict[int, int]:
    """Grid index of ``refined_optimum`` of a study holding only the first k trials, per k."""
    import optuna

    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    out = {}
    for k in budgets:
        partial = optuna.create_study()
        for key, value in study.user_attrs.items():
            partial.set_user_attr(key, value)
        partial.add_trials(trials[:k])
        opt = refined_optimum(partial, sampler=sampler)
        out[k] = setting.nearest_index(float(opt.lr), float(opt.batch_sequences))
    return out


@dataclass(frozen=True)
class _Context:
    """Everything one run needs about its setting."""

    index: int
    setting: GridSetting
    surface: SmoothSurface
    objective: ReplayObjective


def _rows(
    ctx: _Context,
    method: str,
    prior: str,
    seed: int,
    indices: np.ndarray,
    budgets: Sequence[int],
    recommended: dict[int, int] | None = None,
) -> list[dict[str, Any]]:
    s = ctx.setting
    rows = []
    for k in budgets:
        rec = recommended[k] if recommended is not None else best_observed(indices, s.loss, k)
        rows.append(
            {
                "prior": prior,
                "method": method,
                "setting": ctx.index,
                "N": s.N,
                "D": s.D,
                "seed": seed,
                "budget": k,
                "gap_raw": s.gap(float(s.loss[rec])),
                "gap_smooth": ctx.surface.gap(rec),
                "n_distinct": int(np.unique(indices[:k]).size),
                "lr": float(s.lr[rec]),
                "batch": float(s.batch[rec]),
            }
        )
    return rows


# --------------------------------------------------------------------------------- the bench
def _priors(
    config: BenchConfig, settings: list[GridSetting], chosen: Sequence[int]
) -> dict[str, dict[int, Law]]:
    """The law each prior gives each chosen setting (LOO: refitted without that setting)."""
    out: dict[str, dict[int, Law]] = {}
    if "published" in config.priors:
        law = load_law(config.law)
        out["published"] = dict.fromkeys(chosen, law)
    if "loo" in config.priors:
        frame = pd.read_csv(default_grid_path() if config.grid_path is None else config.grid_path)
        out["loo"] = {}
        for i in chosen:
            held = np.ones(len(frame), dtype=bool)
            for col, value in zip(config.group_by, settings[i].key, strict=True):
                held &= (frame[col] == value).to_numpy()
            out["loo"][i] = fit_law_ols(
                frame[~held],
                eps=config.loo_eps,
                loss_column=config.loss_column,
                seq_len=config.seq_len,
                name=f"loo-{i}",
            )
    return out


def _chosen_settings(config: BenchConfig, n: int) -> list[int]:
    if config.settings is None:
        if config.n_settings is None or config.n_settings >= n:
            return list(range(n))
        if config.n_settings < 1:
            raise SteplawInputError(f"n_settings must be positive, got {config.n_settings}")
        return sorted({round(x) for x in np.linspace(0, n - 1, config.n_settings)})
    bad = [i for i in config.settings if not 0 <= i < n]
    if bad:
        raise SteplawInputError(f"setting index {bad[0]} out of range (the data has {n} settings)")
    return sorted(set(config.settings))


def _methods_available(config: BenchConfig, notes: list[str]) -> list[str]:
    methods = list(config.methods)
    if "cmaes" in methods and not _cmaes_available():
        methods.remove("cmaes")
        notes.append("cmaes skipped: Optuna's CmaEsSampler needs the 'cmaes' package")
    if "botorch" in methods and not _botorch_available():
        methods.remove("botorch")
        notes.append("botorch skipped: BoTorchPlateauSampler needs torch, botorch and gpytorch")
    return methods


def run_bench(
    config: BenchConfig | None = None, *, progress: ProgressFn | None = None
) -> BenchResult:
    """Run the replay benchmark; ``progress(done, total, label)`` is called after each run."""
    start = time.perf_counter()
    config = (config or BenchConfig()).checked()
    settings = load_grids(
        config.grid_path,
        loss_column=config.loss_column,
        group_by=config.group_by,
        seq_len=config.seq_len,
    )
    chosen = _chosen_settings(config, len(settings))
    config = replace(config, settings=tuple(chosen))
    notes: list[str] = []
    methods = _methods_available(config, notes)
    laws = _priors(config, settings, chosen)
    lr_bounds, batch_bounds = data_bounds(settings)
    budgets, n_trials = config.budgets, max(config.budgets)

    contexts = {
        i: _Context(
            i,
            settings[i],
            smooth_surface(settings[i]),
            ReplayObjective(
                settings[i],
                lr_param=LR_PARAM,
                batch_param=BATCH_PARAM,
                lr_bounds=lr_bounds,
                batch_bounds=batch_bounds,
            ),
        )
        for i in chosen
    }
    stock = [m for m in methods if m in STOCK]
    prior_methods = [m for m in methods if m in ("walk", "plateau", "plateau-ts", "botorch")]
    total = len(chosen) * config.seeds * (len(stock) + len(config.priors) * len(prior_methods))
    done = 0
    rows: list[dict[str, Any]] = []

    def tick(label: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, label)

    with quiet_optuna():
        for i in chosen:
            ctx = contexts[i]
            for prior in config.priors:
                if "law" in methods:
                    idx = np.array([law_index(ctx.setting, laws[prior][i])])
                    for seed in range(config.seeds):
                        rows += _rows(ctx, "law", prior, seed, idx, [0], {0: int(idx[0])})
            for seed in range(config.seeds):
                sseed = sampler_seed(seed, i)
                for method in stock:
                    study = _run_study(_stock_sampler(method, sseed), ctx.objective, n_trials)
                    indices = _trial_indices(ctx.setting, study.trials)
                    for prior in config.priors:
                        rows += _rows(ctx, method, prior, seed, indices, budgets)
                    tick(f"{ctx.setting} seed {seed} {method}")
                for prior in config.priors:
                    law = laws[prior][i]
                    if "walk" in prior_methods:
                        indices = walk_trace(ctx.setting, law_index(ctx.setting, law), n_trials)
                        rows += _rows(ctx, "walk", prior, seed, indices, budgets)
                        tick(f"{ctx.setting} seed {seed} walk ({prior})")
                    if "plateau" in prior_methods:
                        rows += _plateau_rows(ctx, law, prior, seed, sseed, config)
                        tick(f"{ctx.setting} seed {seed} plateau ({prior})")
                    if "plateau-ts" in prior_methods:
                        sampler = make_plateau_sampler(
                            ctx.setting, law, config, sseed, acquisition="thompson"
                        )
                        study = _run_study(sampler, ctx.objective, n_trials)
                        indices = _trial_indices(ctx.setting, study.trials)
                        rows += _rows(ctx, "plateau-ts", prior, seed, indices, budgets)
                        tick(f"{ctx.setting} seed {seed} plateau-ts ({prior})")
                    if "botorch" in prior_methods:
                        sampler = make_botorch_sampler(ctx.setting, law, config, sseed)
                        study = _run_study(sampler, ctx.objective, n_trials)
                        indices = _trial_indices(ctx.setting, study.trials)
                        rows += _rows(ctx, "botorch", prior, seed, indices, budgets)
                        tick(f"{ctx.setting} seed {seed} botorch ({prior})")
    runs = pd.DataFrame(rows)
    info = [_setting_info(contexts[i]) for i in chosen]
    return BenchResult(config, runs, info, notes, time.perf_counter() - start)


def _plateau_rows(
    ctx: _Context,
    law: Law,
    prior: str,
    seed: int,
    sseed: int,
    config: BenchConfig,
) -> list[dict[str, Any]]:
    from steplaw_opt.samplers import refined_optimum

    sampler = make_plateau_sampler(ctx.setting, law, config, sseed)
    study = _run_study(sampler, ctx.objective, max(config.budgets))
    indices = _trial_indices(ctx.setting, study.trials)
    refined = _refined_indices(ctx.setting, study, sampler, refined_optimum, config.budgets)
    return [
        *_rows(ctx, "plateau", prior, seed, indices, config.budgets),
        *_rows(ctx, "plateau (refined)", prior, seed, indices, config.budgets, refined),
    ]


def _setting_info(ctx: _Context) -> dict[str, Any]:
    s, surf = ctx.setting, ctx.surface
    best = s.best_index
    return {
        "setting": ctx.index,
        "N": s.N,
        "D": s.D,
        "points": int(s.loss.size),
        "min_loss": s.min_loss,
        "best_lr": float(s.lr[best]),
        "best_batch": float(s.batch[best]),
        "smooth_points": int(surf.fitted.sum()),
        "smooth_rms_near_pct": 100 * surf.rms_near,
        "smooth_rms_fitted_pct": 100 * surf.rms_fitted,
    }


# --------------------------------------------------------------------------------- overhead
def measure_overhead(
    config: BenchConfig | None = None,
    *,
    methods: Sequence[str] = ("plateau", "botorch", "tpe", "gp"),
    history: Sequence[int] = (20, 50, 200),
    repeats: int = 20,
    gp_large_repeats: int = 5,
    gp_large_history: int = 100,
) -> tuple[pd.DataFrame, list[str]]:
    """Median wall time of one suggestion (``study.ask()`` and the two ``suggest_float`` calls,
    in-memory storage) with ``h`` finished trials already in the study, per method and h.

    Each repeat builds a fresh study holding the same ``h`` finished random trials (on the
    middle setting of the data) and a fresh seeded sampler, so every timed call sees exactly h
    trials; one untimed warm-up call per (method, h) pays import and compilation costs.
    GPSampler and BoTorchPlateauSampler refit a GP on every call, which grows steeply with h: for
    h > ``gp_large_history`` they are timed ``gp_large_repeats`` times instead of ``repeats`` (the
    row says how many).

    Torch runs on one thread during the timing (restored afterwards): the GPs here are tiny, and
    on 2 cores a second thread makes each likelihood step several times slower (see
    docs/botorch.md); ``torch.set_num_threads(1)`` is the setting to use with these samplers.
    """
    import optuna

    with _torch_threads(1):
        return _measure_overhead(
            optuna, config, methods, history, repeats, gp_large_repeats, gp_large_history
        )


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _measure_overhead(
    optuna: Any,
    config: BenchConfig | None,
    methods: Sequence[str],
    history: Sequence[int],
    repeats: int,
    gp_large_repeats: int,
    gp_large_history: int,
) -> tuple[pd.DataFrame, list[str]]:
    config = (config or BenchConfig()).checked()
    settings = load_grids(
        config.grid_path, loss_column=config.loss_column, group_by=config.group_by
    )
    setting = settings[len(settings) // 2]
    lr_b, bs_b = data_bounds(settings)
    objective = ReplayObjective(setting, lr_bounds=lr_b, batch_bounds=bs_b)
    notes: list[str] = []
    law = load_law(config.law)
    rows = []
    with quiet_optuna():
        for h in history:
            seed_study = _run_study(optuna.samplers.RandomSampler(seed=h), objective, h)
            frozen = seed_study.trials
            for method in methods:

                def make(seed: int, method: str = method) -> Any:
                    if method == "plateau":
                        return make_plateau_sampler(setting, law, config, seed)
                    if method == "botorch":
                        return make_botorch_sampler(setting, law, config, seed)
                    return _stock_sampler(method, seed)

                large = method in ("gp", "botorch") and h > gp_large_history
                n = gp_large_repeats if large else repeats
                times = [_time_one(make(r), frozen, objective) for r in range(n + 1)][1:]
                rows.append(
                    {
                        "method": method,
                        "history": h,
                        "median_ms": 1000 * float(np.median(times)),
                        "repeats": n,
                    }
                )
    return pd.DataFrame(rows), notes


def _time_one(sampler: Any, frozen: Sequence[Any], objective: ReplayObjective) -> float:
    import optuna

    study = optuna.create_study(sampler=sampler)
    study.add_trials(frozen)

    def suggest() -> optuna.trial.Trial:
        trial = study.ask()
        trial.suggest_float(LR_PARAM, *objective.lr_bounds, log=True)
        trial.suggest_float(BATCH_PARAM, *objective.batch_bounds, log=True)
        return trial

    # One untimed suggestion first: the plateau samplers' first proposal in a study is the
    # law's point, which costs nothing and would flatter them.
    warm = suggest()
    study.tell(warm, objective.setting.loss_at(warm.params[LR_PARAM], warm.params[BATCH_PARAM]))
    t0 = time.perf_counter()
    suggest()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------------- rendering
def _cell(mean: float, median: float) -> str:
    return f"{_pct(mean)} ({_pct(median)})"


def _pct(x: float) -> str:
    if not math.isfinite(x):
        return "—"
    if x == 0:
        return "0"
    return f"{x:.2g}" if abs(x) < 0.01 else f"{x:.3f}" if abs(x) < 1 else f"{x:.2f}"


def _table(summary: pd.DataFrame, prior: str, budgets: Sequence[int], kind: str, title: str) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("method")
    has_law = (summary["method"] == "law").any()
    cols = ([0] if has_law else []) + list(budgets)
    for k in cols:
        table.add_column("law (k=0)" if k == 0 else f"k={k}", justify="right")
    sub = summary[summary["prior"] == prior]
    for method in ROW_ORDER:
        rows = sub[sub["method"] == method].set_index("budget")
        if rows.empty:
            continue
        cells = []
        for k in cols:
            if k not in rows.index:
                cells.append("—")
            elif kind == "distinct":
                cells.append(f"{rows.loc[k, 'n_distinct']:.1f}")
            else:
                r = rows.loc[k]
                cells.append(_cell(r[f"mean_{kind}"], r[f"median_{kind}"]))
        table.add_row(method, *cells)
    return table


def print_result(console: Any, result: BenchResult) -> None:
    """The rich tables: raw gaps per prior, smoothed gaps per prior, distinct points."""
    summary = result.summary()
    cfg = result.config
    n_set = len(result.settings)
    head = f"{n_set} settings × {cfg.seeds} seed(s)"
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    if summary.empty:
        console.print("no runs")
        return
    labels = {"published": f"published law ({cfg.law})", "loo": "leave-one-setting-out refit"}
    for kind, what in (
        ("raw", "gap of the recommendation on the raw grid"),
        ("smooth", "gap on the smoothed surface"),
    ):
        for prior in cfg.priors:
            title = f"{labels[prior]} — {what}, mean % (median %), {head}"
            console.print(_table(summary, prior, cfg.budgets, kind, title))
    for prior in cfg.priors:
        title = f"{labels[prior]} — distinct grid points evaluated (mean)"
        console.print(_table(summary, prior, cfg.budgets, "distinct", title))
    rms = [s["smooth_rms_near_pct"] for s in result.settings]
    console.print(
        f"smoothed surface: cubic in (ln lr, ln batch) on points within 3 % of each minimum; "
        f"residual within 0.5 % of the minimum {np.mean(rms):.3f} % RMS (mean over settings)"
    )
    console.print(f"wall time {result.wall_time_s:.1f} s")


def print_overhead(console: Any, frame: pd.DataFrame, notes: Sequence[str]) -> None:
    from rich.table import Table

    for note in notes:
        console.print(f"[yellow]note:[/] {note}")
    if frame.empty:
        return
    hist = sorted(frame["history"].unique())
    table = Table(title="time per suggestion, ms (median; repeats)", title_justify="left")
    table.add_column("method")
    for h in hist:
        table.add_column(f"{h} trials", justify="right")
    for method in dict.fromkeys(frame["method"]):
        cells = []
        for h in hist:
            r = frame[(frame["method"] == method) & (frame["history"] == h)]
            cells.append(
                "—" if r.empty else f"{r['median_ms'].iloc[0]:.1f} ({int(r['repeats'].iloc[0])})"
            )
        table.add_row(method, *cells)
    console.print(table)


# --------------------------------------------------------------------------------- CLI input
def parse_budgets(text: str) -> tuple[int, ...]:
    """``"1,3,5"`` → (1, 3, 5); a non-integer or non-positive item is an error naming it."""
    out = []
    for item in text.split(","):
        item = item.strip()
        try:
            k = int(item)
        except ValueError:
            k = 0
        if k < 1:
            raise SteplawInputError(
                f"--budgets must be positive integers separated by commas; bad value {item!r}"
            )
        out.append(k)
    return tuple(out)


def parse_names(text: str, option: str, allowed: Sequence[str] | None = None) -> tuple[str, ...]:
    """``"a,b"`` → ("a", "b"), each checked against ``allowed``."""
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    if not names:
        raise SteplawInputError(f"{option} needs at least one name, got {text!r}")
    for name in names:
        if allowed is not None and name not in allowed:
            raise SteplawInputError(
                f"{option}: unknown value {name!r}; choose from {', '.join(allowed)}"
            )
    return names


def cli_config(
    grid_csv: str | None,
    *,
    group_by: str,
    budgets: str | None,
    seeds: int | None,
    methods: str | None,
    prior: str,
    quick: bool,
) -> BenchConfig:
    """The :class:`BenchConfig` of ``steplaw-opt bench``: ``--quick`` sets the defaults of the
    options not given."""
    if grid_csv is not None and not Path(grid_csv).is_file():
        raise SteplawInputError(f"grid file not found: {grid_csv!r}")
    priors = {"published": ("published",), "loo": ("loo",), "both": PRIORS}
    if prior not in priors:
        raise SteplawInputError(f"--prior must be published, loo or both, got {prior!r}")
    base = BenchConfig.quick() if quick else BenchConfig()
    overrides: dict[str, Any] = {
        "grid_path": grid_csv,
        "group_by": parse_names(group_by, "--group-by"),
        "priors": priors[prior],
    }
    if budgets is not None:
        overrides["budgets"] = parse_budgets(budgets)
    if seeds is not None:
        if seeds < 1:
            raise SteplawInputError(f"--seeds must be a positive integer, got {seeds}")
        overrides["seeds"] = seeds
    if methods is not None:
        overrides["methods"] = parse_names(methods, "--methods", METHODS)
    return replace(base, **overrides).checked()
