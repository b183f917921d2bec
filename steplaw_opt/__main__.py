"""``python -m steplaw_opt``: the ``steplaw-opt`` command."""

from steplaw_opt.cli import main

main()
