"""``--help`` a person reads: defaults in brackets survive, flags look like flags, every option
says what it is, and nothing wraps past 80 columns."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from steplaw_opt.cli._app import app

COMMANDS = ["tune", "worker", "report", "fit", "predict", "bench", "laws"]


def _help(command: str) -> str:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "80", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_help_fits_80_columns(command: str) -> None:
    long = [line for line in _help(command).splitlines() if len(line) > 80]
    assert long == []


def test_a_default_in_brackets_is_printed_not_taken_for_markup() -> None:
    text = " ".join(_help("tune").split())
    assert "[sqlite:///steplaw-opt.db]" in text
    assert "Optuna storage URL ." not in text


def test_flags_are_shown_as_flags() -> None:
    for line in _help("tune").splitlines():
        if line.strip().startswith(("--builtin", "--demo", "--no-mlflow", "--dry-run")):
            assert "<bool>" not in line and "BOOLEAN" not in line, line


def test_every_option_of_tune_and_worker_has_help() -> None:
    import typer.main

    for name in ("tune", "worker"):
        command = typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]
        bare = [p.opts[0] for p in command.params if not getattr(p, "help", None)]
        assert bare == [], f"{name}: options without help: {bare}"
