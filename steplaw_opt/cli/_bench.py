"""``steplaw-opt bench``: the replay benchmark on the released grids, and its proxy-run mode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from steplaw_opt.cli._common import console as _console
from steplaw_opt.errors import SteplawInputError


def bench(
    grid_csv: Annotated[
        str | None,
        typer.Argument(help="Released grid CSV (default: ../shared/data/steplaw beside the repo)."),
    ] = None,
    group_by: Annotated[
        str, typer.Option("--group-by", help="Columns that define a setting.")
    ] = "N,D",
    budgets: Annotated[
        str | None, typer.Option("--budgets", help="Trial budgets k [default: 1,3,5,10,20].")
    ] = None,
    seeds: Annotated[int | None, typer.Option("--seeds", help="Seeds per setting [3].")] = None,
    methods: Annotated[
        str | None,
        typer.Option(
            "--methods",
            help="Comma list of law, random, tpe, gp, cmaes, walk, plateau, plateau-ts, botorch "
            "(default: law, random, tpe, cmaes, walk, plateau; --full: all).",
        ),
    ] = None,
    shift: Annotated[
        str | None,
        typer.Option(
            "--shift",
            help="Landscapes, comma list: none, const:A, drift-D:A, drift-N:A, drift-ND:A (A in "
            "ln units, |A| <= 0.7), or all (default: none,const:0.5; --full: all).",
        ),
    ] = None,
    full: Annotated[
        bool,
        typer.Option("--full", help="Every method (GP, BoTorch, Thompson) on every shift family."),
    ] = False,
    report: Annotated[
        str | None,
        typer.Option(
            "--report",
            help="Also write a markdown summary and PNG budget curves to this folder.",
        ),
    ] = None,
    prior: Annotated[
        str, typer.Option("--prior", help="published, loo (leave-one-setting-out) or both.")
    ] = "both",
    quick: Annotated[
        bool, typer.Option("--quick", help="CI run: 5 settings, 1 seed, k = 1,3,5, 4 methods.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    overhead: Annotated[
        bool,
        typer.Option(
            "--overhead",
            help="Also time one suggestion (plateau, botorch, tpe, gp; torch on 1 thread).",
        ),
    ] = False,
    startup: Annotated[
        bool,
        typer.Option(
            "--startup",
            help="Only time the cold start of `steplaw-opt predict` against importing typer, "
            "rich and numpy (median of --repeat fresh runs each, interleaved) and print the ratio.",
        ),
    ] = False,
    repeat: Annotated[
        int, typer.Option("--repeat", help="With --startup: fresh runs of each command.")
    ] = 15,
    target_runs: Annotated[
        str,
        typer.Option(
            "--target-runs",
            help="With --proxy: K, the final runs at the target after the proxies (comma list; "
            "the best is kept). 0 scores the refined optimum alone.",
        ),
    ] = "1,2",
    proxy_targets: Annotated[
        str,
        typer.Option(
            "--proxy-targets",
            help="With --proxy: 'largest' (the largest D of each N) or 'all' (every D with a "
            "smaller one at its N).",
        ),
    ] = "largest",
    proxy: Annotated[
        bool,
        typer.Option(
            "--proxy",
            help="Proxy-run mode: proxy runs at cheaper settings, the refined optimum scored at "
            "the target vs proxy compute (budgets in target-run equivalents).",
        ),
    ] = False,
    proxy_scales: Annotated[
        str,
        typer.Option(
            "--proxy-scales",
            help="With --proxy: 'same-n' (smaller D at the target's N) or 'cheaper' (every "
            "cheaper setting of any N and D: a ladder across model size).",
        ),
    ] = "same-n",
    max_proxy_cost: Annotated[
        float,
        typer.Option(
            "--max-proxy-cost",
            help="With --proxy-scales cheaper: each proxy setting's N·D at most this fraction of "
            "the target's (0.0625: 1/16).",
        ),
    ] = 1.0,
    drift: Annotated[
        str,
        typer.Option(
            "--drift",
            help="With --proxy: the sampler's drift terms off, on, or both side by side.",
        ),
    ] = "off",
) -> None:
    """Replay benchmark on the released grids: gap to each setting's best loss after k trials."""
    if startup:
        _bench_startup(repeat, as_json)
        return
    if proxy:
        _bench_proxy(
            grid_csv,
            budgets,
            seeds,
            prior,
            as_json,
            target_runs,
            proxy_targets,
            shift=shift,
            proxy_scales=proxy_scales,
            max_proxy_cost=max_proxy_cost,
            drift=drift,
        )
        return
    from steplaw_opt.bench import _runner as bench_mod

    config = bench_mod.cli_config(
        grid_csv,
        group_by=group_by,
        budgets=budgets,
        seeds=seeds,
        methods=methods,
        prior=prior,
        quick=quick,
        full=full,
        shifts=shift,
    )
    if report is not None:
        from steplaw_opt.bench._report import check_report_dir

        check_report_dir(report)
    from rich.console import Console
    from rich.progress import Progress

    err = Console(stderr=True)
    with Progress(console=err, transient=True, disable=as_json) as bar:
        task = bar.add_task("bench", total=None)

        def progress(done: int, total: int, label: str) -> None:
            bar.update(task, completed=done, total=total, description=label)

        result = bench_mod.run_bench(config, progress=progress)
    over = bench_mod.measure_overhead(config) if overhead else None
    if report is not None:
        from steplaw_opt.bench._report import write_report

        written = write_report(report, result, over)
        Console(stderr=True).print(f"report written to {written}", highlight=False)
    if as_json:
        doc = result.to_dict()
        if over is not None:
            doc["overhead"] = {"rows": over[0].to_dict(orient="records"), "notes": over[1]}
        print(json.dumps(doc, indent=2, default=float))
        return
    console = _console()
    if not console.is_terminal:  # piped: wide enough that the tables do not wrap
        console.width = max(console.width, 150)
    bench_mod.print_result(console, result)
    if over is not None:
        bench_mod.print_overhead(console, *over)


