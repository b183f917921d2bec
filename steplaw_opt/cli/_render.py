"""Rich tables for the CLI: predictions and law cards."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from steplaw_opt.priors import Interval, Law, Prediction
from steplaw_opt.sizes import format_size


def _lr(x: float | None) -> str:
    return "—" if x is None else f"{x:.3g}"


def _tokens(x: float | None) -> str:
    return "—" if x is None else format_size(x)


def _seqs(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f}"


def _loss(x: float | None) -> str:
    """A loss as tune prints it (four decimals)."""
    return "—" if x is None else f"{x:.4f}"


# A piece of a failure reason that is an exception's own line: ``ValueError: …``,
# ``torch.OutOfMemoryError: …``, ``KeyboardInterrupt``.
_EXCEPTION = re.compile(r"[A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit|Warning)\b")
_PREFIX = re.compile(r"(exit code -?\d+|signal \w+): ")


def failure_line(reason: object, limit: int = 80) -> str:
    """A failure reason on one line of at most ``limit`` characters, for a table: a command's
    reason is its exit code and its stderr's last lines joined with `` | `` (a traceback), of
    which the exception's own line (``ValueError: …``) says what happened; the last such line,
    else the exit code and the last line with any letter or digit in it (not a ``^^^^`` marker).
    The full reason stays in the study (the trial's ``steplaw.failure`` attribute)."""
    text = str(reason or "").strip()
    pieces = [p.strip() for p in re.split(r"\n| \| ", text)]
    pieces = [p for p in pieces if re.search(r"[^\W_]", p)]
    if len(pieces) > 1:
        prefix = _PREFIX.match(pieces[0])
        exception = [p for p in pieces if _EXCEPTION.match(p)]
        if exception:
            text = exception[-1]
        else:
            text = f"{prefix.group(1)}: {pieces[-1]}" if prefix else pieces[-1]
    elif pieces:
        text = pieces[0]
    else:
        text = ""
    limit = max(limit, 2)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def rounding_note(p: Prediction) -> str:
    """A line when the rounded batch lies outside the 95 % range of the law's mean, with what
    the rounding costs at the law's lr by the released grids' curvature (the bowl prior's
    H_vv in ln loss per ln batch², priors/data/landscape.toml); empty when there is nothing to
    say."""
    rounded, batch = p.batch_rounded_sequences, p.batch_sequences
    iv = next((i for i in p.batch_intervals if i.mass == 0.95), None)
    if rounded is None or batch is None or rounded == batch or iv is None or batch <= 0:
        return ""
    seq = p.scale.seq_len
    lo, hi = iv.low / seq, iv.high / seq
    if lo <= rounded <= hi:
        return ""
    from steplaw_opt.landscape import BowlPrior  # numpy only: predict stays light

    h_vv = float(BowlPrior.default().h_mean[2])
    cost = math.expm1(h_vv * math.log(rounded / batch) ** 2)
    return (
        f"the rounded batch {_seqs(rounded)} lies outside the law's mean 95 % range "
        f"({_seqs(lo)} – {_seqs(hi)} sequences); by the released grids' curvature it costs "
        f"about {cost:.2%} in loss at the law's lr"
    )


def _formula(law: Law, which: str) -> str:
    f = law.lr_formula if which == "lr" else law.batch_formula
    if f is None:
        return "—"
    if f.form == "power":
        terms = " · ".join(f"{v}^{e:g}" for v, e in f.terms.items())
        text = f"{f.coefficient:g} · {terms}"
    else:
        terms = " ".join(f"{'+' if s >= 0 else '−'} {abs(s):g}·ln {v}" for v, s in f.terms.items())
        text = f"{f.coefficient:g} {terms}"
    if which == "batch":
        unit = law.batch_unit if law.batch_unit == "tokens" else f"sequences of {law.batch_seq_len}"
        text += f"  ({unit})"
    return text


def _range(items: Sequence[Interval], mass: float, fmt: Any, factor: float = 1.0) -> str:
    """``low – high`` of the interval of ``mass`` in ``items``, or ``—``."""
    i = next((i for i in items if i.mass == mass), None)
    return "—" if i is None else f"{fmt(i.low * factor)} – {fmt(i.high * factor)}"


def _factor(value: float | None, items: Sequence[Interval], mass: float = 0.95) -> str:
    """The factor f of the interval of ``mass`` (a central log-normal interval runs from
    value ÷ f to value × f), or ``—``."""
    i = next((i for i in items if i.mass == mass), None)
    return "—" if i is None or value is None else f"{math.sqrt(i.high / i.low):.2f}"


def optimum_note(law: Law, p: Prediction) -> str:
    """One line on what the optimum's interval holds at this scale (or why there is none)."""
    o = p.optimum
    if o is None:
        return f"no optimum interval: {p.optimum_missing}" if p.optimum_missing else ""
    coef = "the law's mean uncertainty + " if o.coefficients else ""
    widened = (
        f", its variance widened ×{o.widening:.2f} for extrapolation (κ = 1 + (d/ln 10)², "
        f"d = {o.distance:.2f} ln units outside the fitted range)"
        if o.distance > 0
        else " (inside the fitted range: not widened)"
    )
    no_cov = "" if o.coefficients else "; the card has no [covariance]: residual scatter only"
    return (
        f"{coef}the card's residual scatter of the optimum (sd {o.residual_sd[0]:.2f} ln lr, "
        f"{o.residual_sd[1]:.2f} ln batch){widened}{no_cov}"
    )


def print_prediction(console: Console, law: Law, p: Prediction) -> None:
    title = f"{law.title} at N={format_size(p.scale.N or 0)}, D={format_size(p.scale.D or 0)}"
    if p.missing:
        console.print(f"[bold]{title}[/bold]: cannot predict: {p.missing}")
        return
    table = Table(title=title, title_justify="left")
    table.add_column("quantity")
    table.add_column("prediction", justify="right")
    table.add_column("68 %", justify="right")
    table.add_column("95 %", justify="right")
    seq = p.scale.seq_len
    optimum = p.optimum
    opt_lr, opt_batch = ((), ()) if optimum is None else (optimum.lr, optimum.batch)
    rows = (
        (f"learning rate ({p.lr_meaning})", _lr(p.lr), p.lr_intervals, opt_lr, _lr, 1.0),
        ("batch (tokens)", _tokens(p.batch_tokens), p.batch_intervals, opt_batch, _tokens, 1.0),
        (
            f"batch (seq of {seq})",
            _seqs(p.batch_sequences),
            p.batch_intervals,
            opt_batch,
            _seqs,
            1 / seq,
        ),
    )
    for label, value, mean_iv, opt_iv, fmt, factor in rows:
        table.add_row(label, value, "", "")
        for name, items in (("  law's mean", mean_iv), ("  optimum", opt_iv)):
            if items:
                cells = (_range(items, mass, fmt, factor) for mass in (0.68, 0.95))
                table.add_row(name, "", *cells)
        table.rows[-1].end_section = True
    if p.batch_rounded_sequences is not None and p.batch_rounded_sequences != p.batch_sequences:
        table.add_row("batch, rounded (seq)", _seqs(p.batch_rounded_sequences), "", "")
    console.print(table)
    rounding = rounding_note(p)
    if rounding:
        console.print(f"[yellow]note:[/yellow] {rounding}", highlight=False)
    if p.lr_intervals:
        console.print(
            "law's mean: where the law's own mean lies at this scale, from the card's "
            "coefficient covariance (x_sᵀ Σ x_s) alone; not where this run's optimum is."
        )
    note = escape(optimum_note(law, p))  # it names card tables ([residual]): not markup
    if optimum is not None:
        console.print(f"optimum: where this run's optimum is: {note}; the samplers' prior.")
    elif note:
        console.print(note)
    if law.warning:
        console.print(f"[yellow]Warning:[/yellow] {escape(law.warning)}")
    if p.extrapolated:
        ranges = ", ".join(
            f"{v} ∈ [{format_size(law.validity[v][0])}, {format_size(law.validity[v][1])}]"
            for v in p.extrapolated
        )
        console.print(f"[yellow]Extrapolation:[/yellow] the law was fitted on {ranges}.")


def print_predictions(console: Console, laws: Sequence[Law], preds: Sequence[Prediction]) -> None:
    scale = preds[0].scale
    table = Table(
        title=f"All laws at N={format_size(scale.N or 0)}, D={format_size(scale.D or 0)}",
        title_justify="left",
    )
    # Fixed widths for the numbers, so that no law's name is cut short in 80 columns.
    table.add_column("law", min_width=max(len(law.name) for law in laws))
    table.add_column("lr", justify="right", width=8)
    table.add_column("batch (tokens)", justify="right", width=8)
    table.add_column(f"batch (seq of {scale.seq_len})", justify="right", width=9)
    table.add_column("lr 95 % ×/÷ mean", justify="right", width=8)
    table.add_column("lr 95 % ×/÷ optimum", justify="right", width=8)
    notes: list[str] = []
    for law, p in zip(laws, preds, strict=True):
        said = []
        if law.warning:
            said.append(f"[yellow]{escape(law.warning)}[/yellow]")
        if p.missing:
            said.append(escape(p.missing))
        if law.lr_meaning != "peak" and p.lr is not None:
            said.append(f"its lr is the {law.lr_meaning} lr, not the peak")
        if p.extrapolated:
            said.append(f"extrapolated in {', '.join(p.extrapolated)}")
        if p.lr is not None and p.optimum is not None and not p.optimum.coefficients:
            said.append(escape("no [covariance] on its card: optimum from residual scatter only"))
        name = law.name
        if said:
            notes.append(f"[{len(notes) + 1}] {law.name}: " + "; ".join(said))
            name += f" [{len(notes)}]"
        opt_iv = () if p.optimum is None else p.optimum.lr
        table.add_row(
            name,
            _lr(p.lr),
            _tokens(p.batch_tokens),
            _seqs(p.batch_sequences),
            _factor(p.lr, p.lr_intervals),
            _factor(p.lr, opt_iv),
        )
    console.print(table)
    for note in notes:
        console.print(note, highlight=False)
    console.print(
        escape(
            "lr 95 % ×/÷ f: from lr ÷ f to lr × f. mean: the law's mean, from the card's "
            "coefficient covariance alone; optimum: where this run's optimum is (that + the "
            "card's residual scatter, widened for extrapolation; --law NAME shows it in full). "
            "—: the card has no [covariance] (mean) or no [residual] (optimum), or no lr."
        ),
        highlight=False,
    )


def print_laws(console: Console, laws: Sequence[Law]) -> None:
    table = Table(title="Law cards", title_justify="left")
    table.add_column("name")
    table.add_column("citation")
    table.add_column("learning rate")
    table.add_column("batch")
    table.add_column("fitted on")
    unusable = [law for law in laws if not law.usable]
    for law in laws:
        fitted = ", ".join(
            f"{v} {format_size(lo)}–{format_size(hi)}" for v, (lo, hi) in law.validity.items()
        )
        name = law.name if law.usable else f"{law.name} (unusable)"
        table.add_row(
            name, law.citation.short(), _formula(law, "lr"), _formula(law, "batch"), fitted
        )
    console.print(table)
    for law in unusable:
        reason = escape(law.unusable_reason.rstrip("."))
        console.print(
            f"[red]Unusable[/red] {law.name}: {reason}. Listed for reference only: "
            "`predict --law all` leaves it out; predict, tune and bench refuse it.",
            highlight=False,
        )
    console.print("Show one with: steplaw-opt laws show NAME")


def _reflow(text: str) -> str:
    """A card's notes with the hard line breaks inside each paragraph and each "- " item joined,
    so the terminal wraps them at its own width; blank lines and items keep their breaks."""
    out: list[str] = []
    for paragraph in text.strip().split("\n\n"):
        items: list[str] = []
        for line in paragraph.splitlines():
            if line.startswith("- ") or not items:
                items.append(line.strip())
            else:
                items[-1] += " " + line.strip()
        out.append("\n".join(items))
    return "\n\n".join(out)


def print_law(console: Console, law: Law) -> None:
    console.print(f"[bold]{escape(law.title)}[/bold]  ({escape(law.name)})")
    if not law.usable:
        reason = escape(law.unusable_reason.rstrip("."))
        console.print(
            f"[red]Unusable:[/red] {reason}. It does not predict and does not serve as a prior; "
            "it is shown for reference."
        )
    c = law.citation
    cite = f"{c.authors} ({c.year}). {c.title}. {c.venue} {c.arxiv} {c.url}".rstrip()
    console.print(escape(cite))
    console.print(f"learning rate ({law.lr_meaning}): {_formula(law, 'lr')}")
    console.print(f"batch: {_formula(law, 'batch')}")
    for var, text in law.variables.items():
        console.print(f"  {var}: {escape(text)}")
    if law.compute:
        console.print(f"  C = {'6·N·D' if law.compute == '6ND' else 'M·D'}")
    for var, (lo, hi) in law.validity.items():
        console.print(f"fitted on {var} ∈ [{format_size(lo)}, {format_size(hi)}]")
    if law.covariance is not None:
        console.print("coefficient covariance: yes (intervals available)")
    if law.residual_sd is not None:
        console.print(
            f"residual scatter of the optimum: {law.residual_sd[0]:.3f} (ln lr), "
            f"{law.residual_sd[1]:.3f} (ln batch)"
        )
    if law.warning:
        console.print(f"[yellow]Warning:[/yellow] {escape(law.warning)}")
    if law.notes:
        console.print(escape(_reflow(law.notes)))  # notes name card tables ([batch]): not markup
    console.print(f"card: {escape(law.source)}")
