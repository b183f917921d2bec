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


def test_the_top_level_help_lists_every_command_with_a_whole_summary() -> None:
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "80", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    listed = lines[lines.index("Commands:") + 1 :]
    assert sorted(line.split()[0] for line in listed if line.strip()) == sorted(COMMANDS)
    assert not [line for line in listed if line.rstrip().endswith("...") or len(line) > 80]


def test_the_loss_pattern_example_is_on_one_line_to_copy() -> None:
    assert any("'loss=(?P<loss>[0-9.e+-]+)'" in line for line in _help("tune").splitlines())


def test_a_default_in_brackets_is_printed_not_taken_for_markup() -> None:
    text = " ".join(_help("tune").split())
    assert "[sqlite:///steplaw-opt.db]" in text
    assert "Optuna storage URL ." not in text


def test_flags_are_shown_as_flags() -> None:
    for line in _help("tune").splitlines():
        if line.strip().startswith(("--builtin", "--demo", "--no-mlflow", "--dry-run")):
            assert "<bool>" not in line and "BOOLEAN" not in line, line


def _commands() -> list[tuple[str, object]]:
    """Every command of the app, sub-commands (``laws show``) included."""
    import typer.main

    out = []
    for name, command in typer.main.get_command(app).commands.items():  # type: ignore[attr-defined]
        out.append((name, command))
        for sub, inner in getattr(command, "commands", {}).items():
            out.append((f"{name} {sub}", inner))
    return out


def test_every_option_and_argument_of_every_command_has_help() -> None:
    for name, command in _commands():
        params = command.params  # type: ignore[attr-defined]
        bare = [p.opts[0] for p in params if not getattr(p, "help", None)]
        assert bare == [], f"{name}: options without help: {bare}"


def test_fit_names_its_columns_and_seed() -> None:
    text = _help("fit")
    for option in ("--lr-col", "--batch-col", "--n-col", "--d-col", "--seed"):
        line = next(x for x in text.splitlines() if x.strip().startswith(option))
        words = line.split(maxsplit=2)  # option, type, help (then the default)
        assert len(words) == 3 and not words[2].startswith("[default"), line


def test_a_required_argument_is_named_as_in_its_arguments_section() -> None:
    result = CliRunner().invoke(app, ["laws", "show", "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert "Usage: steplaw-opt laws show [OPTIONS] NAME" in result.output
    assert "{" not in result.output and "NAME <str>" in result.output
