"""The replay benchmark: how good is the point a user would train with, after k trials?

Protocol (docs/bench.md has the figures and the reasoning):

- Data: a released grid CSV (default ``../shared/data/steplaw/dense_lr_bs_loss.csv``), one
  :class:`~steplaw_opt.bench.GridSetting` per (N, D) group (17 in the released data).
- Landscapes: the grids as released (shift ``none``) and shifted ones
  (:mod:`~steplaw_opt.bench._shift`), whose optimum moves by a known offset so that the law is
  wrong by a known amount — the case the tool exists for.
- Objective: :class:`~steplaw_opt.bench._shift.ShiftedReplayObjective` — the measured smooth
  loss of the cell nearest to the proposal in (ln lr, ln batch). Every method searches the same
  box: the data's overall lr and batch range (2.44e-4 … 2.21e-2, 16 … 2048 sequences for the
  released data), moved with the landscape.
- Runs: for every shift, prior, setting, seed and method one Optuna study of ``max(budgets)``
  trials; budget k reads its first k trials, so the budgets of one run are nested.
- Recommendation at budget k — what a user would train the real run with: the refined optimum
  of a study holding only the first k trials for the project's samplers (``plateau``,
  ``plateau-ts``, ``botorch``); the best observed trial for Optuna's samplers and the walk; the
  law's point for ``law`` (k = 0).
- Scores of the recommendation, at the recommended point itself (not the nearest cell):
  ``gap_<surface>`` on each noise-free surface (:mod:`~steplaw_opt.bench._surfaces`) and
  ``gap_mean`` their mean, the headline; ``gap_oos``, the raw loss of the recommended cell,
  counted only when the method never ran that cell (out of sample; ``oos`` says whether it
  qualified). ``gap_raw`` is the best observed trial's raw loss (the law: its cell's): partly
  luck, since each cell holds one run and near the minimum the noise is as large as the law's
  error. Also: distinct cells among the first k trials, and, for the refined optimum, whether
  its 68 % and 95 % intervals of lr and batch contain each surface's argmin (``cover*``, the
  fraction of surfaces) and their ln-widths (``width*``).
- Priors: ``published`` — the shipped Step Law card; ``loo`` — the law refitted with
  :func:`~steplaw_opt.priors.fit_law_ols` on every setting except the held-out one. Optuna's
  stock samplers (random, TPE, GP, CMA-ES) run with their defaults and a seed, without the law,
  once per landscape; their rows are reported under each prior.
- Methods: ``law``, ``random``, ``tpe``, ``gp``, ``cmaes``, ``walk`` (a naive neighbour walk from
  the law's cell that looks at the grid's point set — a reference, not a sampler), ``plateau``
  (:class:`~steplaw_opt.samplers.PlateauSampler`, expected improvement), ``plateau-ts`` (the
  same with Thompson sampling) and ``botorch``
  (:class:`~steplaw_opt.samplers.BoTorchPlateauSampler`).
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

from steplaw_opt._records import ran_with
from steplaw_opt.bench._grids import GridSetting, ReplayObjective, default_grid_path, load_grids
from steplaw_opt.bench._shift import Shift, ShiftedReplayObjective
from steplaw_opt.bench._surface import walk_trace
from steplaw_opt.bench._surfaces import SURFACE_NAMES, NoiseFreeSurface, noise_free_surfaces
from steplaw_opt.errors import SteplawInputError
from steplaw_opt.priors import Law, fit_law_ols, load_law

METHODS = ("law", "random", "tpe", "gp", "cmaes", "walk", "plateau", "plateau-ts", "botorch")
DEFAULT_METHODS = ("law", "random", "tpe", "cmaes", "walk", "plateau")
STOCK = ("random", "tpe", "gp", "cmaes")
REFINED = ("plateau", "plateau-ts", "botorch")  # recommend their refined optimum
PRIORS = ("published", "loo")
DEFAULT_SHIFTS = ("none", "const:0.5")
FULL_SHIFTS = ("none", "const:0.5", "drift-D:0.5", "drift-N:0.5", "drift-ND:0.5")
ROW_ORDER = METHODS
LR_PARAM, BATCH_PARAM = "lr", "batch_size"
QUICK_SETTINGS = 5

ProgressFn = Callable[[int, int, str], None]


# --------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class BenchConfig:
    """What to run. ``settings`` are indices into the data's settings in ``load_grids`` order
    (None = all, or ``n_settings`` of them spread evenly over that order); ``shifts`` are
    :class:`~steplaw_opt.bench._shift.Shift` texts (``none``, ``const:0.5``, …)."""

    grid_path: str | Path | None = None
    group_by: tuple[str, ...] = ("N", "D")
    budgets: tuple[int, ...] = (1, 3, 5, 10, 20)
    seeds: int = 3
    methods: tuple[str, ...] = DEFAULT_METHODS
    priors: tuple[str, ...] = PRIORS
    shifts: tuple[str, ...] = DEFAULT_SHIFTS
    surfaces: tuple[str, ...] = SURFACE_NAMES
    settings: tuple[int, ...] | None = None
    n_settings: int | None = None  # without ``settings``: this many, evenly spread
    law: str = "step-law"
    loo_eps: float = 0.0025
    loss_column: str = "smooth loss"
    seq_len: int = 2048

    @classmethod
    def quick(cls, **overrides: Any) -> BenchConfig:
        """The CI configuration: 5 settings spread over the data, 1 seed, budgets 1, 3, 5,
        methods law, random, walk and plateau, the released grids only."""
        base = cls(
            seeds=1,
            budgets=(1, 3, 5),
            methods=("law", "random", "walk", "plateau"),
            shifts=("none",),
            n_settings=QUICK_SETTINGS,
        )
        return replace(base, **overrides)

    @classmethod
    def full(cls, **overrides: Any) -> BenchConfig:
        """Every method (GP, BoTorch and Thompson sampling included) on every shift family."""
        return replace(cls(methods=METHODS, shifts=FULL_SHIFTS), **overrides)

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
        for name in self.surfaces:
            if name not in SURFACE_NAMES:
                raise SteplawInputError(
                    f"unknown surface {name!r}; choose from {', '.join(SURFACE_NAMES)}"
                )
        if not self.methods or not self.priors or not self.shifts or not self.surfaces:
            raise SteplawInputError("need at least one method, prior, shift and surface")
        shifts = tuple(dict.fromkeys(Shift.parse(t).label for t in self.shifts))
        return replace(
            self,
            budgets=tuple(int(b) for b in budgets),
            methods=tuple(dict.fromkeys(self.methods)),
            priors=tuple(dict.fromkeys(self.priors)),
            shifts=shifts,
            surfaces=tuple(dict.fromkeys(self.surfaces)),
        )


# --------------------------------------------------------------------------------- result
@dataclass
class BenchResult:
    """Per-run rows and what is needed to summarise them.

    ``runs`` has one row per (shift, prior, method, setting, seed, budget): the recommended
    ``lr`` and ``batch`` (sequences), ``gap_<surface>`` and ``gap_mean`` (fractions: 0.001 =
    0.1 %), ``gap_oos`` (NaN unless ``oos``), ``gap_raw`` (best observed, raw grid),
    ``n_distinct``, and for refined optima ``cover68_lr`` … ``width95_batch``.
    """

    config: BenchConfig
    runs: pd.DataFrame
    settings: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    wall_time_s: float = 0.0

    def summary(self) -> pd.DataFrame:
        """Per shift × prior × method × budget, over settings × seeds: mean gaps in % (each
        surface, their mean, out of sample, best observed raw), how many recommendations
        qualified out of sample, mean distinct cells, interval coverage and median ln-widths."""
        if self.runs.empty:
            return pd.DataFrame()
        runs = self.runs.copy()
        gap_cols = [c for c in runs.columns if c.startswith("gap_")]
        for col in gap_cols:
            runs[col] = 100.0 * runs[col]
        g = runs.groupby(["shift", "prior", "method", "budget"], sort=False)
        aggs: dict[str, Any] = {f"mean_{c[4:]}": (c, "mean") for c in gap_cols}
        aggs["median_mean"] = ("gap_mean", "median")
        aggs["oos_n"] = ("oos", "sum")
        aggs["n_distinct"] = ("n_distinct", "mean")
        aggs["runs"] = ("gap_mean", "size")
        for col in ("cover68_lr", "cover95_lr", "cover68_batch", "cover95_batch"):
            if col in runs.columns:
                aggs[col] = (col, "mean")
        for col in ("width68_lr", "width95_lr", "width68_batch", "width95_batch"):
            if col in runs.columns:
                aggs[col] = (col, "median")
        out = g.agg(**aggs).reset_index()
        out["_s"] = out["shift"].map({s: i for i, s in enumerate(self.config.shifts)})
        out["_p"] = out["prior"].map({p: i for i, p in enumerate(PRIORS)})
        out["_m"] = out["method"].map({m: i for i, m in enumerate(ROW_ORDER)})
        out = out.sort_values(["_s", "_p", "_m", "budget"]).drop(columns=["_s", "_p", "_m"])
        return out.reset_index(drop=True)

    def to_dict(self) -> dict[str, Any]:
        """Every figure, JSON-ready."""
        cfg = asdict(self.config)
        cfg["grid_path"] = str(self.config.grid_path)
        summary = self.summary().astype(object)
        runs = self.runs.astype(object)
        return {
            "config": cfg,
            "notes": self.notes,
            "wall_time_s": self.wall_time_s,
            "settings": self.settings,
            "summary": summary.where(summary.notna(), None).to_dict(orient="records"),
            "runs": runs.where(runs.notna(), None).to_dict(orient="records"),
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
    setting: GridSetting, law: Law, config: BenchConfig, seed: int, acquisition: str | None = None
) -> Any:
    """The project's PlateauSampler at a setting's scale, with its default settings — the
    acquisition too, unless ``acquisition`` names another (``plateau-ts``: ``"thompson"``)."""
    from steplaw_opt.samplers import PlateauSampler

    kwargs = _sampler_kwargs(setting, law, config, seed)
    if acquisition is not None:
        kwargs["acquisition"] = acquisition
    return PlateauSampler(setting.scale, **kwargs)  # type: ignore[arg-type]


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


def _run_study(sampler: Any, objective: ReplayObjective, n_trials: int) -> Any:
    import optuna

    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=n_trials)
    return study


@dataclass(frozen=True)
class _Landscape:
    """One setting on one landscape (released or shifted): its objective and its surfaces."""

    index: int
    setting: GridSetting
    shift: str
    offset: tuple[float, float]
    surfaces: Sequence[NoiseFreeSurface]
    objective: ShiftedReplayObjective

    def unshift(self, lr: float, batch: float) -> tuple[float, float]:
        return self.objective.unshift(lr, batch)

    def cell(self, lr: float, batch: float) -> int:
        """The released grid cell that (lr, batch) on this landscape replays."""
        return self.setting.nearest_index(*self.unshift(lr, batch))

    def gaps(self, lr: float, batch: float) -> dict[str, float]:
        """``gap_<surface>`` of (lr, batch) and ``gap_mean``."""
        lr0, b0 = self.unshift(lr, batch)
        out = {f"gap_{s.name}": s.gap(lr0, b0) for s in self.surfaces}
        out["gap_mean"] = float(np.mean(list(out.values())))
        return out

    def truths(self) -> list[tuple[float, float]]:
        """Each surface's argmin on this landscape (moved by the offset)."""
        fu, fv = math.exp(self.offset[0]), math.exp(self.offset[1])
        return [(s.argmin_lr * fu, s.argmin_batch * fv) for s in self.surfaces]


