"""Options and parsing shared by the CLI's commands (imports only typer at module level)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import Annotated, Any, NoReturn

import typer

from steplaw_opt.errors import SteplawInputError

ParamsOpt = Annotated[
    str | None,
    typer.Option("--params", help="Non-embedding parameters N: 7B, 400M, 7e9 (or give a shape)."),
]
TokensOpt = Annotated[str, typer.Option("--tokens", help="Training tokens D: 1.4T, 100B, 1e11.")]
SeqLenOpt = Annotated[int, typer.Option("--seq-len", help="Sequence length in tokens.")]
DModelOpt = Annotated[int | None, typer.Option("--d-model", help="Shape: hidden size.")]
DFfOpt = Annotated[int | None, typer.Option("--d-ff", help="Shape: feed-forward hidden size.")]
NLayersOpt = Annotated[int | None, typer.Option("--n-layers", help="Shape: number of layers.")]
NHeadsOpt = Annotated[int | None, typer.Option("--n-heads", help="Shape: attention heads.")]
VocabOpt = Annotated[int | None, typer.Option("--vocab", help="Shape: vocabulary size.")]
PlainFfnOpt = Annotated[
    bool, typer.Option("--plain-ffn", help="Two-matrix MLP instead of a gated (SwiGLU) FFN.")
]
ActiveOpt = Annotated[
    str | None,
    typer.Option("--active-params", help="MoE: active non-embedding parameters per token."),
]
TargetLossOpt = Annotated[
    float | None, typer.Option("--target-loss", help="Target loss, for laws written in the loss.")
]


def build_scale(
    params: str | None,
    tokens: str,
    seq_len: int,
    d_model: int | None = None,
    d_ff: int | None = None,
    n_layers: int | None = None,
    n_heads: int | None = None,
    vocab: int | None = None,
    plain_ffn: bool = False,
    active_params: str | None = None,
    target_loss: float | None = None,
) -> Any:
    """A :class:`~steplaw_opt.Scale` from command-line text, validated."""
    from steplaw_opt.scale import Scale
    from steplaw_opt.sizes import parse_size

    return Scale(
        N=parse_size(params, "--params") if params is not None else None,
        D=parse_size(tokens, "--tokens"),
        seq_len=seq_len,
        d_model=d_model,
        d_ff=d_ff,
        n_layers=n_layers,
        n_heads=n_heads,
        vocab_size=vocab,
        gated_ffn=not plain_ffn,
        active_params=parse_size(active_params, "--active-params") if active_params else None,
        target_loss=target_loss,
    )


def parse_rounding(text: str) -> Any:
    """``--round-batch`` as ``"none"``, ``"pow2"`` or ``k``, checked now: a value the rounding
    refuses must stop the command before any run, not after the last one."""
    from steplaw_opt.priors._law import MAX_ROUNDING

    if text in ("none", "pow2"):
        return text
    try:
        k = int(text) if len(text) <= 20 else 0
    except ValueError:
        k = 0
    if not 0 < k <= MAX_ROUNDING:
        shown = text if len(text) <= 40 else text[:39] + "…"
        raise SteplawInputError(
            "--round-batch must be none, pow2 or a positive integer up to "
            f"{MAX_ROUNDING:,}, got {shown!r}"
        )
    return k


def console() -> Any:
    """A rich console on standard output (rich is imported when a command prints)."""
    from rich.console import Console

    return Console()


def stopped(console: Any, exc: KeyboardInterrupt, what: str) -> typer.Exit:
    """The exit for a run stopped by Ctrl-C or a signal (``exc.signame``, ``exc.exit_code``
    from :func:`~steplaw_opt.tune._workers.stop_signals`), after one line saying so:
    ``[what] (by).`` followed by ``what`` happens next."""
    by = getattr(exc, "signame", "Ctrl-C")
    with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
        console.print(what.format(by=by))
    return typer.Exit(getattr(exc, "exit_code", 130))


def fail(message: str) -> NoReturn:
    """Print ``steplaw-opt: error: message`` on standard error and exit with code 2."""
    print(f"steplaw-opt: error: {message}", file=sys.stderr)
    sys.exit(2)


def run_command(call: Callable[[], Any]) -> NoReturn:
    """Run a command and exit as the console entry point does: an integer result is the exit
    code; bad input is one line and exit code 2 (no traceback); Ctrl-C is exit code 130."""
    try:
        result = call()
    except SteplawInputError as exc:
        fail(str(exc).splitlines()[0])
    except typer.Abort:
        print("steplaw-opt: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("steplaw-opt: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(result if isinstance(result, int) else 0)
