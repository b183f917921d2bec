"""The ``steplaw-opt`` command line: a thin layer over the Python API.

One module per command (``_predict`` with ``laws``, ``_tune``, ``_worker``, ``_report``,
``_fit``, ``_bench``), each importing only typer at module level; this module builds the typer
app from them and turns every error a user can cause into one line naming the bad value, exit
code 2.
"""

from __future__ import annotations

import sys

import typer

try:  # typer >= 0.20 vendors its own click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer on real click
    from click import exceptions as click_exceptions  # type: ignore[no-redef]

from steplaw_opt.cli._bench import bench
from steplaw_opt.cli._common import fail, run_command
from steplaw_opt.cli._fit import fit
from steplaw_opt.cli._predict import laws_app, predict
from steplaw_opt.cli._report import report_command
from steplaw_opt.cli._tune import tune_command
from steplaw_opt.cli._worker import worker_command

app = typer.Typer(
    name="steplaw-opt",
    help="Optimal learning rate and batch size for LLM pre-training: a scaling law as the prior, "
    "a few short proxy runs to refine it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Help texts are plain: "[sqlite:///steplaw-opt.db]" is a default, not rich markup.
    rich_markup_mode=None,
)
app.add_typer(laws_app, name="laws")
# Short summaries for `steplaw-opt --help`: click cuts a docstring's first sentence at the
# terminal's width, mid-word; these fit 80 columns whole.
app.command("predict", short_help="Predict the optimal lr and batch size at a scale.")(predict)
app.command("bench", short_help="Score the methods on the released grids.")(bench)
app.command("tune", short_help="Refine the law's lr and batch with short proxy runs.")(tune_command)
app.command("worker", short_help="Run a shared study's planned trials, then exit.")(worker_command)
app.command("fit", short_help="Fit a law to your own runs.")(fit)
app.command("report", short_help="Print a study's refined optimum; write its plots.")(
    report_command
)


# --------------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> None:
    """Run the typer app on ``argv``: one-line errors with exit code 2, no tracebacks for bad
    input. (The console entry point, :func:`steplaw_opt.cli.main`, sends a plain ``predict``
    straight to the function and everything else here.)"""
    run_command(lambda: _app_call(argv))


def _app_call(argv: list[str] | None) -> object:
    try:
        return app(args=argv, standalone_mode=False, prog_name="steplaw-opt")
    except click_exceptions.ClickException as exc:
        if exc.__class__.__name__ == "NoArgsIsHelpError":
            sys.exit(2)  # typer already printed the help; exit as click does
        fail(exc.format_message().replace("\n", " "))
