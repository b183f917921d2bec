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
import re
from pathlib import Path, PurePosixPath
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

        folder = Path(out) if out else default_folder(name)
        doc["plots"] = [
            str(p) for p in write_plots(study, folder, sampler=sampler, refined=refined)
        ]
    return doc


def default_folder(study_name: Any) -> Path:
    """``report-<study>`` in the working folder, the name reduced to letters, digits and
    ``._-``: a study name (or an MLflow tag claiming to be one) with ``/`` or ``..`` must not
    choose where files are written."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(study_name))
    safe = re.sub(r"\.{2,}", ".", safe).strip("._") or "study"
    return Path(f"report-{safe[:100]}")


def _from_mlflow(
    run_id: str, tracking_uri: str | None, out: str | None, no_plots: bool
) -> dict[str, Any]:
    import os

    from steplaw_opt.priors._fit import check_mlflow_store, mlflow_error, mlflow_read_limits
    from steplaw_opt.tracking import TAG_REFINED_NOTES, MlflowTracker, mask_url

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    tracker = MlflowTracker(tracking_uri).open()
    uri = tracker.tracking_uri
    check_mlflow_store(uri)  # reading must not create an empty mlflow.db
    label = mask_url(uri)
    with mlflow_read_limits():  # a server that is down: one line in seconds, not minutes
        client = tracker.client()
        try:
            run = client.get_run(run_id)
        except Exception as exc:
            raise SteplawInputError(
                f"no MLflow run {run_id!r} at {label}: {mlflow_error(uri, exc)}"
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
            "refined_optimum": {
                **_refined_from_metrics(data.metrics),
                "notes": _notes_from_tag(tags.get(TAG_REFINED_NOTES)),
            },
            "trials": _read_trials(client, run_id),
            "plots": [],
            "mlflow": {"run_id": run_id, "tracking_uri": label, "status": run.info.status},
        }
        if not no_plots:
            folder = Path(out) if out else default_folder(name)
            doc["plots"] = [str(p) for p in _download_plots(client, run_id, folder, uri)]
    return doc


# A plot the run may hand back: plots/<name>.<png|pdf|svg>, nothing else, nowhere else.
_PLOT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.(?:png|pdf|svg)")
MAX_PLOT_BYTES = 50 * 2**20
MAX_TRIALS_CSV_BYTES = 20 * 2**20


def _download_plots(client: Any, run_id: str, folder: Path, uri: str) -> list[Path]:
    """The run's plots, copied into ``folder`` under their own base names only. Artifact paths
    come from the tracking server: one that is not ``plots/<name>.png`` (``..``, a subfolder,
    an absolute path) is skipped, and each file is downloaded to a temporary folder first and
    checked to be a regular file inside it."""
    import shutil
    import tempfile

    from steplaw_opt.priors._fit import mlflow_error
    from steplaw_opt.tracking import PLOT_FOLDER

    try:
        listed = client.list_artifacts(run_id, PLOT_FOLDER)
    except Exception as exc:
        raise SteplawInputError(
            f"cannot list the plots of run {run_id!r}: {mlflow_error(uri, exc)}"
        ) from None
    wanted = []
    for a in listed:
        parts = PurePosixPath(str(a.path)).parts
        size = getattr(a, "file_size", None) or 0
        if (
            not getattr(a, "is_dir", False)
            and len(parts) == 2
            and parts[0] == PLOT_FOLDER
            and _PLOT_NAME.fullmatch(parts[1])
            and size <= MAX_PLOT_BYTES
        ):
            wanted.append((str(a.path), parts[1]))
    if not wanted:
        return []
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SteplawInputError(f"cannot write plots to {str(folder)!r}: {exc.strerror}") from None
    written = []
    with tempfile.TemporaryDirectory(prefix="steplaw-report-") as tmp:
        root = Path(tmp).resolve()
        for path, base in wanted:
            try:
                local = Path(client.download_artifacts(run_id, path, tmp)).resolve()
            except Exception as exc:
                raise SteplawInputError(
                    f"cannot download {path!r} of run {run_id!r}: {mlflow_error(uri, exc)}"
                ) from None
            if not local.is_relative_to(root) or not local.is_file():
                continue  # the server put it elsewhere, or it is not a file: not copied
            if local.stat().st_size > MAX_PLOT_BYTES:
                continue
            target = folder / base
            shutil.copyfile(local, target)
            written.append(target)
    return written


def _num(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _notes_from_tag(value: str | None) -> list[str]:
    """The refined optimum's notes as tune logged them (a JSON list of strings)."""
    try:
        notes = json.loads(value) if value else []
    except ValueError:
        return []
    return [str(n) for n in notes] if isinstance(notes, list) else []


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
    """The run's ``trials.csv``, read defensively: its first
    :data:`MAX_TRIALS_CSV_BYTES`, bytes that are not UTF-8 replaced, rows that are not CSV
    the table's end (it comes from a server, not from this program)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = Path(client.download_artifacts(run_id, "trials.csv", tmp))
            if not path.is_file():
                return []
            with path.open("rb") as f:
                raw = f.read(MAX_TRIALS_CSV_BYTES)
        except Exception:
            return []
    text = raw.decode("utf-8", errors="replace")
    rows = []
    try:
        for row in csv.DictReader(io.StringIO(text)):
            rows.append({str(k): _cell(str(k), v) for k, v in row.items() if k is not None})
    except csv.Error:
        pass  # a field over csv's limit or a NUL byte: the rows read so far stand
    return rows


def _cell(key: str, value: Any) -> Any:
    if not isinstance(value, str) or value == "":
        return None
    if key in ("state", "failure", "proposal"):
        return value
    number = _num(value)
    return int(number) if key == "trial" and number is not None else number


# ------------------------------------------------------------------------------- output
def _fmt(value: Any, kind: str = "g") -> str:
    """A number as tune prints it (:mod:`steplaw_opt.cli._render`, :mod:`._render_tune`)."""
    from steplaw_opt.cli._render import _loss, _lr, _tokens
    from steplaw_opt.cli._render_tune import _seq

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if kind == "pct":
        return f"{value:.3%}"
    if kind == "3g":  # lr, u and v: three significant digits
        return _lr(value)
    if kind == "loss":
        return _loss(value)
    if kind == "count":
        return f"{value:,.0f}"
    if kind == "seq":  # a batch in sequences: whole numbers when large, 2 digits when small
        return _seq(value)
    if kind == "batch":  # a trial's batch, as tune's trial lines print it
        return f"{value:g}"
    if kind == "size":
        return _tokens(float(value))
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _optimum_rows(opt: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(quantity, refined, 95 % interval, plateau) rows, formatted as tune's table."""

    def rng(pair: Any, kind: str = "g") -> str:
        if not pair:
            return "—"
        return f"{_fmt(pair[0], kind)} – {_fmt(pair[1], kind)}"

    seq = opt.get("seq_len") or 1
    b95 = opt.get("batch_tokens_interval_95")
    plateau_b = opt.get("plateau_batch_tokens")
    rounded = opt.get("batch_sequences_rounded")
    # As in tune's table: the batch a user trains with, a whole number of sequences.
    tokens = rounded * seq if rounded is not None else opt.get("batch_tokens")
    return [
        ("learning rate", _fmt(opt.get("lr"), "3g"), rng(opt.get("lr_interval_95"), "3g"),
         rng(opt.get("plateau_lr"), "3g")),
        ("batch (tokens)", _fmt(tokens, "size"), rng(b95, "size"),
         rng(plateau_b, "size")),
        (f"batch (sequences of {int(seq)})", _fmt(rounded, "count"),
         rng([x / seq for x in b95] if b95 else None, "seq"),
         rng([x / seq for x in plateau_b] if plateau_b else None, "seq")),
    ]  # fmt: skip


