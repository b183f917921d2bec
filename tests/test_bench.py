"""The replay benchmark: its figures on the released grids, its invariants, and its CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from steplaw_opt import SteplawInputError
from steplaw_opt.bench import BenchConfig, GridSetting, load_grids, run_bench
from steplaw_opt.bench import _runner as bench
from steplaw_opt.bench._surface import smooth_surface, walk_trace
from steplaw_opt.priors import load_law
from tests.conftest import run_cli

# End to end: the CLI in subprocesses, real files and servers (`-m 'not slow'` skips them).
pytestmark = pytest.mark.slow

FAST = ("cubic-3%", "quadratic-1.5%")  # the polynomial surfaces (no GP fit) for quick runs


@pytest.fixture(scope="module")
def grid_csv(steplaw_data: Path) -> Path:
    return steplaw_data / "dense_lr_bs_loss.csv"


@pytest.fixture(scope="module")
def settings(grid_csv: Path) -> list[GridSetting]:
    return load_grids(grid_csv)


@pytest.fixture(scope="module")
def law_runs(grid_csv: Path) -> pd.DataFrame:
    config = BenchConfig(
        grid_path=grid_csv, methods=("law",), seeds=1, shifts=("none",), surfaces=FAST
    )
    return run_bench(config).runs


@pytest.fixture(scope="module")
def subset(grid_csv: Path) -> bench.BenchResult:
    config = BenchConfig(
        grid_path=grid_csv,
        methods=("law", "random", "walk"),
        seeds=2,
        settings=(0, 5, 10, 16),
        shifts=("none",),
        surfaces=FAST,
    )
    return run_bench(config)


# --------------------------------------------------------------------------------- the law alone
def test_published_law_alone_matches_the_data_readme(law_runs: pd.DataFrame) -> None:
    gaps = law_runs.loc[law_runs["prior"] == "published", "gap_raw"] * 100
    assert len(gaps) == 17
    assert gaps.mean() == pytest.approx(0.096, abs=0.001)
    assert gaps.median() == pytest.approx(0.067, abs=0.001)
    assert gaps.max() == pytest.approx(0.31, abs=0.005)


def test_loo_refit_alone_matches_the_data_readme(law_runs: pd.DataFrame) -> None:
    gaps = law_runs.loc[law_runs["prior"] == "loo", "gap_raw"] * 100
    assert len(gaps) == 17
    assert gaps.mean() == pytest.approx(0.10, abs=0.01)
    assert gaps.median() == pytest.approx(0.08, abs=0.01)


def test_loo_prior_differs_per_setting_and_excludes_it(grid_csv, settings) -> None:
    config = BenchConfig(grid_path=grid_csv, priors=("loo",)).checked()
    laws = bench._priors(config, settings, [0, 16])["loo"]
    assert laws[0].lr_formula.terms != laws[16].lr_formula.terms
    # Setting 0 is the only one at D = 4e9: without it, the refit's D range starts higher.
    assert settings[0].D == 4e9 and laws[0].validity["D"][0] > 4e9
    assert laws[16].validity["D"][0] == 4e9


# --------------------------------------------------------------------------------- run invariants
def test_rows_have_the_expected_shape(subset: bench.BenchResult) -> None:
    runs = subset.runs
    for method in ("random", "walk"):
        rows = runs[runs["method"] == method]
        assert len(rows) == 2 * 4 * 2 * 5  # priors × settings × seeds × budgets
        assert sorted(rows["budget"].unique()) == [1, 3, 5, 10, 20]
    law = runs[runs["method"] == "law"]
    assert set(law["budget"]) == {0} and len(law) == 2 * 4 * 2
    # a surface's minimum is searched on a lattice: a point may beat it by a hair
    assert (runs["gap_raw"] >= 0).all() and (runs["gap_mean"] >= -1e-6).all()
    assert np.allclose(runs["gap_mean"], runs[[f"gap_{n}" for n in FAST]].mean(axis=1))
    assert set(runs["shift"]) == {"none"}
    summary = subset.summary()
    assert {"mean_raw", "mean_mean", "median_mean", "mean_oos", "oos_n", "n_distinct"} <= set(
        summary.columns
    )
    assert list(summary["prior"].unique()) == ["published", "loo"]


def test_best_observed_gaps_never_increase_with_k(subset: bench.BenchResult) -> None:
    runs = subset.runs[subset.runs["method"].isin(["random", "walk"])]
    for _, g in runs.groupby(["prior", "method", "setting", "seed"]):
        gaps = g.sort_values("budget")["gap_raw"].to_numpy()
        assert np.all(np.diff(gaps) <= 1e-15)
        distinct = g.sort_values("budget")["n_distinct"].to_numpy()
        assert np.all(np.diff(distinct) >= 0) and np.all(distinct <= g["budget"].sort_values())


def test_walk_starts_at_the_law_and_never_repeats(subset: bench.BenchResult) -> None:
    runs = subset.runs
    walk = runs[runs["method"] == "walk"]
    assert (walk["n_distinct"] == walk["budget"]).all()
    law = runs[runs["method"] == "law"].set_index(["prior", "setting", "seed"])["gap_raw"]
    first = walk[walk["budget"] == 1].set_index(["prior", "setting", "seed"])["gap_raw"]
    pd.testing.assert_series_equal(first.sort_index(), law.sort_index())
    assert walk.groupby("budget")["gap_raw"].mean().loc[20] < 0.0005


def test_stock_samplers_ignore_the_prior_and_are_reproducible(grid_csv, subset) -> None:
    runs = subset.runs
    rnd = runs[runs["method"] == "random"]
    cols = ["setting", "seed", "budget", "gap_raw"]
    pub = rnd[rnd["prior"] == "published"][cols].reset_index(drop=True)
    loo = rnd[rnd["prior"] == "loo"][cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(pub, loo)
    # A subset run reproduces the same rows (seeds depend on the setting's index in the data).
    again = run_bench(
        BenchConfig(
            grid_path=grid_csv,
            methods=("random",),
            seeds=2,
            settings=(5,),
            shifts=("none",),
            surfaces=FAST,
        )
    ).runs
    ref = rnd[rnd["setting"] == 5].reset_index(drop=True)
    pd.testing.assert_frame_equal(again, ref)
    # More random trials than grid points per setting is still well defined.
    assert rnd.groupby("budget")["gap_raw"].mean().is_monotonic_decreasing


def test_plateau_rows(grid_csv) -> None:
    config = BenchConfig(
        grid_path=grid_csv,
        methods=("plateau",),
        seeds=1,
        settings=(3,),
        budgets=(1, 5),
        shifts=("none", "const:0.5"),
        surfaces=FAST,
    )
    runs = run_bench(config).runs
    assert set(runs["method"]) == {"plateau"}
    assert len(runs) == 2 * 2 * 2  # shifts × priors × budgets
    # The refined optimum carries intervals: coverage is a share of the surfaces, widths > 0.
    assert runs["cover95_lr"].between(0, 1).all() and (runs["width95_lr"] > 0).all()
    # With one trial the recommendation is the law's point, at which that trial ran.
    first = runs[runs["budget"] == 1]
    assert (first["n_distinct"] == 1).all() and not first["oos"].any()


def test_the_bench_runs_the_samplers_as_shipped(settings) -> None:
    # The bench measures what a user gets: PlateauSampler's own default acquisition (an
    # explicit "ei" here once made every figure describe a sampler nobody ran), Thompson
    # sampling only for plateau-ts.
    import inspect

    from steplaw_opt.samplers import PlateauSampler

    default = inspect.signature(PlateauSampler).parameters["acquisition"].default
    law = bench.load_law("step-law")
    config = BenchConfig()
    assert bench._project_sampler("plateau", settings[0], law, config, 0)._acquisition == default
    ts = bench._project_sampler("plateau-ts", settings[0], law, config, 0)
    assert ts._acquisition == "thompson"


# --------------------------------------------------------------------------------- smoothed surface
def test_smoothed_surface_fits_the_released_grids(settings: list[GridSetting]) -> None:
    rms_near = []
    for s in settings:
        surf = smooth_surface(s)
        assert surf.fitted.sum() >= 30
        rms_near.append(surf.rms_near)
        assert surf.rms_near < 0.0015  # near the minimum: within 3× the ~0.05 % noise
        assert surf.rms_fitted < 0.004
        # Outside the fitted region the surface is the measured loss.
        assert np.array_equal(surf.values[~surf.fitted], s.loss[~surf.fitted])
        # The smoothed argmin is a good point on the raw grid too.
        assert s.gap(float(s.loss[int(np.argmin(surf.values))])) < 0.004
    assert np.mean(rms_near) < 0.001


def test_smoothed_surface_reproduces_a_smooth_bowl() -> None:
    lr = np.repeat(np.exp(np.linspace(-8, -4, 9)), 8)
    batch = np.tile(np.exp(np.linspace(3, 7, 8)), 9)
    x, y = np.log(lr) + 6, np.log(batch) - 5
    loss = 2.0 * np.exp(0.01 * (x**2 + 0.5 * x * y + y**2) + 0.002 * x**3)
    s = GridSetting(key=(1.0,), N=1e8, D=1e9, lr=lr, batch=batch, loss=loss)
    surf = smooth_surface(s)
    assert surf.rms_fitted < 1e-9
    assert int(np.argmin(surf.values)) == int(np.argmin(loss))


def test_walk_trace_visits_neighbours(settings: list[GridSetting]) -> None:
    s = settings[0]
    trace = walk_trace(s, 0, 10)
    assert trace[0] == 0 and len(set(trace.tolist())) == 10
    step = np.hypot(np.diff(np.log(s.lr[trace])), np.diff(np.log(s.batch[trace])))
    assert step.max() < 2.0  # neighbours, not jumps across the grid
    assert len(walk_trace(s, 0, 10_000)) == s.loss.size


# --------------------------------------------------------------------------------- overhead
def test_overhead_measures_a_suggestion(grid_csv) -> None:
    frame, _ = bench.measure_overhead(
        BenchConfig(grid_path=grid_csv), methods=("tpe",), history=(5,), repeats=3
    )
    assert list(frame["method"]) == ["tpe"] and frame["median_ms"].iloc[0] > 0
    assert frame["repeats"].iloc[0] == 3


def test_overhead_ratio_lines() -> None:
    frame = pd.DataFrame(
        {
            "method": ["plateau", "tpe", "plateau", "tpe", "botorch"],
            "history": [20, 20, 50, 50, 50],
            "median_ms": [3.0, 2.0, 9.0, 3.0, 30.0],
            "repeats": [5] * 5,
        }
    )
    assert bench.overhead_ratios(frame) == [
        "plateau ÷ tpe at 20 trials: 1.50×",
        "plateau ÷ tpe at 50 trials: 3.00×",
        "botorch ÷ tpe at 50 trials: 10.00×",
    ]


# --------------------------------------------------------------------------------- config and CLI
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"budgets": (0, 3)}, "budgets"),
        ({"methods": ("law", "smac")}, "'smac'"),
        ({"priors": ("uniform",)}, "'uniform'"),
        ({"seeds": 0}, "seeds"),
    ],
)
def test_bad_config(kwargs: dict, message: str) -> None:
    with pytest.raises(SteplawInputError, match=message):
        BenchConfig(**kwargs).checked()


def test_cli_quick_json(grid_csv) -> None:
    result = run_cli("bench", str(grid_csv), "--quick", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert len(doc["settings"]) == 5 and doc["config"]["budgets"] == [1, 3, 5]
    methods = {row["method"] for row in doc["summary"]}
    assert {"law", "random", "walk"} <= methods
    law = [r for r in doc["summary"] if r["method"] == "law" and r["prior"] == "published"]
    assert len(law) == 1 and 0 <= law[0]["mean_raw"] < 0.5
    assert len(doc["runs"]) > 0


def test_cli_tables(grid_csv) -> None:
    result = run_cli(
        "bench", str(grid_csv), "--methods", "law,walk", "--budgets", "1,2", "--prior", "loo"
    )
    assert result.returncode == 0, result.stderr
    assert "leave-one-setting-out" in result.stdout and "walk" in result.stdout
    assert "noise-free surfaces" in result.stdout and "published law" not in result.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["no/such/grid.csv"], "no/such/grid.csv"),
        (["--budgets", "0,x"], "'0'"),
        (["--budgets", "1,x"], "'x'"),
        (["--methods", "law,smac"], "'smac'"),
        (["--prior", "flat"], "'flat'"),
        (["--group-by", "N,nope"], "nope"),
    ],
)
def test_cli_bad_input_is_one_line(grid_csv, args: list[str], needle: str) -> None:
    if args[0].endswith(".csv"):
        result = run_cli("bench", *args)
    else:
        result = run_cli("bench", str(grid_csv), *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_cli_missing_column(tmp_path: Path, grid_csv: Path) -> None:
    frame = pd.read_csv(grid_csv).drop(columns=["smooth loss"])
    path = tmp_path / "grid.csv"
    frame.to_csv(path, index=False)
    result = run_cli("bench", str(path), "--quick")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "smooth loss" in lines[0]


def test_published_law_point_is_what_the_bench_scores(settings) -> None:
    law = load_law("step-law")
    s = settings[0]
    i = bench.law_index(s, law)
    p = law.predict(s.scale)
    assert abs(np.log(s.lr[i] / p.lr)) <= np.log(2) / 4 + 1e-9
