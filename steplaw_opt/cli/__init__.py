"""The ``steplaw-opt`` command line (typer): ``app`` and the console entry point ``main``.

``python -m steplaw_opt`` and ``python -m steplaw_opt.cli`` run the same program as the
``steplaw-opt`` script.
"""

from steplaw_opt.cli._app import app, main

__all__ = ["app", "main"]