def _plateau_header(opt: dict[str, Any]) -> str:
    eps = opt.get("plateau_eps")
    return "plateau" if eps is None else f"plateau (≤ {eps:.2%})"  # as tune heads it


def _predicted(value: Any) -> str:
    """The bowl's loss at the recommendation, at the target; none without a run there (each
    proxy scale has its own loss offset, so proxies alone do not give the target's loss)."""
    if value is None:
        return "no predicted loss at the target (no run at the target scale)"
    return f"predicted loss at the target: {_fmt(value, 'loss')}"  # as tune prints it


def _notes(opt: dict[str, Any]) -> list[str]:
    """The refined optimum's notes (a recommendation on a search bound, a rounded batch outside
    its 95 % interval): the same lines tune prints under its table."""
    return [str(n) for n in opt.get("notes") or ()]


# What the trials table shows; the failure reason goes under it, one line a failed trial.
SHOWN_COLUMNS = TABLE_COLUMNS[:-1]
HEADERS = {"batch_size": "batch"}
KINDS = {"D": "size", "lr": "3g", "batch_size": "batch", "loss": "loss", "gap": "pct",
         "u": "3g", "v": "3g"}  # fmt: skip


def _trial_cells(
    row: dict[str, Any], columns: tuple[str, ...] = TABLE_COLUMNS, limit: int = 300
) -> list[str]:
    cells = []
    for col in columns:
        if col == "state":
            cells.append(str(row.get("state") or ""))
        elif col == "failure":
            cells.append(_short_text(row.get("failure"), limit))
        else:
            cells.append(_fmt(row.get(col), KINDS.get(col, "g")))
    return cells


