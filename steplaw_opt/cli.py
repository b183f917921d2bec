"""The ``steplaw-opt`` command line: a thin layer over the Python API.

Every error a user can cause prints one line naming the bad value and exits with code 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

try:  # typer >= 0.20 vendors its own click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer on real click
    from click import exceptions as click_exceptions  # type: ignore[no-redef]

from steplaw_opt.errors import SteplawInputError

app = typer.Typer(
    name="steplaw-opt",
    help="Optimal learning rate and batch size for LLM pre-training: a scaling law as the prior, "
    "a few short proxy runs to refine it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
laws_app = typer.Typer(help="List the law cards, or show one.", invoke_without_command=True)
app.add_typer(laws_app, name="laws")


def _console() -> Any:
    from rich.console import Console

    return Console()


from steplaw_opt._cli_common import (  # noqa: E402
    ActiveOpt,
    DFfOpt,
    DModelOpt,
    NHeadsOpt,
    NLayersOpt,
    ParamsOpt,
    PlainFfnOpt,
    SeqLenOpt,
    TargetLossOpt,
    TokensOpt,
    VocabOpt,
    build_scale,
    parse_rounding,
)


# --------------------------------------------------------------------------------- predict
@app.command()
def predict(
    tokens: TokensOpt,
    params: ParamsOpt = None,
    seq_len: SeqLenOpt = 2048,
    law: Annotated[
        str, typer.Option("--law", help="A law name, 'all', or a path to a card (.toml).")
    ] = "step-law",
    round_batch: Annotated[
        str,
        typer.Option(
            "--round-batch",
            help="Round the batch in sequences: none, pow2, or k (a multiple of k).",
        ),
    ] = "none",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    d_model: DModelOpt = None,
    d_ff: DFfOpt = None,
    n_layers: NLayersOpt = None,
    n_heads: NHeadsOpt = None,
    vocab: VocabOpt = None,
    plain_ffn: PlainFfnOpt = False,
    active_params: ActiveOpt = None,
    target_loss: TargetLossOpt = None,
) -> None:
    """Predict the optimal peak learning rate and batch size at a scale, with intervals."""
    from steplaw_opt.priors import list_laws, load_law

    scale = build_scale(
        params,
        tokens,
        seq_len,
        d_model,
        d_ff,
        n_layers,
        n_heads,
        vocab,
        plain_ffn,
        active_params,
        target_loss,
    )
    rounding = parse_rounding(round_batch)
    laws = list_laws() if law == "all" else [load_law(law)]
    predictions = [lw.predict(scale, round_batch=rounding) for lw in laws]
    if as_json:
        docs = [p.to_dict() for p in predictions]
        # Top-level keys describe the first law (the Step Law for --law all), so scripts can
        # read doc["lr"] either way; --law all adds every law under "laws".
        doc = {**docs[0], "laws": docs} if law == "all" else docs[0]
        print(json.dumps(doc, indent=2))
        return
    from steplaw_opt import _render

    console = _console()
    if len(predictions) == 1:
        _render.print_prediction(console, laws[0], predictions[0])
    else:
        _render.print_predictions(console, laws, predictions)


# --------------------------------------------------------------------------------- laws
@laws_app.callback()
def laws_list(ctx: typer.Context) -> None:
    """List the shipped law cards."""
    if ctx.invoked_subcommand is not None:
        return
    from steplaw_opt import _render
    from steplaw_opt.priors import list_laws

    _render.print_laws(_console(), list_laws())


@laws_app.command("show")
def laws_show(name: Annotated[str, typer.Argument(help="A law name or a path to a card.")]) -> None:
    """Print one law card in full."""
    from steplaw_opt import _render
    from steplaw_opt.priors import load_law

    _render.print_law(_console(), load_law(name))


# --------------------------------------------------------------------------------- bench
@app.command()
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
            help="Comma list of law, random, tpe, gp, cmaes, walk, plateau, botorch [all].",
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
            help="Proxy-run mode: target = largest D of each N, proxy runs at smaller D, "
            "gap at the target vs proxy compute (budgets in target-run equivalents).",
        ),
    ] = False,
) -> None:
    """Replay benchmark on the released grids: gap to each setting's best loss after k trials."""
    if proxy:
        _bench_proxy(grid_csv, budgets, seeds, prior, as_json, target_runs, proxy_targets)
        return
    from steplaw_opt import bench as bench_mod

    config = bench_mod.cli_config(
        grid_csv,
        group_by=group_by,
        budgets=budgets,
        seeds=seeds,
        methods=methods,
        prior=prior,
        quick=quick,
    )
    from rich.console import Console
    from rich.progress import Progress

    err = Console(stderr=True)
    with Progress(console=err, transient=True, disable=as_json) as bar:
        task = bar.add_task("bench", total=None)

        def progress(done: int, total: int, label: str) -> None:
            bar.update(task, completed=done, total=total, description=label)

        result = bench_mod.run_bench(config, progress=progress)
    over = bench_mod.measure_overhead(config) if overhead else None
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


def _bench_proxy(
    grid_csv: str | None,
    budgets: str | None,
    seeds: int | None,
    prior: str,
    as_json: bool,
    target_runs: str = "1,2",
    targets: str = "largest",
) -> None:
    from steplaw_opt import _bench_proxy as proxy_mod

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
    config = proxy_mod.ProxyBenchConfig(
        targets=targets,
        target_runs=k_values,
        grid_path=grid_csv,
        budgets=budget_values,
        seeds=seeds or 3,
        priors=("published", "loo") if prior == "both" else (prior,),
    )
    runs = proxy_mod.run_proxy_bench(config)
    if as_json:
        summary = proxy_mod.summarise(runs)
        doc = {"summary": summary.to_dict(orient="records"), "runs": runs.to_dict("records")}
        print(json.dumps(doc, indent=2, default=float))
        return
    console = _console()
    if not console.is_terminal:
        console.width = max(console.width, 150)
    proxy_mod.print_summary(console, runs)


# --------------------------------------------------------------------------------- more commands
# Larger commands live in their own modules (steplaw_opt/_cli_<name>.py), each importing only
# typer at module level, and are registered here with one line each.
from steplaw_opt._cli_tune import tune_command  # noqa: E402

app.command("tune")(tune_command)
from steplaw_opt._cli_worker import worker_command  # noqa: E402

app.command("worker")(worker_command)
from steplaw_opt._cli_fit import fit as _fit_command  # noqa: E402

app.command("fit")(_fit_command)
from steplaw_opt._cli_report import report_command  # noqa: E402

app.command("report")(report_command)


# --------------------------------------------------------------------------------- entry point
def _fail(message: str) -> None:
    print(f"steplaw-opt: error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one-line errors with exit code 2, no tracebacks for bad input."""
    try:
        result = app(args=argv, standalone_mode=False, prog_name="steplaw-opt")
    except SteplawInputError as exc:
        _fail(str(exc).splitlines()[0])
    except click_exceptions.ClickException as exc:
        if exc.__class__.__name__ == "NoArgsIsHelpError":
            sys.exit(2)  # typer already printed the help; exit as click does
        _fail(exc.format_message().replace("\n", " "))
    except typer.Abort:
        print("steplaw-opt: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("steplaw-opt: interrupted", file=sys.stderr)
        sys.exit(130)
    else:
        sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
