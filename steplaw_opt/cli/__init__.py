"""The ``steplaw-opt`` command line (typer): ``app`` and the console entry point ``main``.

``python -m steplaw_opt`` and ``python -m steplaw_opt.cli`` run the same program as the
``steplaw-opt`` script. ``app`` loads on first use: a plain ``steplaw-opt predict`` goes
straight to the command without building the typer app (:mod:`steplaw_opt.cli._direct`).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from steplaw_opt._lazy import lazy_getattr
from steplaw_opt.cli._common import run_command
from steplaw_opt.cli._direct import direct_call

if TYPE_CHECKING:
    from steplaw_opt.cli._app import app


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one-line errors with exit code 2, no tracebacks for bad input."""
    call = direct_call(sys.argv[1:] if argv is None else argv)
    if call is not None:
        run_command(call)
    from steplaw_opt.cli._app import main as app_main

    app_main(argv)


_LAZY = {"app": "steplaw_opt.cli._app"}

__getattr__ = lazy_getattr(__name__, _LAZY)

__all__ = ["app", "main"]