def _short_text(value: Any, limit: int = 300) -> str:
    """A failure reason for a table cell or line: the exception's line of a traceback, cut to
    ``limit`` (a study may hold a reason of megabytes, written by an older version or by
    someone else); the full reason stays in the study's attribute and the JSON report."""
    from steplaw_opt.cli._render import failure_line

    return failure_line(value, limit)


def to_markdown(doc: dict[str, Any]) -> str:
    """The report as Markdown: the optimum, the trials table, the plots."""
    lines = [f"# {doc['study_name']}", ""]
    target = doc.get("target") or {}
    opt = doc["refined_optimum"]
    lines.append(
        f"Target N={_fmt(target.get('N'), 'size')}, D={_fmt(target.get('D'), 'size')}, "
        f"seq_len {_fmt(target.get('seq_len'))}; law {doc.get('law')}; storage "
        f"`{doc.get('storage')}`."
    )
    lines += ["", "## Refined optimum", "",
              f"| quantity | refined | 95 % interval | {_plateau_header(opt)} |"]  # fmt: skip
    lines.append("|---|---:|---:|---:|")
    lines += [f"| {' | '.join(r)} |" for r in _optimum_rows(opt)]
    lines += ["", _predicted(opt.get("predicted_loss")) + "."]
    lines += [f"- note: {n}" for n in _notes(opt)]
    lines += ["", f"## Trials ({len(doc['trials'])})", ""]
    lines.append("| " + " | ".join(TABLE_COLUMNS) + " |")
    lines.append("|" + "---:|" * len(TABLE_COLUMNS))
    for r in doc["trials"]:
        cells = [c.replace("|", "\\|") for c in _trial_cells(r)]
        lines.append("| " + " | ".join(cells) + " |")
    if doc.get("plots"):
        lines += ["", "## Plots", ""]
        lines += [f"![{Path(p).stem}]({p})" for p in doc["plots"]]
    if doc.get("mlflow"):
        lines += [
            "",
            f"MLflow run `{doc['mlflow']['run_id']}` at `{doc['mlflow']['tracking_uri']}`.",
        ]
    return "\n".join(lines)


WIDTH = 80  # piped: the tables fit 80 columns (a terminal: its own width)


def _print_text(doc: dict[str, Any], console: Any = None) -> None:
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:
            console.width = WIDTH
    opt = doc["refined_optimum"]
    console.print(
        f"[bold]{escape(str(doc['study_name']))}[/bold] · storage "
        f"{escape(str(doc.get('storage')))}",
        highlight=False,
    )
    table = Table(title="Refined optimum at the target", title_justify="left")
    for col in ("quantity", "refined", "95 % interval", _plateau_header(opt)):
        table.add_column(col, justify="left" if col == "quantity" else "right", overflow="fold")
    for row in _optimum_rows(opt):
        table.add_row(*row)
    console.print(table)
    for note in _notes(opt):
        console.print(f"[yellow]note:[/yellow] {escape(note)}", highlight=False)
    console.print(_predicted(opt.get("predicted_loss")), highlight=False)
    # The numbers in a table of their own (no vertical rules: it fits 80 columns; a cell that
    # does not fit wraps, never cut), and each failed trial's reason under it on one line.
    trials = Table(
        title=f"Trials ({len(doc['trials'])})",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1, 0, 0),
    )
    for col in SHOWN_COLUMNS:
        trials.add_column(
            HEADERS.get(col, col), justify="left" if col == "state" else "right", overflow="fold"
        )
    failed = []
    for row in doc["trials"]:
        trials.add_row(*_trial_cells(row, SHOWN_COLUMNS))
        if row.get("failure"):
            failed.append(row)
    console.print(trials)
    for row in failed:
        head = f"trial {_fmt(row.get('trial'))} failed: "
        reason = _short_text(row.get("failure"), max(console.width - len(head), 20))
        console.print(head + reason, highlight=False, markup=False, soft_wrap=True)
    for path in doc.get("plots", []):
        console.print(f"plot: {path}", highlight=False, markup=False)
    if doc.get("mlflow"):
        m = doc["mlflow"]
        console.print(
            f"MLflow run {m['run_id']} at {m['tracking_uri']}", highlight=False, markup=False
        )
