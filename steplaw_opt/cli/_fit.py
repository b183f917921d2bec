"""``steplaw-opt fit``: fit (or refine) a law from your own runs; write a card and a plot.

Only typer and typing are imported at module level; everything else inside the command.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

_PANEL = "Input"
_COLS = "Columns (CSV)"
_STUDY = "Optuna studies"
_METHOD = "Method"
_OUT = "Output"


def fit(
    csv: Annotated[
        str | None,
        typer.Argument(
            help="Runs in the released format: one row per run with lr, batch, N, D and loss.",
            show_default=False,
        ),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage",
            help="Optuna storage URL (sqlite:///x.db, postgresql://…).",
            rich_help_panel=_STUDY,
        ),
    ] = None,
    study: Annotated[
        list[str] | None,
        typer.Option(
            "--study",
            help="Study name in --storage; repeat to pool several.",
            rich_help_panel=_STUDY,
        ),
    ] = None,
    mlflow_experiment: Annotated[
        str | None,
        typer.Option(
            "--mlflow-experiment",
            help="An MLflow experiment written by steplaw-opt tune: fit its trial runs.",
            rich_help_panel=_PANEL,
        ),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            "--tracking-uri",
            help="MLflow tracking URI for --mlflow-experiment [MLflow's default].",
            rich_help_panel=_PANEL,
        ),
    ] = None,
    lr_col: Annotated[
        str,
        typer.Option("--lr-col", help="Learning-rate column of the CSV.", rich_help_panel=_COLS),
    ] = "lr",
    batch_col: Annotated[
        str,
        typer.Option("--batch-col", help="Batch column (in --batch-unit).", rich_help_panel=_COLS),
    ] = "bs",
    n_col: Annotated[
        str,
        typer.Option("--n-col", help="Model-size column (parameters).", rich_help_panel=_COLS),
    ] = "N",
    d_col: Annotated[
        str,
        typer.Option("--d-col", help="Training-tokens column.", rich_help_panel=_COLS),
    ] = "D",
    loss_col: Annotated[
        str | None,
        typer.Option(
            "--loss-col",
            help="Loss column (default: 'smooth loss' if present, else 'loss').",
            rich_help_panel=_COLS,
            show_default=False,
        ),
    ] = None,
    lr_param: Annotated[
        str, typer.Option("--lr-param", help="Trial param with the lr.", rich_help_panel=_STUDY)
    ] = "lr",
    batch_param: Annotated[
        str,
        typer.Option("--batch-param", help="Trial param with the batch.", rich_help_panel=_STUDY),
    ] = "batch_size",
    batch_unit: Annotated[
        str,
        typer.Option(
            "--batch-unit",
            help="Unit of the batch column / param: sequences or tokens.",
            rich_help_panel=_PANEL,
        ),
    ] = "sequences",
    seq_len: Annotated[
        int,
        typer.Option("--seq-len", help="Tokens per sequence.", rich_help_panel=_PANEL),
    ] = 2048,
    eps: Annotated[
        float,
        typer.Option(
            "--eps",
            help="Near-optimal: loss within (1+eps)·setting's best.",
            rich_help_panel=_METHOD,
        ),
    ] = 0.0025,
    bootstrap: Annotated[
        int,
        typer.Option("--bootstrap", help="Bootstrap resamples (0 = off).", rich_help_panel=_METHOD),
    ] = 1000,
    resample: Annotated[
        str,
        typer.Option(
            "--resample",
            help="Bootstrap unit: runs (the authors') or settings.",
            rich_help_panel=_METHOD,
        ),
    ] = "runs",
    seed: Annotated[
        int,
        typer.Option(
            "--seed",
            help="Seed of the bootstrap resamples (same seed, same sd).",
            rich_help_panel=_METHOD,
        ),
    ] = 0,
    form: Annotated[
        str | None,
        typer.Option(
            "--form",
            help="step (lr ~ N, D; B ~ D), batch-on-N (B ~ N, D too) or compute (both ~ C=6ND). "
            "(default: the prior's form, else step)",
            rich_help_panel=_METHOD,
            show_default=False,
        ),
    ] = None,
    prior: Annotated[
        str,
        typer.Option(
            "--prior",
            help="Refine this law (name or card path) with the runs, or none.",
            rich_help_panel=_METHOD,
        ),
    ] = "none",
    out: Annotated[
        str | None,
        typer.Option(
            "--out",
            help="Write the card (the refined one with --prior) to this TOML file.",
            rich_help_panel=_OUT,
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="The card's name (default: fit, or PRIOR-refined).",
            rich_help_panel=_OUT,
            show_default=False,
        ),
    ] = None,
    plot: Annotated[
        str | None,
        typer.Option(
            "--plot", help="Write the fit plot here (.png, .pdf, .svg).", rich_help_panel=_OUT
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON document.", rich_help_panel=_OUT)
    ] = False,
) -> None:
    """Fit a law to your own runs (the Step Law authors' method, bootstrapped), or refine a
    published law with them (Bayesian, with a test of whether they contradict it)."""
    _run(**locals())


# --------------------------------------------------------------------------------- implementation
def _check_output(path: str | None, flag: str) -> Any:
    """The output path, after checking its directory exists (before any work is done)."""
    if path is None:
        return None
    from pathlib import Path

    from steplaw_opt.errors import SteplawInputError

    p = Path(path)
    if p.is_dir():
        raise SteplawInputError(f"{flag} {path!r} is a directory")
    if not p.parent.is_dir():
        raise SteplawInputError(f"{flag} {path!r}: directory {str(p.parent)!r} does not exist")
    return p


def _write_atomic(path: Any, text: str) -> None:
    from steplaw_opt._files import write_atomic

    write_atomic(path, text)


def _load_runs(opts: dict[str, Any]) -> Any:
    from steplaw_opt.errors import SteplawInputError
    from steplaw_opt.priors import read_runs_csv, runs_from_study
    from steplaw_opt.priors._fit import concat_runs

    studies = opts["study"] or []
    if opts["csv"] is None and not studies and opts["mlflow_experiment"] is None:
        raise SteplawInputError(
            "give a CSV of runs, --storage URL with --study NAME, or --mlflow-experiment NAME"
        )
    if studies and opts["storage"] is None:
        raise SteplawInputError("--study needs --storage (the Optuna storage URL)")
    if opts["storage"] is not None and not studies:
        raise SteplawInputError("--storage needs at least one --study NAME")
    parts = []
    if opts["csv"] is not None:
        parts.append(
            read_runs_csv(
                opts["csv"],
                lr_col=opts["lr_col"],
                batch_col=opts["batch_col"],
                n_col=opts["n_col"],
                d_col=opts["d_col"],
                loss_col=opts["loss_col"],
                batch_unit=opts["batch_unit"],
                seq_len=opts["seq_len"],
            )
        )
    for name in studies:
        parts.append(
            runs_from_study(
                _load_study(opts["storage"], name),
                lr_param=opts["lr_param"],
                batch_param=opts["batch_param"],
                batch_unit=opts["batch_unit"],
                seq_len=opts["seq_len"],
            )
        )
    if opts["mlflow_experiment"] is not None:
        from steplaw_opt.priors._fit import runs_from_mlflow

        parts.append(runs_from_mlflow(opts["mlflow_experiment"], tracking_uri=opts["tracking_uri"]))
    return concat_runs(parts)


def _load_study(storage: str, name: str) -> Any:
    import optuna

    from steplaw_opt._records import mask_secrets, mask_url
    from steplaw_opt.errors import SteplawInputError
    from steplaw_opt.tune._study import open_existing_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    label = mask_url(storage)
    # Checked first: a typo in an SQLite path is refused, not created as an empty database.
    opened = open_existing_storage(optuna, storage)
    try:
        return optuna.load_study(study_name=name, storage=opened)
    except KeyError:
        try:
            names = optuna.get_all_study_names(storage=opened)
        except Exception:  # pragma: no cover - the first error is the one to report
            names = []
        have = ", ".join(repr(n) for n in names[:10]) or "none"
        raise SteplawInputError(f"no study {name!r} in {label!r} (studies: {have})") from None
    except Exception as exc:
        first = mask_secrets((str(exc).splitlines() or [type(exc).__name__])[0], storage)[:300]
        raise SteplawInputError(f"cannot open Optuna storage {label!r}: {first}") from None


def _resolve_form(form: str | None, prior_law: Any) -> str:
    from steplaw_opt.errors import SteplawInputError
    from steplaw_opt.priors._fit import check_form
    from steplaw_opt.priors._refine import form_of, prior_moments

    if prior_law is None:
        check_form(form or "step")
        return form or "step"
    lr_vars, batch_vars, _, _ = prior_moments(prior_law)
    prior_form = form_of(lr_vars, batch_vars)
    if prior_form is None:
        raise SteplawInputError(
            f"--prior {prior_law.name!r} regresses lr on {list(lr_vars)} and batch on "
            f"{list(batch_vars)}, which is none of the forms step, batch-on-N, compute"
        )
    if form is not None and form != prior_form:
        check_form(form)
        raise SteplawInputError(
            f"--form {form} does not match --prior {prior_law.name!r}, which is --form {prior_form}"
        )
    return prior_form


def _run(**opts: Any) -> None:
    import json

    from steplaw_opt.errors import SteplawInputError
    from steplaw_opt.priors import fit_law, load_law, refine_law
    from steplaw_opt.priors._fit import check_eps

    if opts["batch_unit"] not in ("sequences", "tokens"):
        raise SteplawInputError(
            f"--batch-unit must be sequences or tokens, got {opts['batch_unit']!r}"
        )
    if opts["seq_len"] <= 0:
        raise SteplawInputError(f"--seq-len must be positive, got {opts['seq_len']}")
    if opts["resample"] not in ("runs", "settings"):
        raise SteplawInputError(f"--resample must be runs or settings, got {opts['resample']!r}")
    try:
        check_eps(opts["eps"])
    except SteplawInputError as exc:
        raise SteplawInputError(f"--eps: {exc}") from None
    out = _check_output(opts["out"], "--out")
    plot = _check_output(opts["plot"], "--plot")
    if plot is not None:
        from steplaw_opt.plots._fit import check_plot_path

        check_plot_path(plot)
    if opts["name"] is not None:
        from steplaw_opt.priors._law import NAME_RE

        if not NAME_RE.fullmatch(opts["name"]):
            raise SteplawInputError(
                f"--name {opts['name']!r} must be letters, digits, '.', '_', '+' or '-' (no "
                "spaces or slashes, at most 100 characters): a card's name names studies too"
            )
    prior_law = None if opts["prior"] == "none" else load_law(opts["prior"])
    form = _resolve_form(opts["form"], prior_law)
    runs = _load_runs(opts)

    refine = None
    name = opts["name"]
    if prior_law is not None:
        refine = refine_law(prior_law, runs, eps=opts["eps"], name=name)
    result = None
    try:
        result = fit_law(
            runs,
            eps=opts["eps"],
            form=form,
            n_bootstrap=opts["bootstrap"],
            seed=opts["seed"],
            resample=opts["resample"],
            name=name or "fit",
        )
    except SteplawInputError as exc:
        if refine is None:
            raise
        fit_error = str(exc)  # a refinement works from one setting; a fresh fit may not
    card = refine.card if refine is not None else result.card  # type: ignore[union-attr]
    if plot is not None:  # the plot first: if it fails, the card is not written either
        if result is None:
            raise SteplawInputError(f"--plot needs a fit of its own, and {fit_error}")
        from steplaw_opt.plots._fit import plot_fit

        plot_fit(plot, result, runs, refine)
    if out is not None:
        import tomli_w

        _write_atomic(out, tomli_w.dumps(card))

    if opts["as_json"]:
        doc = {
            "fit": None if result is None else result.to_dict(),
            "refine": None if refine is None else refine.to_dict(),
            "card": card,
            "notes": list(runs.notes),
            "out": None if out is None else str(out),
            "plot": None if plot is None else str(plot),
        }
        print(json.dumps(doc, indent=2, default=float))
        return
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 120)
    _print_summary(console, runs, result, refine, out, plot, None if result else fit_error)


def _coef_label(name: str) -> str:
    quantity, term = name.split(":")
    return (
        f"{quantity}: ln coefficient" if term == "intercept" else f"{quantity}: exponent of {term}"
    )


def _law_text(law: Any) -> str:
    def one(f: Any) -> str:
        terms = " · ".join(f"{v}^{e:.3f}" for v, e in f.terms.items())
        return f"{f.coefficient:.4g} · {terms}"

    return f"lr = {one(law.lr_formula)};  B_tokens = {one(law.batch_formula)}"


def _print_summary(
    console: Any, runs: Any, fit: Any, refine: Any, out: Any, plot: Any, fit_error: str | None
) -> None:
    import numpy as np
    from rich.table import Table

    from steplaw_opt.sizes import format_size

    names = fit.coef_names if fit is not None else refine.coef_names
    table = Table(title="Coefficients (log space: ln q = ln c + Σ e·ln x)", title_justify="left")
    table.add_column("coefficient")
    if fit is not None:
        table.add_column("OLS", justify="right")
        table.add_column("± OLS sd", justify="right")
        table.add_column("± bootstrap sd", justify="right")
    if refine is not None:
        table.add_column(f"prior {refine.prior.name}", justify="right")
        table.add_column("refined", justify="right")
        table.add_column("moved (prior sd)", justify="right")
    ols_sd = None if fit is None else np.sqrt(np.diag(fit.cov_ols))
    boot_sd = None if fit is None or fit.cov_boot is None else np.sqrt(np.diag(fit.cov_boot))
    for i, nm in enumerate(names):
        row = [_coef_label(nm)]
        if fit is not None:
            row += [f"{fit.coef[i]:.4f}", f"{ols_sd[i]:.4f}"]
            row.append("—" if boot_sd is None else f"{boot_sd[i]:.4f}")
        if refine is not None:
            sd0 = np.sqrt(refine.prior_cov[i, i])
            sdn = np.sqrt(refine.post_cov[i, i])
            row += [
                f"{refine.prior_mean[i]:.4f} ± {sd0:.4f}",
                f"{refine.post_mean[i]:.4f} ± {sdn:.4f}",
                f"{refine.moved[i]:+.2f}",
            ]
        table.add_row(*row)
    console.print(table)
    if fit is not None:
        ns = sorted({s.N for s in fit.settings})
        ds = sorted({s.D for s in fit.settings})
        console.print(
            f"Kept {fit.n_near:,} of {fit.n_runs:,} runs within {fit.eps * 100:g} % of their "
            f"setting's best loss: {len(fit.settings)} settings ({len(ns)} N × {len(ds)} D), "
            f"form {fit.form!r}."
        )
        console.print(
            f"Residual scatter (RMS, ln units): lr {fit.residual_sd[0]:.3f}, batch "
            f"{fit.residual_sd[1]:.3f};  R²: lr {fit.r2[0]:.3f}, batch {fit.r2[1]:.3f}."
        )
        if fit.bootstrap_requested:
            console.print(
                f"Bootstrap: {fit.bootstrap_requested:,} resamples of {fit.resample} "
                f"(seed {fit.seed}) in {fit.bootstrap_seconds:.3f} s"
                + (
                    f", {fit.bootstrap_degenerate} degenerate left out"
                    if fit.bootstrap_degenerate
                    else ""
                )
                + "."
            )
        console.print(f"Fit:     {_law_text(fit.law)}")
    if refine is not None:
        console.print(f"Prior:   {_law_text(refine.prior)}")
        console.print(f"Refined: {_law_text(refine.law)}")
        colour = {"consistent": "green", "in tension": "yellow"}.get(
            refine.verdict.rsplit(" with", 1)[0], "red"
        )
        console.print(
            f"Contradiction test (prior predictive χ², one lr and one batch observation per "
            f"setting, setting sd ≈ {refine.setting_sd[0]:.2f} / {refine.setting_sd[1]:.2f}): "
            f"Q = {refine.q:.2f} on {refine.dof} dof (lr {refine.q_parts[0]:.2f}, batch "
            f"{refine.q_parts[1]:.2f}), p = {refine.p_value:.3g} → "
            f"[{colour}]the new runs are {refine.verdict}[/{colour}]."
        )
    law = refine.law if refine is not None else fit.law
    valid = ", ".join(
        f"{v} {format_size(lo)}–{format_size(hi)}" for v, (lo, hi) in law.validity.items()
    )
    console.print(f"Validity range: {valid}.")
    if fit_error is not None:
        console.print(f"[yellow]No stand-alone fit: {fit_error}[/yellow]")
    excluded = fit.excluded if fit is not None else ()
    if excluded:
        shown = ", ".join(excluded[:8]) + (" …" if len(excluded) > 8 else "")
        console.print(f"Left out {len(excluded)} run(s) with no finite loss (diverged?): {shown}.")
    for note in runs.notes:
        console.print(f"Note: {note}.")
    if out is not None:
        console.print(f"Wrote the card to {out} (use it as --law {out}).")
    if plot is not None:
        console.print(f"Wrote the fit plot to {plot}.")
