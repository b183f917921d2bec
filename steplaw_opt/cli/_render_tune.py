"""Rich output for ``steplaw-opt tune``: the plan, live trials, and the refined optimum."""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Any

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from steplaw_opt._timing import builtin_flops, duration_text
from steplaw_opt.priors import Law
from steplaw_opt.scale import Scale
from steplaw_opt.sizes import format_size
from steplaw_opt.tune._plan import ProxyPlan


def _seq(x: float) -> str:
    """A batch in sequences: whole numbers when large, significant digits when small."""
    return f"{x:,.0f}" if x >= 10 else f"{x:.2g}"


def print_header(console: Console, target: Scale, law: Law, plan: ProxyPlan, source: str) -> None:
    p = law.predict(target)
    console.print(
        f"[bold]Target[/bold] N={format_size(target.N or 0)} D={format_size(target.D or 0)} "
        f"seq_len={target.seq_len} · objective: {source}"
    )
    if p.lr is not None and p.batch_tokens is not None:
        console.print(
            f"[bold]{law.title}[/bold] predicts lr {p.lr:.3g}, batch {format_size(p.batch_tokens)} "
            f"tokens ({p.batch_tokens / target.seq_len:,.0f} sequences)"
        )
    table = Table(title="Proxy plan", title_justify="left")
    for col in ("stage", "N", "D", "runs", "compute each", "compute"):
        table.add_column(col, justify="right")
    table.add_column("for", justify="left")
    for i, (stage, purpose) in enumerate(zip(plan.stages, plan.purposes(), strict=True), 1):
        table.add_row(
            str(i),
            format_size(stage.scale.N or 0),
            format_size(stage.scale.D or 0),
            str(stage.runs),
            f"{stage.cost:.3f}",
            f"{stage.compute:.3f}",
            purpose,
        )
    table.add_row("total", "", "", str(plan.total_runs), "", f"{plan.compute:.3f}", "")
    console.print(table)
    console.print(f"compute in target-run equivalents (budget {plan.budget:g})")


INFEASIBLE_SECONDS = 24 * 3600.0  # a plan longer than this on the machine at hand: say so


def _flops(device: str) -> float:
    return builtin_flops(device)


def plan_seconds(plan: ProxyPlan, target: Scale, device: str) -> float:
    """Order-of-magnitude wall time of ``plan`` with the built-in trainer on ``device``."""
    return 6.0 * float(target.N or 0) * float(target.D or 0) * plan.compute / _flops(device)


def print_wall_time(
    console: Console, plan: ProxyPlan, target: Scale, device: str, *, final_runs: int = 0
) -> None:
    """The built-in trainer's plan in time (plus ``final_runs`` full runs at the target after
    it: the demo's final check), and a warning when it cannot finish here."""
    seconds = plan_seconds(plan, target, device)
    console.print(
        f"wall time with the built-in trainer on {device}: about {_duration(seconds)} "
        f"(6·N·D FLOPs a run at ~{_flops(device):.0e} FLOP/s; an order of magnitude)"
    )
    if final_runs:
        full = final_runs * 6.0 * float(target.N or 0) * float(target.D or 0) / _flops(device)
        console.print(
            f"then {final_runs} full runs at the target for the final check: about "
            f"{_duration(full)} more"
        )
        seconds += full
    if seconds > INFEASIBLE_SECONDS:
        console.print(
            f"[yellow]warning:[/yellow] this plan is not feasible on this machine ({device}): "
            "the built-in trainer is for small targets and demos. Tune a smaller target, or run "
            "your own trainer where it trains (--command, docs/commands.md)."
        )


