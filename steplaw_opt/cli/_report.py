"""``steplaw-opt report``: the refined optimum, the trials table and the plots of a study.

From the study itself (``STUDY`` and ``--storage``: the model is refitted, the plots redrawn) or
from its MLflow record (``--run-id``: the parent run's metrics, ``trials.csv`` and plots, for a
study whose storage is out of reach or was in memory).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from steplaw_opt.errors import SteplawInputError

FORMATS = ("text", "json", "markdown")
TABLE_COLUMNS = ("trial", "state", "D", "lr", "batch_size", "loss", "gap", "u", "v", "failure")


def report_command(
    study_name: Annotated[
        str | None, typer.Argument(help="The study's name (see `tune`'s last lines).")
    ] = None,
    storage: Annotated[
        str, typer.Option("--storage", help="Optuna storage URL of the study.")
    ] = "sqlite:///steplaw-opt.db",
    run_id: Annotated[
        str | None,
        typer.Option("--run-id", help="Report from the MLflow parent run instead of the study."),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option("--tracking-uri", help="MLflow tracking URI for --run-id [MLflow default]."),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option("--out", help="Folder for the plots [report-<study>]."),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="text, json or markdown.")] = "text",
    law: Annotated[
        str | None, typer.Option("--law", help="Law card, if the study's is not shipped.")
    ] = None,
    round_batch: Annotated[
        str, typer.Option("--round-batch", help="Round the recommended batch: none, pow2 or k.")
    ] = "none",
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Do not write plots.")] = False,
) -> None:
    """Print a study's refined optimum and trials table; write its plots to a folder."""
    if fmt not in FORMATS:
        raise SteplawInputError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if (study_name is None) == (run_id is None):
        raise SteplawInputError("give a STUDY name (with --storage) or --run-id, not both")
    if run_id is not None:
        doc = _from_mlflow(run_id, tracking_uri, out, no_plots)
    else:
        assert study_name is not None
        doc = _from_study(study_name, storage, law, round_batch, out, no_plots)
    if fmt == "json":
        print(json.dumps(doc, indent=2, default=float))
    elif fmt == "markdown":
        print(to_markdown(doc))
    else:
        _print_text(doc)


# ------------------------------------------------------------------------------- sources
def _from_study(
    name: str, storage: str, law: str | None, round_batch: str, out: str | None, no_plots: bool
) -> dict[str, Any]:
    from steplaw_opt.cli._common import parse_rounding
    from steplaw_opt.samplers import refined_optimum
    from steplaw_opt.tracking import ATTR_RUN_ID, ATTR_TRACKING_URI, mask_url, trials_table
    from steplaw_opt.tune import load_tuned_study

    rounding = parse_rounding(round_batch)
    study = load_tuned_study(name, storage, law)
    sampler = study.sampler
    refined = refined_optimum(study, sampler=sampler, round_batch=rounding)
    attrs = study.user_attrs
    doc: dict[str, Any] = {
        "study_name": name,
        "storage": mask_url(storage),
        "target": {
            "N": attrs["steplaw.target.N"],
            "D": attrs["steplaw.target.D"],
            "seq_len": attrs["steplaw.target.seq_len"],
        },
        "law": attrs.get("steplaw.law"),
        "refined_optimum": refined.to_dict(),
        "trials": trials_table(study, sampler),
        "plots": [],
    }
    if ATTR_RUN_ID in attrs:
        doc["mlflow"] = {"run_id": attrs[ATTR_RUN_ID], "tracking_uri": attrs.get(ATTR_TRACKING_URI)}
    if not no_plots:
        from steplaw_opt.plots import write_plots

        folder = Path(out or f"report-{name}")
        doc["plots"] = [
            str(p) for p in write_plots(study, folder, sampler=sampler, refined=refined)
        ]
    return doc


def _from_mlflow(
    run_id: str, tracking_uri: str | None, out: str | None, no_plots: bool
) -> dict[str, Any]:
    import os

    from steplaw_opt.tracking import PLOT_FOLDER, MlflowTracker

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    tracker = MlflowTracker(tracking_uri).open()
    client = tracker.client()
    try:
        run = client.get_run(run_id)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SteplawInputError(
            f"no MLflow run {run_id!r} at {tracker.tracking_uri}: {first}"
        ) from None
    parent = run.data.tags.get("mlflow.parentRunId")
    if parent is not None:
        raise SteplawInputError(f"run {run_id!r} is a trial's run; give its parent {parent}")
    data, tags = run.data, run.data.tags
    name = tags.get("steplaw.study_name", run.info.run_name)
    doc: dict[str, Any] = {
        "study_name": name,
        "storage": tags.get("optuna.storage"),
        "target": {k: _num(data.params.get(f"target.{k}")) for k in ("N", "D", "seq_len")},
        "law": data.params.get("law"),
        "refined_optimum": _refined_from_metrics(data.metrics),
        "trials": _read_trials(client, run_id),
        "plots": [],
        "mlflow": {
            "run_id": run_id,
            "tracking_uri": tracker.tracking_uri,
            "status": run.info.status,
        },
    }
    if not no_plots:
        folder = Path(out or f"report-{name}")
        folder.mkdir(parents=True, exist_ok=True)
        names = [a.path for a in client.list_artifacts(run_id, PLOT_FOLDER)]
        for path in names:
            local = client.download_artifacts(run_id, path, str(folder))
            doc["plots"].append(str(local))
    return doc