def _bench_startup(repeat: int, as_json: bool) -> None:
    from steplaw_opt.bench import _startup

    if repeat < 1:
        raise SteplawInputError(f"--repeat must be >= 1, got {repeat}")
    result = _startup.measure_startup(repeat)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    console = _console()
    for line in result.lines():
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def _bench_proxy(
    grid_csv: str | None,
    budgets: str | None,
    seeds: int | None,
    prior: str,
    as_json: bool,
    target_runs: str = "1,2",
    targets: str = "largest",
    *,
    shift: str | None = None,
    proxy_scales: str = "same-n",
    max_proxy_cost: float = 1.0,
    drift: str = "off",
) -> None:
    import time

    from steplaw_opt.bench import _proxy as proxy_mod
    from steplaw_opt.bench._runner import parse_shifts

    try:
        budget_values = tuple(float(b) for b in (budgets or "0.25,0.5,1").split(","))
    except ValueError:
        raise SteplawInputError(
            f"--budgets must be comma-separated numbers, got {budgets!r}"
        ) from None
    if any(not b > 0 for b in budget_values):
        raise SteplawInputError(f"--budgets must be positive, got {budgets!r}")
    if prior not in ("published", "loo", "both"):
        raise SteplawInputError(f"--prior must be published, loo or both, got {prior!r}")
    if grid_csv is not None and not Path(grid_csv).exists():
        raise SteplawInputError(f"grid file not found: {grid_csv!r}")
    try:
        k_values = tuple(int(k) for k in target_runs.split(","))
    except ValueError:
        raise SteplawInputError(
            f"--target-runs must be comma-separated whole numbers, got {target_runs!r}"
        ) from None
    if any(k < 0 for k in k_values):
        raise SteplawInputError(f"--target-runs must be >= 0, got {target_runs!r}")
    if targets not in ("largest", "all"):
        raise SteplawInputError(f"--proxy-targets must be largest or all, got {targets!r}")
    if proxy_scales not in proxy_mod.PROXY_SCALES:
        raise SteplawInputError(f"--proxy-scales must be same-n or cheaper, got {proxy_scales!r}")
    if not 0 < max_proxy_cost <= 1:
        raise SteplawInputError(f"--max-proxy-cost must be in (0, 1], got {max_proxy_cost!r}")
    drift_values = {"off": (False,), "on": (True,), "both": (False, True)}
    if drift not in drift_values:
        raise SteplawInputError(f"--drift must be off, on or both, got {drift!r}")
    shifts = ("none",) if shift is None else parse_shifts(shift)
    start = time.perf_counter()
    config = proxy_mod.ProxyBenchConfig(
        shifts=shifts,
        drift=drift_values[drift],
        proxy_scales=proxy_scales,
        max_proxy_cost=max_proxy_cost,
        targets=targets,
        target_runs=k_values,
        grid_path=grid_csv,
        budgets=budget_values,
        seeds=seeds or 3,
        priors=("published", "loo") if prior == "both" else (prior,),
    )
    runs = proxy_mod.run_proxy_bench(config)
    seconds = time.perf_counter() - start
    if as_json:
        summary = proxy_mod.summarise(runs)
        doc = {
            "summary": summary.to_dict(orient="records"),
            "runs": runs.to_dict("records"),
            "seconds": seconds,
        }
        print(json.dumps(doc, indent=2, default=float))
        return
    console = _console()
    if not console.is_terminal:
        console.width = max(console.width, 150)
    proxy_mod.print_summary(console, runs)
    console.print(f"wall time {seconds:.0f} s", highlight=False)