def print_time_plan(console: Console, doc: dict[str, Any], *, builtin: bool = False) -> None:
    """The plan in time (:func:`~steplaw_opt.tune._time.time_plan`): the time a resumed study
    has spent, the predicted time of the runs to go, and what the time budget fits."""
    from steplaw_opt.tune._time import TimeBudget

    budget = TimeBudget.from_dict(doc.get("budget"))
    spent, est, todo = doc["wall_seconds"], doc["estimate_seconds"], doc["runs_left"]
    measured = est is not None and doc["estimate_from"] != "the objective's own estimate"
    if spent > 0:
        gpu = f", {doc['gpu_hours']:.3g} GPU-hours" if budget.gpu_hours is not None else ""
        console.print(f"time spent so far: {_duration(spent)}{gpu} (the study's runs)")
    if est is not None and (measured or not builtin):
        runs = "run" if todo == 1 else "runs"
        console.print(
            f"time of the {todo} {runs} to go: about {_duration(est)}, one after the other "
            f"({doc['estimate_from']})"
        )
    if not budget.limited:
        return
    console.print(
        f"time budget {budget.describe()}: no run starts once the time spent plus the run's "
        "predicted time would pass it",
        highlight=False,
    )
    fits = doc.get("fits_runs")
    if fits is None:
        console.print(
            "  (no run measured yet: the first run always starts, and its time predicts the "
            "next ones)"
        )
    elif fits >= todo:
        console.print("  it fits the runs to go")
    else:
        console.print(
            f"  [yellow]it fits about {fits} of the {todo} runs to go[/yellow]: the others "
            "are skipped unless the runs are faster than predicted (a smaller --budget or "
            "--n-trials plans fewer runs; --batch-min higher makes runs at the batch floor faster)"
        )


class TrialDisplay:
    """One line per finished run above the live display of the running run (:class:`_Running`):
    which run of the plan and its point, and from its intermediate losses its step, latest
    loss, elapsed time and an estimate of the rest (elapsed × steps left ÷ steps done), the
    compute and time the study has spent, and a bar of the runs done."""

    def __init__(
        self, console: Console, total: int, *, enabled: bool = True, show_n: bool = False
    ) -> None:
        self.console = console
        self.enabled = enabled
        # a ladder runs several model sizes: each line says which one, not only its tokens
        self.show_n = show_n
        # the row stays within 80 columns with N shown ("N=12.5K D=1.25M" is 15)
        self._scale_width, self._lr_width = (15, 8) if show_n else (10, 9)
        self.progress = _RunProgress(
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not enabled,
        )
        self.task = self.progress.add_task("runs", total=total)
        self._header = False

    def __enter__(self) -> TrialDisplay:
        self.progress.__enter__()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.progress.__exit__(et, e, tb)

    def update(self, event: Any) -> None:
        if not self.enabled:
            return
        where = f"D={format_size(event.scale.D or 0)}"
        if self.show_n:
            where = f"N={format_size(event.scale.N or 0)} {where}"
        if event.phase in ("start", "progress"):
            self.progress.running = (event, where)
            return
        self.progress.running = None
        if not self._header:
            self.console.print(
                f"{'trial':>5}  {'scale':>{self._scale_width}}  {'lr':>{self._lr_width}}  "
                f"{'batch':>7}  {'loss':>9}  {'best here':>9}  {'compute':>7}  {'s':>6}"
            )
            self._header = True
        loss = f"{event.loss:.4f}" if event.loss is not None else f"[red]{event.failure}[/red]"
        best = f"{event.best:.4f}" if event.best is not None else "—"
        self.console.print(
            f"{event.number:>5}  {where:>{self._scale_width}}  {event.lr:>{self._lr_width}.3g}  "
            f"{event.batch_size:>7g}  {loss:>9}  {best:>9}  {event.compute_spent:>7.3f}  "
            f"{event.seconds:>6.1f}"
        )
        for note in getattr(event, "notes", ()):
            self.console.print(f"[yellow]{escape(note)}[/yellow]")
        self.progress.advance(self.task)


class _RunProgress(Progress):
    """The bar of runs done, with the running run (``running``: its event and scale) above it
    as :class:`_Running` lays it out for the terminal's width."""

    running: tuple[Any, str] | None = None

    def get_renderables(self) -> Iterable[RenderableType]:
        yield _Running(self.running, self.make_tasks_table(self.tasks))


class _Running:
    """The running run, laid out for the width at hand: on the bar's row when the whole
    :func:`run_line` fits beside it, else on a line of its own above the bar, and when not even
    that fits, as :func:`run_lines` (what runs; how it goes; the study's compute and time)."""

    def __init__(self, running: tuple[Any, str] | None, bar: Table) -> None:
        self.running, self.bar = running, bar

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if self.running is None:
            yield self.bar
            return
        width = options.max_width
        line = run_line(*self.running)
        if cell_len(line) + 1 + Measurement.get(console, options, self.bar).maximum <= width:
            row = Table.grid(padding=(0, 1))
            row.add_column(no_wrap=True)
            row.add_column()
            row.add_row(Text(line), self.bar)
            yield row
            return
        for text in run_lines(*self.running, width):
            yield Text(text, no_wrap=True, overflow="ellipsis")
        yield self.bar


_BREAK = "\0"  # where run_lines may break a line (run_line: a space)


