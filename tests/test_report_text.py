"""What ``steplaw-opt report`` prints, without a study: the refined optimum with tune's numbers
and notes, tables within 80 columns when piped, and failure reasons on one line each."""

from __future__ import annotations

import io
from dataclasses import replace
from types import SimpleNamespace

from rich.console import Console

from steplaw_opt.cli._render import failure_line
from steplaw_opt.cli._render_tune import print_result
from steplaw_opt.cli._report import _print_text, to_markdown
from steplaw_opt.samplers import RefinedOptimum
from steplaw_opt.tune._result import TrialEvent

SEQ = 128
TRACEBACK = (
    'exit code 1: Traceback (most recent call last): |   File "/home/me/nanoGPT/train.py", '
    "line 264, in <module> |     losses = estimate_loss() |              ^^^^^^^^^^^^^^^ | "
    '  File "/home/me/nanoGPT/train.py", line 220, in estimate_loss | '
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB "
    "total capacity; 77.2 GiB already allocated) | ^^^^^"
)


def _optimum(**changes: object) -> RefinedOptimum:
    opt = RefinedOptimum(
        lr=0.014463, batch_tokens=3.2 * SEQ, batch_sequences=3.2, batch_sequences_rounded=3.2,
        seq_len=SEQ, u=0.1, v=-0.2, predicted_loss=2.995943,
        lr_interval_68=(0.0119, 0.0176), lr_interval_95=(0.009871, 0.021234),
        batch_tokens_interval_68=(2.8 * SEQ, 3.7 * SEQ),
        batch_tokens_interval_95=(2.31 * SEQ, 4.44 * SEQ), plateau_eps=0.0025,
        plateau_lr=(0.01123, 0.01871), plateau_batch_tokens=(2.34 * SEQ, 4.37 * SEQ),
        n_observations=9, law_lr=0.012, law_batch_tokens=4 * SEQ, best_observed=None,
    )  # fmt: skip
    return replace(opt, **changes)


def _doc(opt: RefinedOptimum, trials: list[dict] | None = None) -> dict:
    return {
        "study_name": "s1",
        "storage": "sqlite:///steplaw-opt.db",
        "target": {"N": 1e5, "D": 6.25e4, "seq_len": SEQ},
        "law": "step-law",
        "refined_optimum": opt.to_dict(),
        "trials": trials or [],
        "plots": [],
    }


def _report(doc: dict, width: int = 80) -> str:
    out = io.StringIO()
    _print_text(doc, Console(file=out, width=width, color_system=None))
    return out.getvalue()


def _tune(opt: RefinedOptimum) -> str:
    result = SimpleNamespace(
        refined=opt, law_lr=opt.law_lr, law_batch_tokens=opt.law_batch_tokens, extras={},
        n_complete=9, n_failed=0, compute_spent=0.5, plan=SimpleNamespace(total_runs=9),
        study_name="s1", storage="sqlite:///steplaw-opt.db",
    )  # fmt: skip
    out = io.StringIO()
    print_result(Console(file=out, width=200, color_system=None), result)
    return out.getvalue()


def _cells(text: str, label: str) -> list[str]:
    """The cells of the table row that starts with ``label``."""
    line = next(line for line in text.splitlines() if line.strip("│ ").startswith(label))
    return [c.strip() for c in line.split("│") if c.strip()]


def test_report_prints_the_optimum_with_tunes_numbers() -> None:
    """lr 0.0145 (not 0.01446), loss 2.9959 (not 2.996), a plateau of 2.3 – 4.4 sequences (not
    2 – 4): the same cells as tune's table, which has one column more (the law's)."""
    opt = _optimum()
    report, tune = _report(_doc(opt)), _tune(opt)
    for label in ("learning rate", "batch (tokens)", "batch (sequences of 128)"):
        assert _cells(report, label) == [_cells(tune, label)[0], *_cells(tune, label)[2:]]
    assert _cells(report, "learning rate")[1:] == ["0.0145", "0.00987 – 0.0212", "0.0112 – 0.0187"]
    assert _cells(report, "batch (sequences of 128)")[2:] == ["2.3 – 4.4", "2.3 – 4.4"]
    assert "predicted loss at the target: 2.9959" in report and "2.9959" in tune
    assert "plateau (≤ 0.25%)" in report and "plateau (≤ 0.25%)" in tune


def test_the_batch_rows_show_the_rounded_batch_a_user_trains_with() -> None:
    """3.2 sequences round to 3: the tokens row says 384 (3 × 128), not 410, in both tables."""
    opt = _optimum(batch_sequences_rounded=3.0)
    for text in (_report(_doc(opt)), _tune(opt)):
        tokens, sequences = _cells(text, "batch (tokens)"), _cells(text, "batch (sequences of 128)")
        assert "384" in tokens and "410" not in tokens
        assert "3" in sequences


