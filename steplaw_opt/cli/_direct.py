"""A direct call for ``steplaw-opt predict``: its plain options parsed from the function's own
signature, without building the typer app.

Typer coerces every option through a pydantic ``TypeAdapter`` and builds the click command of
every sub-command first; together that is more than ``import typer, rich, numpy`` costs, for a
command that computes a power law and prints a table (``steplaw-opt bench --startup`` prints
both). So :func:`direct_call` reads the options the typer app would read — the names, the
defaults and the types come from the typer annotations on the function, interpreted by typer's
own ``get_params_from_function`` — and returns the call, or ``None`` for anything it does not
recognise: ``--help``, an unknown or repeated option, a value that starts with ``-``, a number
that is not plainly written, a missing required option, or an option with more to it than a
name, a help text and a default (a callback, an environment variable, bounds, a prompt …).
``None`` sends the arguments to the typer app, which prints the help or its usual one-line
error: this path only ever sees arguments the app would accept, and gives the command the
values the app would give it (a test checks both against the typer app). The call ends as the
app's would: Ctrl-C is exit code 130, a closed pipe exit code 1 with no traceback.
"""

from __future__ import annotations

import errno
import importlib
import math
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# Commands that take the direct path: name → (module, function).
DIRECT = {"predict": ("steplaw_opt.cli._predict", "predict")}

# Option settings that change nothing in parsing (help and display only).
_DISPLAY_ONLY = frozenset(
    {
        "default",
        "param_decls",
        "help",
        "hidden",
        "metavar",
        "rich_help_panel",
        "show_default",
        "show_envvar",
        "show_choices",
    }
)
_INT = re.compile(r"0|[1-9][0-9]{0,17}")
_FLOAT = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")
_NO = object()  # a value this path leaves to the typer app


@dataclass(frozen=True)
class Opt:
    """One option of a command: the parameter it fills, its kind and its default."""

    dest: str
    kind: type  # str, int, float or bool (a flag)
    default: Any
    required: bool

    def coerce(self, text: str) -> Any:
        """The value typer gives the parameter for ``text``, or ``_NO`` to leave it to typer."""
        if text.startswith("-"):
            return _NO
        if self.kind is str:
            return text
        if self.kind is int:
            return int(text) if _INT.fullmatch(text) else _NO
        value = float(text) if _FLOAT.fullmatch(text) else math.nan
        return value if math.isfinite(value) else _NO


def options(func: Callable[..., Any]) -> dict[str, Opt] | None:
    """``--name`` → :class:`Opt` for every parameter of a typer command, or ``None`` when a
    parameter is not a plain option (an argument, a list, a type other than str, int, float
    or bool, a bool with an on/off pair, any setting beyond names, help and default)."""
    try:
        import typer
        from typer.models import OptionInfo
        from typer.utils import get_params_from_function

        plain = vars(typer.Option())
        params = get_params_from_function(func)
    except Exception:  # another typer: the app parses everything
        return None
    table: dict[str, Opt] = {}
    for name, meta in params.items():
        info = meta.default
        if not isinstance(info, OptionInfo) or not info.param_decls:
            return None
        if any(v != plain.get(k) for k, v in vars(info).items() if k not in _DISPLAY_ONLY):
            return None
        kind, optional = _kind(meta.annotation)
        required = info.default is ...
        if kind is None or (kind is bool and (optional or info.default is not False)):
            return None  # a flag that is on by default turns off when given: the app's job
        if not required and not (info.default is None or type(info.default) is kind):
            return None
        for decl in info.param_decls:
            if not decl.startswith("--") or "/" in decl or "=" in decl or decl in table:
                return None
            table[decl] = Opt(name, kind, None if required else info.default, required)
    return table


def _kind(annotation: Any) -> tuple[type | None, bool]:
    """(the base type, whether ``None`` is allowed) for ``T`` or ``T | None``."""
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        if len(args) != 1:
            return None, optional
        annotation = args[0]
    return (annotation if annotation in (str, int, float, bool) else None), optional


def parse(table: dict[str, Opt], args: Sequence[str]) -> dict[str, Any] | None:
    """The keyword arguments for ``args``, or ``None`` to leave them to the typer app."""
    values: dict[str, Any] = {}
    i = 0
    while i < len(args):
        name, eq, text = args[i].partition("=")
        opt = table.get(name)
        if opt is None or opt.dest in values:
            return None  # --help, an unknown option, a stray value, an option given twice
        if opt.kind is bool:
            if eq:
                return None
            value: Any = True
            i += 1
        elif eq:
            value = opt.coerce(text)
            i += 1
        elif i + 1 < len(args):
            value = opt.coerce(args[i + 1])
            i += 2
        else:
            return None
        if value is _NO:
            return None
        values[opt.dest] = value
    for opt in table.values():
        if opt.dest not in values:
            if opt.required:
                return None
            values[opt.dest] = opt.default
    return values


def direct_call(argv: Sequence[str]) -> Callable[[], Any] | None:
    """The command ``argv`` asks for, ready to run, when it can skip the typer app; else
    ``None``."""
    if not argv or argv[0] not in DIRECT or "_STEPLAW_OPT_COMPLETE" in os.environ:
        return None  # (the variable asks click for shell completion)
    module, name = DIRECT[argv[0]]
    func = getattr(importlib.import_module(module), name)
    table = options(func)
    kwargs = None if table is None else parse(table, argv[1:])
    if kwargs is None:
        return None
    return lambda: invoke(func, kwargs)


def invoke(func: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """``func(**kwargs)`` ending as in typer's ``main(standalone_mode=False)``: end of input is
    an abort, Ctrl-C and ``typer.Exit`` return their exit code, a closed pipe exits with 1."""
    import typer

    try:
        return func(**kwargs)
    except EOFError as exc:
        print(file=sys.stderr)
        raise typer.Abort() from exc
    except KeyboardInterrupt:
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
        sys.stdout = _Pacified(sys.stdout)
        sys.stderr = _Pacified(sys.stderr)
        sys.exit(1)


class _Pacified:
    """A stream whose ``flush`` ignores a closed pipe (the interpreter flushes at exit)."""

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped

    def flush(self) -> None:
        try:
            self.wrapped.flush()
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                raise

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.wrapped, attr)