def _num(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _refined_from_metrics(metrics: dict[str, float]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if not key.startswith("refined."):
            continue
        name = key[len("refined.") :]
        if name.endswith(("_lo", "_hi")):
            base, end = name[:-3], name[-2:]
            pair = out.setdefault(base, [math.nan, math.nan])
            pair[0 if end == "lo" else 1] = value
        else:
            out[name] = value
    return out


def _read_trials(client: Any, run_id: str) -> list[dict[str, Any]]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, "trials.csv", tmp)
        except Exception:
            return []
        text = Path(path).read_text(encoding="utf-8")
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        rows.append({k: _cell(k, v) for k, v in row.items()})
    return rows


def _cell(key: str, value: str) -> Any:
    if value == "":
        return None
    if key in ("state", "failure", "proposal"):
        return value
    number = _num(value)
    return int(number) if key == "trial" and number is not None else number


# ------------------------------------------------------------------------------- output
def _fmt(value: Any, kind: str = "g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if kind == "pct":
        return f"{value:.3%}"
    if kind == "size":
        from steplaw_opt.sizes import format_size

        return format_size(float(value))
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _optimum_rows(opt: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(quantity, refined, 95 % interval, plateau) rows."""

    def rng(pair: Any, kind: str = "g") -> str:
        if not pair:
            return "—"
        return f"{_fmt(pair[0], kind)} – {_fmt(pair[1], kind)}"

    seq = opt.get("seq_len") or 1
    b95 = opt.get("batch_tokens_interval_95")
    plateau_b = opt.get("plateau_batch_tokens")
    return [
        ("learning rate", _fmt(opt.get("lr")), rng(opt.get("lr_interval_95")),
         rng(opt.get("plateau_lr"))),
        ("batch (tokens)", _fmt(opt.get("batch_tokens"), "size"), rng(b95, "size"),
         rng(plateau_b, "size")),
        (f"batch (sequences of {int(seq)})", _fmt(opt.get("batch_sequences_rounded")),
         rng([x / seq for x in b95] if b95 else None),
         rng([x / seq for x in plateau_b] if plateau_b else None)),
        ("predicted loss", _fmt(opt.get("predicted_loss")), "", ""),
    ]  # fmt: skip


def _trial_cells(row: dict[str, Any]) -> list[str]:
    return [
        _fmt(row.get("trial")),
        str(row.get("state") or ""),
        _fmt(row.get("D"), "size"),
        _fmt(row.get("lr")),
        _fmt(row.get("batch_size")),
        _fmt(row.get("loss")),
        _fmt(row.get("gap"), "pct"),
        _fmt(row.get("u")),
        _fmt(row.get("v")),
        str(row.get("failure") or ""),
    ]


def to_markdown(doc: dict[str, Any]) -> str:
    """The report as Markdown: the optimum, the trials table, the plots."""
    lines = [f"# {doc['study_name']}", ""]
    target = doc.get("target") or {}
    lines.append(
        f"Target N={_fmt(target.get('N'), 'size')}, D={_fmt(target.get('D'), 'size')}, "
        f"seq_len {_fmt(target.get('seq_len'))}; law {doc.get('law')}; storage "
        f"`{doc.get('storage')}`."
    )
    lines += ["", "## Refined optimum", "", "| quantity | refined | 95 % interval | plateau |"]
    lines.append("|---|---:|---:|---:|")
    lines += [f"| {' | '.join(r)} |" for r in _optimum_rows(doc["refined_optimum"])]
    lines += ["", f"## Trials ({len(doc['trials'])})", ""]
    lines.append("| " + " | ".join(TABLE_COLUMNS) + " |")
    lines.append("|" + "---:|" * len(TABLE_COLUMNS))
    lines += ["| " + " | ".join(_trial_cells(r)) + " |" for r in doc["trials"]]
    if doc.get("plots"):
        lines += ["", "## Plots", ""]
        lines += [f"![{Path(p).stem}]({p})" for p in doc["plots"]]
    if doc.get("mlflow"):
        lines += [
            "",
            f"MLflow run `{doc['mlflow']['run_id']}` at `{doc['mlflow']['tracking_uri']}`.",
        ]
    return "\n".join(lines)


def _print_text(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 130)
    console.print(
        f"[bold]{doc['study_name']}[/bold] · storage {doc.get('storage')}", highlight=False
    )
    table = Table(title="Refined optimum at the target", title_justify="left")
    for col in ("quantity", "refined", "95 % interval", "plateau"):
        table.add_column(col, justify="left" if col == "quantity" else "right")
    for row in _optimum_rows(doc["refined_optimum"]):
        table.add_row(*row)
    console.print(table)
    trials = Table(title=f"Trials ({len(doc['trials'])})", title_justify="left")
    for col in TABLE_COLUMNS:
        trials.add_column(col, justify="left" if col in ("state", "failure") else "right")
    for row in doc["trials"]:
        trials.add_row(*_trial_cells(row))
    console.print(trials)
    for path in doc.get("plots", []):
        console.print(f"plot: {path}", highlight=False)
    if doc.get("mlflow"):
        m = doc["mlflow"]
        console.print(f"MLflow run {m['run_id']} at {m['tracking_uri']}", highlight=False)