def test_report_prints_the_refined_optimums_notes_as_tune_does() -> None:
    note = (
        "the rounded batch 400 lies outside the batch's 95 % interval (419–586 sequences): the "
        "rounding costs more than the uncertainty; consider another rounding"
    )
    opt = _optimum(batch_sequences_rounded=400.0, notes=(note,))
    flat = " ".join(_report(_doc(opt)).split())
    assert f"note: {note}" in flat
    assert f"note: {note}" in " ".join(_tune(opt).split())
    assert f"- note: {note}" in to_markdown(_doc(opt))


def _trials(n: int = 12) -> list[dict]:
    rows = []
    for i in range(n):
        rows.append({
            "trial": i, "state": "FAIL" if i == 3 else "COMPLETE", "D": 2.5e9 * (1 + i % 3),
            "lr": 0.000961834 * (1 + i / 7), "batch_size": 66.0 + i, "loss": None if i == 3
            else 6.00391 + i / 1000, "gap": None if i == 3 else 0.01033 * i, "u": -1.0412 + i / 9,
            "v": -0.000281431 * i, "failure": TRACEBACK if i == 3 else None,
        })  # fmt: skip
    return rows


def test_piped_report_fits_80_columns_and_keeps_every_number(capsys) -> None:
    """Piped (not a terminal) the tables are 80 columns wide, and nothing is cut: each trial's
    numbers are all there, the failure on one line of its own under the table."""
    doc = _doc(_optimum(lr=0.000163221, lr_interval_95=(0.000101, 0.000457)), _trials())
    _print_text(doc)
    text = capsys.readouterr().out
    assert max(len(line) for line in text.splitlines()) <= 80, text
    for row in doc["trials"]:
        line = next(
            x for x in text.splitlines() if x.split()[:2] == [str(row["trial"]), row["state"]]
        )
        assert f"{row['lr']:.3g}" in line and f"{row['batch_size']:g}" in line
        if row["loss"] is not None:
            assert f"{row['loss']:.4f}" in line and f"{row['v']:.3g}" in line
    failed = [x for x in text.splitlines() if x.startswith("trial 3 failed: ")]
    assert failed == [failed[0]] and "torch.OutOfMemoryError: CUDA out of memory" in failed[0]
    assert "^^^" not in text and "train.py" not in text


def test_a_failure_is_the_exceptions_line_cut_to_one_line() -> None:
    assert failure_line(TRACEBACK, 200).startswith("torch.OutOfMemoryError: CUDA out of memory.")
    assert "|" not in failure_line(TRACEBACK, 200)
    assert failure_line(TRACEBACK, 30) == "torch.OutOfMemoryError: CUDA…"
    assert failure_line("diverged") == "diverged"
    assert failure_line("exit code 137: Killed | ^^^^") == "exit code 137: Killed"
    assert failure_line("line one\nline two") == "line two"
    assert failure_line(None) == ""
    assert len(failure_line("x" * 10**6, 80)) == 80


def test_markdown_cells_hold_one_line_and_no_pipe() -> None:
    md = to_markdown(_doc(_optimum(), _trials(4)))
    row = next(line for line in md.splitlines() if line.startswith("| 3 | FAIL |"))
    reason = TRACEBACK.split(" | ")[-2]  # the exception's line, whole: Markdown has no width
    assert row.endswith(f"| {reason} |")
    assert row.count("|") == 11


def test_tunes_trial_line_shows_the_exception_line_within_the_width() -> None:
    """A short reason stands in the loss column; a long one is ``failed`` there and its
    exception's line is the next line, within the width; neither is read as markup."""
    from steplaw_opt import Scale
    from steplaw_opt.cli._render_tune import TrialDisplay
    from steplaw_opt.cli._tune import trial_printer

    event = TrialEvent(
        number=3, index=3, planned=9, scale=Scale(N=1e5, D=6.25e4, seq_len=SEQ), lr=0.0145,
        batch_size=4.0, loss=None, failure=TRACEBACK + " [bold]x[/bold]", best=None,
        compute_spent=0.3, seconds=12.0, phase="end",
    )  # fmt: skip
    out = io.StringIO()
    console = Console(file=out, width=80, color_system=None)
    with TrialDisplay(console, 9) as display:
        on_trial = trial_printer(display, console)
        on_trial(event)
        on_trial(replace(event, number=4, failure="diverged [red]x[/red]"))
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    assert max(len(line) for line in lines) <= 80, lines
    three = next(i for i, line in enumerate(lines) if line.split()[:1] == ["3"])
    assert "failed" in lines[three] and "Traceback" not in lines[three]
    assert lines[three + 1].startswith("      ↳ torch.OutOfMemoryError: CUDA out of memory.")
    assert "^^^" not in out.getvalue() and "train.py" not in out.getvalue()
    assert any("diverged [red]x[/red]" in line for line in lines)
    assert event.failure == TRACEBACK + " [bold]x[/bold]"  # the event itself keeps it whole