@dataclass(frozen=True)
class _Recommendation:
    lr: float
    batch: float
    lr_68: tuple[float, float] | None = None
    lr_95: tuple[float, float] | None = None
    batch_68: tuple[float, float] | None = None
    batch_95: tuple[float, float] | None = None


def _trial_points(trials: Sequence[Any]) -> list[tuple[float, float]]:
    """Where each trial ran: the grid cell the replay ran (its ``steplaw.ran_with``), which is
    where the loss it reported was measured; a best trial is recommended there."""
    return [ran_with(t, LR_PARAM, BATCH_PARAM) for t in trials]


def _best_observed(land: _Landscape, points: Sequence[tuple[float, float]], k: int) -> int:
    """Index of the best trial among the first ``k`` (the first one on ties)."""
    losses = [land.setting.loss[land.cell(*p)] for p in points[:k]]
    return int(np.argmin(losses))


def _refined_at(
    study: Any, sampler: Any, budgets: Sequence[int], seq_len: int
) -> dict[int, _Recommendation]:
    """The refined optimum of a study holding only its first k trials, per k."""
    import optuna

    from steplaw_opt.samplers import refined_optimum

    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    out = {}
    for k in budgets:
        partial = optuna.create_study()
        for key, value in study.user_attrs.items():
            partial.set_user_attr(key, value)
        partial.add_trials(trials[:k])
        opt = refined_optimum(partial, sampler=sampler)
        lo68, hi68 = opt.batch_tokens_interval_68
        lo95, hi95 = opt.batch_tokens_interval_95
        out[k] = _Recommendation(
            float(opt.lr),
            float(opt.batch_sequences),
            opt.lr_interval_68,
            opt.lr_interval_95,
            (lo68 / seq_len, hi68 / seq_len),  # tokens → sequences
            (lo95 / seq_len, hi95 / seq_len),
        )
    return out


