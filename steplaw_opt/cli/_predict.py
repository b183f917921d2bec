"""``steplaw-opt predict`` and ``steplaw-opt laws``: what the law cards say, no run needed.

Kept light on purpose: a prediction imports the law cards and rich, never torch, BoTorch, Optuna's
samplers or MLflow.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import typer
from typer.core import TyperArgument, TyperCommand

from steplaw_opt.cli._common import (
    ActiveOpt,
    DFfOpt,
    DModelOpt,
    NHeadsOpt,
    NLayersOpt,
    ParamsOpt,
    PlainFfnOpt,
    SeqLenOpt,
    TargetLossOpt,
    TokensOpt,
    VocabOpt,
    build_scale,
    parse_rounding,
)
from steplaw_opt.cli._common import console as _console
from steplaw_opt.errors import SteplawInputError

laws_app = typer.Typer(
    help="List the law cards, or show one.", invoke_without_command=True, rich_markup_mode=None
)


# --------------------------------------------------------------------------------- predict
def predict(
    tokens: TokensOpt,
    params: ParamsOpt = None,
    seq_len: SeqLenOpt = 2048,
    law: Annotated[
        str, typer.Option("--law", help="A law name, 'all', or a path to a card (.toml).")
    ] = "step-law",
    round_batch: Annotated[
        str,
        typer.Option(
            "--round-batch",
            help="Round the batch in sequences: none, pow2, or k (a multiple of k).",
        ),
    ] = "none",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    d_model: DModelOpt = None,
    d_ff: DFfOpt = None,
    n_layers: NLayersOpt = None,
    n_heads: NHeadsOpt = None,
    vocab: VocabOpt = None,
    plain_ffn: PlainFfnOpt = False,
    active_params: ActiveOpt = None,
    target_loss: TargetLossOpt = None,
) -> None:
    """Predict the optimal peak learning rate and batch size at a scale, with intervals."""
    from steplaw_opt.priors import list_laws, load_law

    scale = build_scale(
        params,
        tokens,
        seq_len,
        d_model,
        d_ff,
        n_layers,
        n_heads,
        vocab,
        plain_ffn,
        active_params,
        target_loss,
    )
    rounding = parse_rounding(round_batch)
    laws = list_laws() if law == "all" else [load_law(law)]
    predictions = [lw.predict(scale, round_batch=rounding) for lw in laws]
    if law != "all" and predictions[0].missing:  # the one law asked for cannot answer
        raise SteplawInputError(f"--law {law}: cannot predict: {predictions[0].missing}")
    if as_json:
        import json

        docs = [p.to_dict() for p in predictions]
        # Top-level keys describe the first law (the Step Law for --law all), so scripts can
        # read doc["lr"] either way; --law all adds every law under "laws".
        doc = {**docs[0], "laws": docs} if law == "all" else docs[0]
        print(json.dumps(_finite(doc), indent=2, allow_nan=False))
        return
    from steplaw_opt.cli import _render

    console = _console()
    if len(predictions) == 1:
        _render.print_prediction(console, laws[0], predictions[0])
    else:
        _render.print_predictions(console, laws, predictions)


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float as ``None``: the output is strict JSON, which has
    no ``Infinity`` or ``NaN`` (a card's numbers gone wrong are reported in ``missing``)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# --------------------------------------------------------------------------------- laws
@laws_app.callback()
def laws_list(ctx: typer.Context) -> None:
    """List the shipped law cards (unusable ones marked)."""
    if ctx.invoked_subcommand is not None:
        return
    from steplaw_opt.cli import _render
    from steplaw_opt.priors import list_laws

    _render.print_laws(_console(), list_laws(include_unusable=True))


class _PlainUsage(TyperCommand):
    """A command whose usage line names a required argument as ``NAME``, as its help's
    Arguments section does (typer writes ``{NAME}``)."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar or (param.name or "").upper()
                pieces.append(name if param.required else f"[{name}]")
        return pieces


@laws_app.command("show", cls=_PlainUsage)
def laws_show(
    name: Annotated[str, typer.Argument(metavar="NAME", help="A law name or a path to a card.")],
) -> None:
    """Print one law card in full."""
    from steplaw_opt.cli import _render
    from steplaw_opt.priors import load_law

    _render.print_law(_console(), load_law(name))