def _parts(event: Any, where: str) -> list[str]:
    """The running run's parts, each with :data:`_BREAK` where it may break: what runs; how it
    goes (its step, loss, elapsed time and the rest: only once it reports); the study's
    compute and time spent (each only when known)."""
    what = (
        f"run {event.index + 1}/{event.planned} (trial {event.number}){_BREAK}at {where}:"
        f"{_BREAK}lr {event.lr:.3g},{_BREAK}batch {event.batch_size:g}"
    )
    going = ""
    if event.phase == "progress" and event.step is not None:
        steps = f"/{event.total_steps:,}" if event.total_steps else ""
        going = f"step {event.step:,}{steps},{_BREAK}loss {event.loss:.4f},"
        going += f"{_BREAK}{_duration(event.seconds)}"
        if event.total_steps and 0 < event.step < event.total_steps:
            left = event.seconds * (event.total_steps - event.step) / event.step
            going += f",{_BREAK}~{_duration(left)} left"
    spent = f"compute spent {event.compute_spent:.3g} of {event.budget:g}" if event.budget else ""
    study = f" ·{_BREAK}".join(p for p in (spent, time_text(event)) if p)
    return [what, going, study]


def run_line(event: Any, where: str) -> str:
    """The running run on one line: its place in the plan and point, its step, loss and time,
    then the study's compute and time (:func:`time_text`)."""
    return " · ".join(p for p in _parts(event, where) if p).replace(_BREAK, " ")


def run_lines(event: Any, where: str, width: int) -> list[str]:
    """:func:`run_line` for ``width`` columns: the one line when it fits, else its parts on
    lines of their own (what runs; how it goes; the study's compute and time), each broken
    between phrases (never inside a number or a duration) and continued indented."""
    line = run_line(event, where)
    if cell_len(line) <= width:
        return [line]
    lines: list[str] = []
    for part in _parts(event, where):
        if not part:
            continue
        words = part.split(_BREAK)
        lines.append(words[0])
        for word in words[1:]:
            if cell_len(lines[-1]) + 1 + cell_len(word) <= width:
                lines[-1] += " " + word
            else:
                lines.append("  " + word)
    return lines


def time_text(event: Any) -> str:
    """``time spent 3 min 10 s of 45 min 00 s, about 4 min 02 s left``: the study's wall time
    spent (of the time budget), its GPU-hours against a GPU-hour budget, and the predicted rest
    (empty before the study's time is known; no rest before a run has been measured)."""
    spent = getattr(event, "time_spent", None)
    if spent is None:
        return ""
    budget = getattr(event, "time_budget", None)
    text = f"time spent {_duration(spent)}"
    if budget is not None and budget.seconds is not None:
        text += f" of {_duration(budget.seconds)}"
    if budget is not None and budget.gpu_hours is not None and event.gpu_hours is not None:
        text += f",{_BREAK}{event.gpu_hours:.3g} of {budget.gpu_hours:g} GPU-hours"
    if event.time_left is not None:
        text += f",{_BREAK}about {_duration(event.time_left)} left"
    return text


def _duration(seconds: float) -> str:
    return duration_text(seconds)