def _coverage(rec: _Recommendation, truths: Sequence[tuple[float, float]]) -> dict[str, float]:
    """Fraction of the surfaces' argmins inside each interval, and the intervals' ln-widths."""
    if rec.lr_68 is None:
        return {}
    out: dict[str, float] = {}
    intervals = {
        "68_lr": (rec.lr_68, 0),
        "95_lr": (rec.lr_95, 0),
        "68_batch": (rec.batch_68, 1),
        "95_batch": (rec.batch_95, 1),
    }
    for name, (interval, axis) in intervals.items():
        lo, hi = interval  # type: ignore[misc]
        inside = [lo <= t[axis] <= hi for t in truths]
        out[f"cover{name}"] = float(np.mean(inside))
        out[f"width{name}"] = float(math.log(hi / lo))
    return out


def _rows(
    land: _Landscape,
    method: str,
    prior: str,
    seed: int,
    points: Sequence[tuple[float, float]],
    budgets: Sequence[int],
    recommended: dict[int, _Recommendation] | None = None,
) -> list[dict[str, Any]]:
    """One row per budget: the recommendation's scores (``recommended``, or else the best
    observed trial), the best observed trial's raw gap, distinct cells."""
    s = land.setting
    cells = [land.cell(*p) for p in points]
    truths = land.truths()
    rows = []
    for k in budgets:
        head = cells[:k]
        best = _best_observed(land, points, k) if points else None
        # the recommendation: the method's own (refined optimum, the law's point), or else its
        # best observed trial
        rec = recommended[k] if recommended is not None else _Recommendation(*points[best])  # type: ignore[index]
        rec_cell = land.cell(rec.lr, rec.batch)
        oos = rec_cell not in head
        raw_best = s.loss[cells[best]] if best is not None else s.loss[rec_cell]
        rows.append(
            {
                "shift": land.shift,
                "prior": prior,
                "method": method,
                "setting": land.index,
                "N": s.N,
                "D": s.D,
                "seed": seed,
                "budget": k,
                "lr": rec.lr,
                "batch": rec.batch,
                **land.gaps(rec.lr, rec.batch),
                "gap_oos": s.gap(float(s.loss[rec_cell])) if oos else math.nan,
                "oos": bool(oos),
                "gap_raw": s.gap(float(raw_best)),
                "n_distinct": int(np.unique(head).size),
                **_coverage(rec, truths),
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
    with _torch_threads(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BoTorch's advice on input scaling: inputs are scaled
        surfaces = {i: noise_free_surfaces(settings[i], config.surfaces) for i in chosen}
    shifts = [Shift.parse(t) for t in config.shifts]
    offsets = {sh.label: sh.offsets(settings) for sh in shifts}

    def landscape(i: int, shift: Shift) -> _Landscape:
        offset = tuple(float(x) for x in offsets[shift.label][i])
        objective = ShiftedReplayObjective(
            settings[i],
            offset,  # type: ignore[arg-type]
            lr_param=LR_PARAM,
            batch_param=BATCH_PARAM,
            lr_bounds=lr_bounds,
            batch_bounds=batch_bounds,
        )
        return _Landscape(i, settings[i], shift.label, offset, surfaces[i], objective)  # type: ignore[arg-type]

    stock = [m for m in methods if m in STOCK]
    prior_methods = [m for m in methods if m in ("walk", *REFINED)]
    per_landscape = (
        len(chosen) * config.seeds * (len(stock) + len(config.priors) * len(prior_methods))
    )
    total = len(shifts) * per_landscape
    done = 0
    rows: list[dict[str, Any]] = []

    def tick(label: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, label)

    with quiet_optuna(), _torch_threads(1):
        for shift in shifts:
            for i in chosen:
                land = landscape(i, shift)
                rows += _landscape_rows(land, laws, methods, stock, prior_methods, config, tick)
    runs = pd.DataFrame(rows)
    info = [_setting_info(settings[i], surfaces[i], i) for i in chosen]
    return BenchResult(config, runs, info, notes, time.perf_counter() - start)


def _landscape_rows(
    land: _Landscape,
    laws: dict[str, dict[int, Law]],
    methods: Sequence[str],
    stock: Sequence[str],
    prior_methods: Sequence[str],
    config: BenchConfig,
    tick: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Every method's rows on one landscape."""
    i, setting = land.index, land.setting
    budgets, n_trials = config.budgets, max(config.budgets)
    label = f"{land.shift} {setting}"
    rows: list[dict[str, Any]] = []
    for prior in config.priors:
        if "law" in methods:
            p = laws[prior][i].predict(setting.scale)
            if p.lr is None or p.batch_sequences is None:
                raise SteplawInputError(
                    f"law {laws[prior][i].name!r} predicts nothing at {setting}"
                )
            law_rec = {0: _Recommendation(float(p.lr), float(p.batch_sequences))}
            for seed in range(config.seeds):
                rows += _rows(land, "law", prior, seed, [], [0], law_rec)
    for seed in range(config.seeds):
        sseed = sampler_seed(seed, i)
        for method in stock:
            study = _run_study(_stock_sampler(method, sseed), land.objective, n_trials)
            points = _trial_points(study.trials)
            for prior in config.priors:
                rows += _rows(land, method, prior, seed, points, budgets)
            tick(f"{label} seed {seed} {method}")
        for prior in config.priors:
            law = laws[prior][i]
            if "walk" in prior_methods:
                # The walk moves on the grid's cells, placed on this landscape.
                p = law.predict(setting.scale)
                start = land.cell(float(p.lr or 0), float(p.batch_sequences or 0))
                fu, fv = math.exp(land.offset[0]), math.exp(land.offset[1])
                trace = walk_trace(setting, start, n_trials)
                points = [(float(setting.lr[c]) * fu, float(setting.batch[c]) * fv) for c in trace]
                rows += _rows(land, "walk", prior, seed, points, budgets)
                tick(f"{label} seed {seed} walk ({prior})")
            for method in (m for m in prior_methods if m in REFINED):
                sampler = _project_sampler(method, setting, law, config, sseed)
                study = _run_study(sampler, land.objective, n_trials)
                points = _trial_points(study.trials)
                refined = _refined_at(study, sampler, budgets, config.seq_len)
                rows += _rows(land, method, prior, seed, points, budgets, refined)
                tick(f"{label} seed {seed} {method} ({prior})")
    return rows


def _project_sampler(
    method: str, setting: GridSetting, law: Law, config: BenchConfig, seed: int
) -> Any:
    if method == "plateau":
        return make_plateau_sampler(setting, law, config, seed)
    if method == "plateau-ts":
        return make_plateau_sampler(setting, law, config, seed, acquisition="thompson")
    return make_botorch_sampler(setting, law, config, seed)


def _setting_info(setting: GridSetting, surfaces: Sequence[NoiseFreeSurface], i: int) -> dict:
    best = setting.best_index
    return {
        "setting": i,
        "N": setting.N,
        "D": setting.D,
        "points": int(setting.loss.size),
        "min_loss": setting.min_loss,
        "best_lr": float(setting.lr[best]),
        "best_batch": float(setting.batch[best]),
        "surfaces": {
            s.name: {
                "argmin_lr": s.argmin_lr,
                "argmin_batch": s.argmin_batch,
                "min_loss": s.min_value,
                "cells": int(s.window.sum()),
                "residual_rms_near_pct": 100 * s.residual_rms,
            }
            for s in surfaces
        },
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
    """Median CPU time of one suggestion (``study.ask()`` and the two ``suggest_float`` calls,
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

            def make(method: str, seed: int) -> Any:
                if method == "plateau":
                    return make_plateau_sampler(setting, law, config, seed)
                if method == "botorch":
                    return make_botorch_sampler(setting, law, config, seed)
                return _stock_sampler(method, seed)

            counts = {
                m: gp_large_repeats if m in ("gp", "botorch") and h > gp_large_history else repeats
                for m in methods
            }
            times: dict[str, list[float]] = {m: [] for m in methods}
            # Interleaved, one suggestion of each method per round: on a shared machine the
            # load changes by the second, and every method then sees the same load. Round 0
            # is the untimed warm-up (imports, compilation). The GP samplers get rounds of
            # their own: a GP fit just before evicts the caches and slowed the next suggestion
            # of a cheap sampler (PlateauSampler ÷ TPE 2.18× after a GP suggestion, 1.76× in
            # rounds of the two alone), which no study of one sampler ever sees.
            for group in (
                [m for m in methods if m not in ("gp", "botorch")],
                [m for m in methods if m in ("gp", "botorch")],
            ):
                for r in range(max((counts[m] for m in group), default=-1) + 1):
                    for method in group:
                        if r <= counts[method]:
                            elapsed = _time_one(make(method, r), frozen, objective)
                            if r > 0:
                                times[method].append(elapsed)
            for method in methods:
                rows.append(
                    {
                        "method": method,
                        "history": h,
                        "median_ms": 1000 * float(np.median(times[method])),
                        "repeats": counts[method],
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
    # This thread's CPU time, not wall time: on a shared machine the wall clock also counts the
    # time spent waiting for a core, and the process's CPU time counts other threads spinning
    # idle after a GP fit (torch runs on one thread here, the calling one).
    t0 = time.thread_time()
    suggest()
    return time.thread_time() - t0


# --------------------------------------------------------------------------------- rendering
def _pct(x: float) -> str:
    if not math.isfinite(x):
        return "—"
    if x == 0:
        return "0"
    return f"{x:.2g}" if abs(x) < 0.01 else f"{x:.3f}" if abs(x) < 1 else f"{x:.2f}"


PRIOR_LABELS = {"published": "published law", "loo": "leave-one-setting-out refit"}


def _grid_table(
    summary: pd.DataFrame,
    budgets: Sequence[int],
    title: str,
    cell: Callable[[pd.Series], str],
    methods: Sequence[str] = ROW_ORDER,
    with_law: bool = True,
) -> Any:
    """Rows: methods; columns: the law (k = 0) and each budget."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("method")
    has_law = with_law and (summary["method"] == "law").any()
    cols = ([0] if has_law else []) + list(budgets)
    for k in cols:
        table.add_column("law (k=0)" if k == 0 else f"k={k}", justify="right")
    for method in methods:
        rows = summary[summary["method"] == method].set_index("budget")
        if rows.empty:
            continue
        table.add_row(method, *[cell(rows.loc[k]) if k in rows.index else "—" for k in cols])
    return table


def print_result(console: Any, result: BenchResult) -> None:
    """The rich tables, per landscape and prior: the recommendation on the noise-free surfaces
    (mean, then each), out of sample, best observed on the raw grid, calibration, distinct
    cells."""
    summary = result.summary()
    cfg = result.config
    head = f"{len(result.settings)} settings × {cfg.seeds} seed(s)"
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    if summary.empty:
        console.print("no runs")
        return
    names = list(cfg.surfaces)
    for shift in cfg.shifts:
        for prior in cfg.priors:
            sub = summary[(summary["shift"] == shift) & (summary["prior"] == prior)]
            where = f"shift {shift}, {PRIOR_LABELS[prior]}"
            console.print(
                _grid_table(
                    sub,
                    cfg.budgets,
                    f"{where} — the RECOMMENDATION's gap, mean of {len(names)} noise-free "
                    f"surfaces, mean % (median %), {head}",
                    lambda r: f"{_pct(r['mean_mean'])} ({_pct(r['median_mean'])})",
                )
            )
            console.print(
                _grid_table(
                    sub,
                    cfg.budgets,
                    f"{where} — each surface ({' / '.join(names)}), mean %",
                    lambda r: " / ".join(_pct(r[f"mean_{n}"]) for n in names),
                )
            )
            console.print(
                _grid_table(
                    sub,
                    cfg.budgets,
                    f"{where} — out of sample: raw loss of the recommended cell when the "
                    "method never ran it, mean % (how many qualified)",
                    lambda r: f"{_pct(r['mean_oos'])} ({int(r['oos_n'])}/{int(r['runs'])})",
                )
            )
            console.print(
                _grid_table(
                    sub,
                    cfg.budgets,
                    f"{where} — best observed trial on the raw grid, mean % (partly luck: one "
                    "run per cell)",
                    lambda r: _pct(r["mean_raw"]),
                )
            )
            refined = [m for m in REFINED if (sub["method"] == m).any()]
            if refined and "cover95_lr" in sub.columns:
                console.print(
                    _grid_table(
                        sub,
                        cfg.budgets,
                        f"{where} — calibration of the refined optimum: share of surface "
                        "argmins inside the 68 % | 95 % intervals, lr/batch; median 95 % "
                        "ln-width lr/batch",
                        lambda r: (
                            f"{r['cover68_lr']:.2f}/{r['cover68_batch']:.2f} | "
                            f"{r['cover95_lr']:.2f}/{r['cover95_batch']:.2f}; "
                            f"{r['width95_lr']:.2f}/{r['width95_batch']:.2f}"
                        ),
                        methods=refined,
                        with_law=False,
                    )
                )
            console.print(
                _grid_table(
                    sub,
                    cfg.budgets,
                    f"{where} — distinct grid cells evaluated (mean)",
                    lambda r: f"{r['n_distinct']:.1f}",
                    with_law=False,
                )
            )
    fits = ", ".join(
        f"{n} {np.mean([s['surfaces'][n]['residual_rms_near_pct'] for s in result.settings]):.3f} %"
        for n in names
    )
    console.print(
        "noise-free surfaces (docs/bench.md): RMS residual of the cells within 0.5 % of each "
        f"minimum — {fits} (mean over settings; the run-to-run noise is about 0.07 %)"
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
    for line in overhead_ratios(frame):
        console.print(line)


def overhead_ratios(frame: pd.DataFrame, baseline: str = "tpe") -> list[str]:
    """One line per project sampler and history: its time per suggestion ÷ ``baseline``'s, in
    the same run (the target: PlateauSampler within 2× TPE at 20 finished trials)."""
    lines = []
    for method in ("plateau", "botorch"):
        for h in sorted(frame["history"].unique()):
            mine = frame[(frame["method"] == method) & (frame["history"] == h)]
            base = frame[(frame["method"] == baseline) & (frame["history"] == h)]
            if mine.empty or base.empty:
                continue
            ratio = float(mine["median_ms"].iloc[0]) / float(base["median_ms"].iloc[0])
            lines.append(f"{method} ÷ {baseline} at {h} trials: {ratio:.2f}×")
    return lines


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


def parse_shifts(text: str) -> tuple[str, ...]:
    """``--shift``: ``all`` (every family at its default size) or a comma list of shifts."""
    return FULL_SHIFTS if text == "all" else parse_names(text, "--shift")


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
    full: bool = False,
    shifts: str | None = None,
) -> BenchConfig:
    """The :class:`BenchConfig` of ``steplaw-opt bench``: ``--quick`` or ``--full`` sets the
    defaults of the options not given."""
    if grid_csv is not None and not Path(grid_csv).is_file():
        raise SteplawInputError(f"grid file not found: {grid_csv!r}")
    priors = {"published": ("published",), "loo": ("loo",), "both": PRIORS}
    if prior not in priors:
        raise SteplawInputError(f"--prior must be published, loo or both, got {prior!r}")
    if quick and full:
        raise SteplawInputError("--quick and --full exclude each other")
    base = BenchConfig.quick() if quick else BenchConfig.full() if full else BenchConfig()
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
    if shifts is not None:
        overrides["shifts"] = parse_shifts(shifts)
    return replace(base, **overrides).checked()
