"""``python -m steplaw_opt.cli``: the ``steplaw-opt`` command."""

from steplaw_opt.cli import main

main()