def print_result(console: Console, result: Any) -> None:
    opt = result.refined
    seq = opt.seq_len
    table = Table(title="Refined optimum at the target", title_justify="left")
    table.add_column("quantity")
    table.add_column("law", justify="right")
    table.add_column("refined", justify="right")
    table.add_column("95 % interval", justify="right")
    table.add_column(f"plateau (≤ {opt.plateau_eps:.2%})", justify="right")
    table.add_row(
        "learning rate",
        f"{result.law_lr:.3g}",
        f"[bold]{opt.lr:.3g}[/bold]",
        f"{opt.lr_interval_95[0]:.3g} – {opt.lr_interval_95[1]:.3g}",
        f"{opt.plateau_lr[0]:.3g} – {opt.plateau_lr[1]:.3g}",
    )
    # The batch a user trains with is a whole number of sequences: both batch rows show that
    # one (the intervals and the plateau stay continuous).
    rounded = opt.batch_sequences_rounded
    table.add_row(
        "batch (tokens)",
        format_size(result.law_batch_tokens),
        f"[bold]{format_size(rounded * seq)}[/bold]",
        f"{format_size(opt.batch_tokens_interval_95[0])} – "
        f"{format_size(opt.batch_tokens_interval_95[1])}",
        f"{format_size(opt.plateau_batch_tokens[0])} – {format_size(opt.plateau_batch_tokens[1])}",
    )
    table.add_row(
        f"batch (sequences of {seq})",
        f"{result.law_batch_tokens / seq:,.0f}",
        f"[bold]{rounded:,.0f}[/bold]",
        f"{_seq(opt.batch_tokens_interval_95[0] / seq)} – "
        f"{_seq(opt.batch_tokens_interval_95[1] / seq)}",
        f"{_seq(opt.plateau_batch_tokens[0] / seq)} – {_seq(opt.plateau_batch_tokens[1] / seq)}",
    )
    console.print(table)
    for note in [*getattr(opt, "notes", ()), *result.extras.get("notes", ())]:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    if opt.predicted_loss is not None:
        console.print(f"predicted loss at the target: {opt.predicted_loss:.4f}")
    seconds = result.extras.get("run_seconds")
    took = f"; the runs took {_duration(seconds)}" if seconds else ""
    console.print(
        f"{result.n_complete} runs finished, {result.n_failed} failed; compute spent "
        f"{result.compute_spent:.3f} target-run equivalents{took}."
    )
    for line in time_summary(result.extras.get("time"), result.plan.total_runs):
        console.print(line, highlight=False)
    console.print(f"Recorded in study [bold]{result.study_name}[/bold] at")
    console.print(f"  {result.storage}", highlight=False, markup=False, soft_wrap=True)
    print_mlflow(console, result.extras.get("mlflow"))


def time_summary(doc: dict[str, Any] | None, planned: int) -> list[str]:
    """The time budget's lines of the final summary: what it was and what was spent, and when
    it stopped the study, why and how many planned runs were not started."""
    from steplaw_opt.tune._time import TimeBudget

    if not doc:
        return []
    budget = TimeBudget.from_dict(doc.get("budget"))
    if not budget.limited:
        return []
    spent = f"spent {_duration(doc['wall_seconds'])} of wall time"
    if budget.gpu_hours is not None:
        spent += f" and {doc['gpu_hours']:.3g} GPU-hours"
    if not doc.get("limited"):
        return [f"Time budget {budget.describe()}: {spent}; it did not stop a run."]
    skipped = int(doc.get("skipped_runs") or 0)
    return [
        f"[yellow]Time-limited:[/yellow] the time budget ({budget.describe()}) stopped the "
        f"study: {doc['stop']}; {skipped} of the {planned} planned runs were not started. "
        "The refined optimum uses the runs that finished; the same command with a larger "
        "time budget resumes the study and runs the rest."
    ]


def print_mlflow(console: Console, where: dict[str, Any] | None) -> None:
    """Where the MLflow record is: the parent run, and how to look at it."""
    if not where or not where.get("enabled"):
        return
    if not where.get("run_id"):
        console.print(f"[yellow]Not recorded in MLflow[/yellow] ({where['tracking_uri']} failed).")
        return
    state = "" if where.get("recorded") else " [yellow](incomplete: MLflow failed)[/yellow]"
    # Lines a reader copies (a URI, a command) are never wrapped (soft_wrap): not at 80
    # columns, not into a pipe.
    console.print(
        f"MLflow: run [bold]{where['run_id']}[/bold] in experiment {where['experiment']!r} "
        f"({where['nested_runs']} trial runs){state}",
        highlight=False,
    )
    console.print(f"  at {where['tracking_uri']}", highlight=False, markup=False, soft_wrap=True)
    if "run_url" in where:
        console.print(f"  open {where['run_url']}", highlight=False, markup=False, soft_wrap=True)
    elif "ui" in where:
        console.print(f"  view with: {where['ui']}", highlight=False, markup=False, soft_wrap=True)


def print_demo_check(console: Console, check: dict[str, Any]) -> None:
    law, refined = check["law"]["loss"], check["refined"]["loss"]
    table = Table(title="Demo check: one full target run at each point", title_justify="left")
    for col in ("point", "lr", "batch", "held-out loss", "seconds"):
        table.add_column(col, justify="right")
    for name in ("law", "refined"):
        c = check[name]
        table.add_row(
            name, f"{c['lr']:.3g}", str(c["batch_size"]), f"{c['loss']:.4f}", f"{c['seconds']:.0f}"
        )
    console.print(table)
    console.print(
        f"The refined optimum's loss is {100 * (1 - refined / law):.1f} % below the law's point "
        "at the target."
        if refined < law
        else f"The law's point was not beaten here ({refined:.4f} vs {law:.4f})."
    )
