"""The scale of a training run: what a scaling law is evaluated at."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

import numpy as np

from steplaw_opt.errors import SteplawInputError


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "…"


def _check_positive(name: str, value: object, *, integer: bool = False) -> float | int | None:
    """``value`` as a Python ``float`` (``int`` when ``integer``) if it is a positive, finite
    number — NumPy scalars included, ``numbers.Real`` being what they register as — else one
    line naming it."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise SteplawInputError(f"{name} must be a number, got {_shown(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int of 400 digits
        number = math.inf
    if not math.isfinite(number) or number <= 0:
        raise SteplawInputError(f"{name} must be positive and finite, got {_shown(value)}")
    if integer:
        if number != int(number):
            raise SteplawInputError(f"{name} must be a whole number, got {_shown(value)}")
        return int(number)
    return number


def non_embedding_params(d_model: int, d_ff: int, n_layers: int, *, gated_ffn: bool = True) -> int:
    r"""Non-embedding parameters of a decoder-only transformer, counted as the Step Law counts them.

    .. math:: N = n_\text{layers} \cdot (4 d_\text{model}^2 + k \, d_\text{model} d_\text{ff})

    with :math:`k = 3` for a gated (SwiGLU) feed-forward block, as in the Step Law runs, and
    :math:`k = 2` for a plain MLP. Norms and biases are not counted; embeddings and the output
    head are excluded. This reproduces the ``N`` column of the released Step Law runs exactly
    (``h=960, ffnh=9368, numl=7`` → 214,663,680).
    """
    k = 3 if gated_ffn else 2
    return n_layers * (4 * d_model * d_model + k * d_model * d_ff)


@dataclass(frozen=True)
class Scale:
    r"""The scale of one pre-training run: parameters, tokens and, optionally, the shape.

    Args:
        N: non-embedding parameters. For a mixture-of-experts model the Step Law uses the
            TOTAL non-embedding parameter count (all experts), not the active one; give the
            active count as ``active_params`` (it only enters the compute ``C``).
            May be omitted when the shape (``d_model``, ``d_ff``, ``n_layers``) is given.
        D: training tokens.
        seq_len: sequence length in tokens; converts batch sizes between tokens and sequences.
        d_model, d_ff, n_layers, n_heads, vocab_size: the model's shape, optional.
        gated_ffn: whether the feed-forward block has three matrices (SwiGLU), as in the Step
            Law runs, or two.
        active_params: active non-embedding parameters per token, for mixture-of-experts models.
        target_loss: a target training loss in nats per token, for laws that are written in
            terms of the loss (MiniCPM, Kaplan's critical batch).

    Derived quantities:

    - ``M``, non-embedding FLOPs per token (needs the shape), as DeepSeek LLM (Eq. 2) defines
      it: :math:`M = 6 N + 12 \, n_\text{layers} \, d_\text{model} \, \text{seq\_len}`
      (the second term is the attention over the sequence; with :math:`N = 12 n_\text{layers}
      d_\text{model}^2` it is DeepSeek's :math:`72 n_\text{layers} d_\text{model}^2 + 12
      n_\text{layers} d_\text{model} l_\text{seq}`).
    - ``C = 6 · N_active · D``, the usual training compute, with ``N_active = N`` for a dense
      model.

    Example:
        >>> from steplaw_opt import Scale
        >>> s = Scale(N=7e9, D=1.4e12)
        >>> f"{s.C:.3g}"
        '5.88e+22'
        >>> Scale(d_model=960, d_ff=9368, n_layers=7, D=4e9).N
        214663680.0
    """

    N: float | None = None
    D: float | None = None
    seq_len: int = 2048
    d_model: int | None = None
    d_ff: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    vocab_size: int | None = None
    gated_ffn: bool = True
    active_params: float | None = None
    target_loss: float | None = None

    def __post_init__(self) -> None:
        # Stored as Python numbers (a NumPy integer given here must not reach JSON or the
        # study's attributes as np.int64).
        for name in ("d_model", "d_ff", "n_layers", "n_heads", "vocab_size", "seq_len"):
            object.__setattr__(self, name, _check_positive(name, getattr(self, name), integer=True))
        for name in ("N", "D", "active_params", "target_loss"):
            object.__setattr__(self, name, _check_positive(name, getattr(self, name)))
        if isinstance(self.gated_ffn, np.bool_):
            object.__setattr__(self, "gated_ffn", bool(self.gated_ffn))
        if self.D is None:
            raise SteplawInputError("D (training tokens) is required")
        shape = (self.d_model, self.d_ff, self.n_layers)
        if any(x is not None for x in shape) and not all(x is not None for x in shape):
            missing = [
                n for n, x in zip(("d_model", "d_ff", "n_layers"), shape, strict=True) if x is None
            ]
            raise SteplawInputError(f"a shape needs d_model, d_ff and n_layers; missing {missing}")
        if self.has_shape:
            counted = float(
                non_embedding_params(
                    int(self.d_model), int(self.d_ff), int(self.n_layers), gated_ffn=self.gated_ffn
                )
            )
            if self.N is None:
                object.__setattr__(self, "N", counted)
            elif abs(self.N / counted - 1) > 0.01:
                raise SteplawInputError(
                    f"N={self.N:.4g} disagrees with the shape's non-embedding count {counted:.4g}"
                )
        if self.N is None:
            raise SteplawInputError("N (non-embedding parameters) or a shape is required")
        object.__setattr__(self, "N", float(self.N))
        object.__setattr__(self, "D", float(self.D))
        object.__setattr__(self, "seq_len", int(self.seq_len))
        if self.active_params is not None and self.active_params > self.N:
            raise SteplawInputError(
                f"active_params={self.active_params:.4g} exceeds the total N={self.N:.4g}"
            )

    @property
    def has_shape(self) -> bool:
        return self.d_model is not None and self.d_ff is not None and self.n_layers is not None

    @property
    def M(self) -> float | None:
        """Non-embedding FLOPs per token, or ``None`` without a shape."""
        if not self.has_shape:
            return None
        n_active = self.active_params if self.active_params is not None else self.N
        assert n_active is not None and self.n_layers is not None and self.d_model is not None
        return 6.0 * n_active + 12.0 * self.n_layers * self.d_model * self.seq_len

    @property
    def C(self) -> float:
        """Training compute ``6 · N_active · D`` in FLOPs."""
        n_active = self.active_params if self.active_params is not None else self.N
        assert n_active is not None and self.D is not None
        return 6.0 * n_active * self.D

    def with_tokens(self, D: float) -> Scale:
        """The same model trained on ``D`` tokens (a shorter proxy run, say)."""
        return dataclasses.replace(self, D=D)

    def __str__(self) -> str:
        from steplaw_opt.sizes import format_size

        return f"N={format_size(float(self.N or 0))} D={format_size(float(self.D or 0))}"
