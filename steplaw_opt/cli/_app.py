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
from steplaw_opt.cli._fit import fit
from steplaw_opt.cli._predict import laws_app, predict
from steplaw_opt.cli._report import report_command
from steplaw_opt.cli._tune import tune_command
from steplaw_opt.cli._worker import worker_command
from steplaw_opt.errors import SteplawInputError

app = typer.Typer(
    name="steplaw-opt",
    help="Optimal learning rate and batch size for LLM pre-training: a scaling law as the prior, "
    "a few short proxy runs to refine it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(laws_app, name="laws")
app.command("predict")(predict)
app.command("bench")(bench)
app.command("tune")(tune_command)
app.command("worker")(worker_command)
app.command("fit")(fit)
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
