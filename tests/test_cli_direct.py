"""The direct path of ``steplaw-opt predict`` (steplaw_opt.cli._direct): it reads the options the
typer app would read, gives the command the values the app would give it, and leaves
everything else to the app."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
from typer.main import get_command

from steplaw_opt.cli._direct import direct_call, options, parse
from steplaw_opt.cli._predict import predict

TABLE = options(predict)


def typer_kwargs(args: list[str]) -> dict[str, Any]:
    """The keyword arguments the typer app passes to ``predict`` for ``predict ARGS``."""
    seen: dict[str, Any] = {}

    @functools.wraps(predict)
    def spy(**kwargs: Any) -> None:
        seen.update(kwargs)

    app = typer.Typer()
    app.command("predict")(spy)
    app.command("other")(lambda: None)
    get_command(app).main(["predict", *args], standalone_mode=False)
    return seen


def test_predict_takes_the_direct_path():
    assert TABLE is not None, "an option of predict stopped the direct path: see _direct.options"
    assert direct_call(["predict", "--params", "1B", "--tokens", "1T"]) is not None


def test_the_options_are_the_typer_commands():
    from steplaw_opt.cli import app

    command = get_command(app).commands["predict"]  # the command the app runs
    assert TABLE is not None
    click = {opt: p for p in command.params for opt in p.opts}
    assert set(TABLE) == set(click)
    for name, opt in TABLE.items():
        param = click[name]
        assert opt.dest == param.name
        assert opt.required == param.required
        assert (opt.kind is bool) == bool(getattr(param, "is_flag", False))
        assert param.secondary_opts == []
        if not opt.required:
            assert opt.default == param.default


ACCEPTED = [
    ["--params", "1B", "--tokens", "1T"],
    ["--tokens=100B", "--params=7e9", "--json"],
    ["--params", "7B", "--tokens", "1.4T", "--law", "all", "--round-batch", "pow2"],
    ["--tokens", "4B", "--d-model", "960", "--d-ff", "9368", "--n-layers", "7", "--plain-ffn"],
    ["--params", "1B", "--tokens", "1T", "--seq-len", "4096", "--n-heads", "0", "--vocab", "1"],
    ["--params", "1B", "--tokens", "1T", "--target-loss", "2.5"],
    ["--params", "1B", "--tokens", "1T", "--target-loss", ".5e1", "--round-batch", "64"],
    ["--params", "1B", "--tokens", "1T", "--target-loss", "3", "--active-params", "1e8"],
    ["--params", "", "--tokens", "1T", "--law", "x.toml"],
]


@pytest.mark.parametrize("args", ACCEPTED)
def test_the_direct_path_passes_what_the_typer_app_passes(args):
    assert TABLE is not None
    direct = parse(TABLE, args)
    expected = typer_kwargs(args)
    assert direct == expected
    assert {k: type(v) for k, v in direct.items()} == {k: type(v) for k, v in expected.items()}


LEFT_TO_TYPER = [
    ["--help"],
    ["--params", "1B"],  # --tokens missing
    ["--params", "1B", "--tokens", "1T", "--bogus"],
    ["--params", "1B", "--tokens", "1T", "extra"],
    ["--params", "1B", "--tokens", "1T", "--params", "2B"],  # given twice
    ["--params", "1B", "--tokens"],  # no value
    ["--params", "-7B", "--tokens", "1T"],
    ["--params=-7B", "--tokens", "1T"],
    ["--params", "1B", "--tokens", "1T", "--seq-len", "2k"],
    ["--params", "1B", "--tokens", "1T", "--seq-len", "2048.0"],
    ["--params", "1B", "--tokens", "1T", "--seq-len", "02048"],
    ["--params", "1B", "--tokens", "1T", "--seq-len", " 2048"],
    ["--params", "1B", "--tokens", "1T", "--target-loss", "inf"],
    ["--params", "1B", "--tokens", "1T", "--target-loss", "1e999"],
    ["--params", "1B", "--tokens", "1T", "--json=1"],
    ["--params", "1B", "--tokens", "1T", "--", "--json"],
    ["--params", "1B", "-t", "1T"],
]


@pytest.mark.parametrize("args", LEFT_TO_TYPER)
def test_anything_else_is_left_to_the_typer_app(args):
    assert TABLE is not None
    assert parse(TABLE, args) is None
    assert direct_call(["predict", *args]) is None


def test_other_commands_and_completion_go_to_the_typer_app(monkeypatch):
    assert direct_call([]) is None
    assert direct_call(["laws"]) is None
    assert direct_call(["tune", "--params", "1B", "--tokens", "1T"]) is None
    monkeypatch.setenv("_STEPLAW_OPT_COMPLETE", "bash_complete")
    assert direct_call(["predict", "--params", "1B", "--tokens", "1T"]) is None


def _cmd_min(n: Annotated[int, typer.Option("--n", min=1)] = 2) -> None: ...
def _cmd_envvar(n: Annotated[str, typer.Option("--n", envvar="N")] = "a") -> None: ...
def _cmd_callback(n: Annotated[str, typer.Option("--n", callback=lambda v: v)] = "a") -> None: ...
def _cmd_argument(n: Annotated[str, typer.Argument()] = "a") -> None: ...
def _cmd_list(n: Annotated[list[str] | None, typer.Option("--n")] = None) -> None: ...
def _cmd_path(n: Annotated[Path | None, typer.Option("--n")] = None) -> None: ...
def _cmd_on_flag(n: Annotated[bool, typer.Option("--n")] = True) -> None: ...
def _cmd_pair(n: Annotated[bool, typer.Option("--n/--no-n")] = False) -> None: ...
def _cmd_unnamed(n: Annotated[str, typer.Option()] = "a") -> None: ...
def _cmd_plain(n: str = "a") -> None: ...


NOT_PLAIN = [_cmd_min, _cmd_envvar, _cmd_callback, _cmd_argument, _cmd_list, _cmd_path,
             _cmd_on_flag, _cmd_pair, _cmd_unnamed, _cmd_plain]  # fmt: skip


@pytest.mark.parametrize("func", NOT_PLAIN, ids=lambda f: f.__name__)
def test_an_option_with_more_to_it_turns_the_direct_path_off(func):
    assert options(func) is None


def test_every_shipped_card_is_named_after_its_file():
    """load_law reads ``<name>.toml`` alone for a shipped name (a faster predict)."""
    from steplaw_opt.priors import list_laws, load_law

    for law in list_laws():
        assert law.source.endswith(f"/{law.name}.toml"), law.source
        assert load_law(law.name) is law
