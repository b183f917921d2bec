"""Laws and their cards: load a TOML card, evaluate it at a scale, with uncertainty."""

from __future__ import annotations

import math
import numbers
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from steplaw_opt.errors import SteplawInputError
from steplaw_opt.scale import Scale

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KNOWN_VARIABLES = ("N", "D", "C", "M", "L")
_VARIABLE_NEEDS = {
    "M": "the model shape (d_model, d_ff, n_layers) for M, the non-embedding FLOPs per token",
    "L": "a target loss (target_loss / --target-loss)",
}
# z-scores of the central 68 % and 95 % intervals of a normal distribution.
Z68 = 0.994457883209753
Z95 = 1.959963984540054
# A card is a page of text: anything larger is not a card (and is not read whole into memory).
MAX_CARD_BYTES = 1_000_000
# No published law has an exponent beyond ±1 on N, D, C or L; ±10 leaves room for odd fits while
# refusing values that only overflow (N^1000 is infinite for any real model).
MAX_EXPONENT = 10.0
# Names end up in study names, MLflow run names and default file names: no slashes or spaces.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
# The range a prediction must fall in to be used: a peak learning rate above 1 (AdamW) or a
# batch under one token is a card's numbers gone wrong, not a recommendation.
LR_RANGE = (0.0, 1.0)
MIN_BATCH_TOKENS = 1.0
# An unusable card's reason ends up in a one-line error: one line, a sentence or two at most.
MAX_REASON_CHARS = 300
# ln of the largest float: exp() of anything larger overflows.
_LN_MAX = math.log(sys.float_info.max)
# A floor on the sd of where the optimum is (ln units): a law is never trusted to better than 5 %.
MIN_SD = 0.05

BatchRounding = Literal["none", "pow2"] | int
MAX_ROUNDING = 10**9  # a multiple of more than a billion sequences is not a hardware constraint


class MissingVariableError(SteplawInputError):
    """The law needs a quantity the scale does not carry (a target loss, a shape)."""

    def __init__(self, law: str, variable: str) -> None:
        self.law = law
        self.variable = variable
        super().__init__(f"law {law!r} needs {_VARIABLE_NEEDS.get(variable, variable)}")


class UnusablePredictionError(SteplawInputError):
    """The law's formula gives a value no run can use at this scale (infinite, zero, negative,
    or outside :data:`LR_RANGE` / below :data:`MIN_BATCH_TOKENS`)."""


class UnusableLawError(SteplawInputError):
    """The card is marked ``usable = false``: it loads and can be shown (``steplaw-opt laws
    show``), but it neither predicts nor serves as a prior; the message names the card and the
    card's ``unusable_reason``."""


def show_value(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, so a one-line message stays one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Formula:
    r"""One fitted quantity of a law.

    ``form = "power"``: :math:`q = c \prod_i x_i^{e_i}`, linear in log space:
    :math:`\ln q = \ln c + \sum_i e_i \ln x_i`.

    ``form = "log-linear"``: :math:`q = c + \sum_i s_i \ln x_i` (Kaplan et al.'s learning rate).
    """

    form: Literal["power", "log-linear"]
    coefficient: float
    terms: Mapping[str, float]

    @property
    def variables(self) -> tuple[str, ...]:
        return tuple(self.terms)

    def features(self, values: Mapping[str, float]) -> np.ndarray:
        """The regression features ``(1, ln x_1, ln x_2, …)`` at ``values``."""
        return np.array([1.0] + [math.log(values[v]) for v in self.terms])

    def evaluate(self, values: Mapping[str, float]) -> float:
        """The formula at ``values``; a power law that overflows gives ``inf`` (never raises),
        so the caller can name the card and the scale."""
        if self.form == "power":
            # In log space: N**e overflows (OverflowError) long before the product is used.
            log_q = math.log(self.coefficient) + sum(
                e * math.log(values[v]) for v, e in self.terms.items()
            )
            return math.exp(log_q) if log_q < _LN_MAX else math.inf
        return self.coefficient + sum(s * math.log(values[v]) for v, s in self.terms.items())

    def to_dict(self) -> dict[str, Any]:
        key = "exponents" if self.form == "power" else "slopes"
        return {"form": self.form, "coefficient": self.coefficient, key: dict(self.terms)}


@dataclass(frozen=True)
class Citation:
    authors: str
    title: str
    year: int
    venue: str = ""
    arxiv: str = ""
    url: str = ""

    def short(self) -> str:
        """``Li et al. (2025), arXiv 2503.04715``: the first author's surname only."""
        authors = self.authors.replace(" and ", ", ")
        first = authors.split(",")[0].strip()
        if "et al" in first:
            lead = first if first.endswith(".") else first + "."
        else:
            surname = first.split()[-1] if first else "?"
            lead = f"{surname} et al." if "," in authors else surname
        arxiv = f", arXiv {self.arxiv}" if self.arxiv else ""
        return f"{lead} ({self.year}){arxiv}"


@dataclass(frozen=True)
class Interval:
    """A central interval ``[low, high]`` at a given probability ``mass``."""

    low: float
    high: float
    mass: float

    def to_list(self) -> list[float]:
        return [self.low, self.high]


@dataclass(frozen=True)
class OptimumIntervals:
    r"""Where the optimum of a run at one scale is, not where the law's mean is: central
    intervals of a log-normal around the law's point with the variance of
    :meth:`Law.optimum_log_covariance` — the law's coefficient uncertainty at the scale, plus the
    card's residual scatter of the optimum widened by :math:`\kappa(s)` outside the card's
    validity range, plus a 5 % floor. It is the covariance of the samplers' prior (``Prior``)
    before any run. ``batch`` is in tokens."""

    lr: tuple[Interval, ...]
    batch: tuple[Interval, ...]
    ln_sd: tuple[float, float]  # sd of (ln lr, ln batch)
    residual_sd: tuple[float, float]  # the card's [residual], before widening
    distance: float  # ln distance outside the validity range (0 inside)
    widening: float  # kappa(s) = 1 + (distance / ln 10)^2, multiplies the residual variance
    coefficients: bool  # the card's coefficient covariance is included (False: it has none)


@dataclass(frozen=True)
class Prediction:
    """What a law says at one scale. Batch sizes in tokens and in sequences of ``seq_len``.

    ``lr_intervals`` / ``batch_intervals`` are the uncertainty of the law's mean (its
    coefficient covariance); ``optimum`` is where the optimum is (:class:`OptimumIntervals`),
    ``None`` with the reason in ``optimum_missing`` when the card has no ``[residual]``."""

    law: str
    scale: Scale
    lr: float | None
    batch_tokens: float | None
    lr_meaning: str = "peak"
    lr_intervals: tuple[Interval, ...] = ()
    batch_intervals: tuple[Interval, ...] = ()
    batch_rounded_sequences: float | None = None
    extrapolated: tuple[str, ...] = ()
    missing: str | None = None  # why a quantity could not be predicted
    optimum: OptimumIntervals | None = None
    optimum_missing: str | None = None  # why there is no optimum interval

    @property
    def batch_sequences(self) -> float | None:
        return None if self.batch_tokens is None else self.batch_tokens / self.scale.seq_len

    def to_dict(self) -> dict[str, Any]:
        def intervals(items: tuple[Interval, ...], factor: float = 1.0) -> dict[str, list[float]]:
            return {f"{round(i.mass * 100)}%": [i.low * factor, i.high * factor] for i in items}

        return {
            "law": self.law,
            "N": self.scale.N,
            "D": self.scale.D,
            "seq_len": self.scale.seq_len,
            "lr": self.lr,
            "lr_meaning": self.lr_meaning,
            "batch_tokens": self.batch_tokens,
            "batch_sequences": self.batch_sequences,
            "batch_sequences_rounded": self.batch_rounded_sequences,
            "lr_interval": intervals(self.lr_intervals),
            "batch_tokens_interval": intervals(self.batch_intervals),
            "batch_sequences_interval": intervals(self.batch_intervals, 1 / self.scale.seq_len),
            "extrapolated": list(self.extrapolated),
            "missing": self.missing,
            "optimum_interval": None if self.optimum is None else self._optimum_dict(),
            "optimum_interval_missing": self.optimum_missing,
        }

    def _optimum_dict(self) -> dict[str, Any]:
        o = self.optimum
        assert o is not None

        def intervals(items: tuple[Interval, ...], factor: float = 1.0) -> dict[str, list[float]]:
            return {f"{round(i.mass * 100)}%": [i.low * factor, i.high * factor] for i in items}

        parts = "the law's coefficient uncertainty + " if o.coefficients else ""
        return {
            "meaning": (
                f"where the optimum is: {parts}the card's residual scatter of the optimum, "
                "widened outside the card's validity range (lr_interval and "
                "batch_*_interval are the law's mean only)"
            ),
            "lr": intervals(o.lr),
            "batch_tokens": intervals(o.batch),
            "batch_sequences": intervals(o.batch, 1 / self.scale.seq_len),
            "ln_sd": {"lr": o.ln_sd[0], "batch": o.ln_sd[1]},
            "residual_sd": {"lr": o.residual_sd[0], "batch": o.residual_sd[1]},
            "extrapolation_ln_distance": o.distance,
            "widening": o.widening,
            "includes_coefficient_covariance": o.coefficients,
        }


def round_batch_sequences(sequences: float, rounding: BatchRounding) -> float:
    """Round a batch size in sequences to one a run can use: ``"none"`` (the nearest whole
    number of sequences, at least 1: no hardware rule), ``"pow2"`` (nearest power of two in log
    space) or an integer ``k`` (nearest positive multiple of ``k``)."""
    k = check_rounding(rounding)
    if k == "none":
        return float(max(1, round(sequences)))
    if k == "pow2":
        return float(2 ** max(0, round(math.log2(sequences))))
    return float(max(k, k * round(sequences / k)))


def check_rounding(rounding: Any) -> BatchRounding:
    """``rounding`` as ``"none"``, ``"pow2"`` or a Python ``int`` (NumPy integers accepted);
    one line naming the value otherwise."""
    if isinstance(rounding, str) and rounding in ("none", "pow2"):
        return rounding  # type: ignore[return-value]
    if isinstance(rounding, numbers.Integral) and not isinstance(rounding, (bool, np.bool_)):
        k = int(rounding)
        if 0 < k <= MAX_ROUNDING:
            return k
    raise SteplawInputError(
        "batch rounding must be 'none', 'pow2' or a positive integer up to "
        f"{MAX_ROUNDING:,}, got {show_value(rounding)}"
    )


@dataclass(frozen=True)
class LawCovariance:
    """Coefficient covariance in log space (power-law terms ``intercept, ln x_1, …``)."""

    lr_terms: tuple[str, ...]
    lr: np.ndarray
    batch_terms: tuple[str, ...]
    batch: np.ndarray
    lr_batch: np.ndarray  # cross covariance, len(lr_terms) × len(batch_terms)

    def joint(self) -> np.ndarray:
        """The full covariance of (lr coefficients, batch coefficients)."""
        return np.block([[self.lr, self.lr_batch], [self.lr_batch.T, self.batch]])


@dataclass(frozen=True)
class Law:
    """A hyperparameter scaling law loaded from a card (see ``docs/law-cards.md``).

    Example:
        >>> from steplaw_opt import Scale, load_law
        >>> law = load_law("step-law")
        >>> p = law.predict(Scale(N=7e9, D=1.4e12))
        >>> round(p.lr, 6), round(p.batch_tokens / 1e6, 2)
        (0.000917, 5.0)
    """

    name: str
    title: str
    citation: Citation
    lr_formula: Formula | None
    batch_formula: Formula | None
    lr_meaning: str = "peak"
    batch_unit: Literal["tokens", "sequences"] = "tokens"
    batch_seq_len: int | None = None
    variables: Mapping[str, str] = field(default_factory=dict)
    compute: Literal["6ND", "MD"] | None = None
    validity: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    covariance: LawCovariance | None = None
    residual_sd: tuple[float, float] | None = None  # (ln lr, ln batch) scatter of the optimum
    notes: str = ""
    warning: str = ""  # one line shown beside every prediction (an unverified coefficient, say)
    source: str = ""  # where the card was read from
    usable: bool = True  # False: the card loads and shows, but never predicts or serves as a prior
    unusable_reason: str = ""  # one line: why (only when usable is False)

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def from_card(cls, path: str | Path) -> Law:
        """Load a card from a TOML file."""
        path = Path(path)
        label = show_value(str(path), 200)
        try:
            if not path.is_file():  # a folder, a FIFO (would block), a device (endless)
                what = "a folder" if path.is_dir() else "not a regular file"
                if not path.exists():
                    raise FileNotFoundError(2, "No such file or directory")
                raise SteplawInputError(f"law card {label} is {what}")
            with path.open("rb") as f:
                raw = f.read(MAX_CARD_BYTES + 1)
        except OSError as exc:
            raise SteplawInputError(f"cannot read law card {label}: {exc.strerror}") from None
        if len(raw) > MAX_CARD_BYTES:
            raise SteplawInputError(
                f"law card {label} is too large (over {MAX_CARD_BYTES:,} bytes): not a card"
            )
        try:
            text = raw.decode("utf-8-sig")  # a UTF-8 byte-order mark is harmless
        except UnicodeDecodeError as exc:
            hint = " (UTF-16? save it as UTF-8)" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
            raise SteplawInputError(
                f"law card {label} is not UTF-8 text: byte {exc.start} is "
                f"0x{raw[exc.start]:02x}{hint}"
            ) from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "syntax error"
            raise SteplawInputError(f"law card {label} is not valid TOML: {first}") from None
        except RecursionError:
            raise SteplawInputError(
                f"law card {label} is not valid TOML: nested too deeply"
            ) from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>") -> Law:
        """Build a law from a parsed card; every problem is reported with the card's path."""
        return _parse_card(data, source)

    def to_dict(self) -> dict[str, Any]:
        """The card as a dict (``tomli_w.dumps`` of it is a valid card)."""
        out: dict[str, Any] = {"schema": 1, "name": self.name, "title": self.title}
        if self.notes:
            out["notes"] = self.notes
        if self.warning:
            out["warning"] = self.warning
        if not self.usable:
            out["usable"] = False
            out["unusable_reason"] = self.unusable_reason
        c = self.citation
        out["citation"] = {
            "authors": c.authors,
            "title": c.title,
            "venue": c.venue,
            "arxiv": c.arxiv,
            "year": c.year,
            "url": c.url,
        }
        if self.lr_formula is not None:
            out["lr"] = {"meaning": self.lr_meaning, **self.lr_formula.to_dict()}
        if self.batch_formula is not None:
            batch: dict[str, Any] = {"unit": self.batch_unit}
            if self.batch_seq_len is not None:
                batch["seq_len"] = self.batch_seq_len
            out["batch"] = {**batch, **self.batch_formula.to_dict()}
        out["variables"] = dict(self.variables)
        if self.compute is not None:
            out["compute"] = self.compute
        out["validity"] = {k: list(v) for k, v in self.validity.items()}
        if self.covariance is not None:
            cov = self.covariance
            out["covariance"] = {
                "lr_terms": list(cov.lr_terms),
                "lr": cov.lr.tolist(),
                "batch_terms": list(cov.batch_terms),
                "batch": cov.batch.tolist(),
                "lr_batch": cov.lr_batch.tolist(),
            }
        if self.residual_sd is not None:
            out["residual"] = {"lr_sd": self.residual_sd[0], "batch_sd": self.residual_sd[1]}
        return out

    # ----------------------------------------------------------------------------- evaluation
    def require_usable(self) -> None:
        """Refuse, in one line naming the card and its reason, a card marked ``usable = false``.

        Every use of a law at a scale (a prediction, an interval, a prior, a search space's
        origin) goes through :meth:`available_values`, which calls this first; code that
        inspects a law's formulas before evaluating it (:class:`~steplaw_opt.space.LawSpace`,
        the refinement's prior) calls it up front so that its own checks do not hide the reason.
        """
        if not self.usable:
            raise UnusableLawError(
                f"law {self.name!r} is marked unusable and cannot predict or serve as a prior: "
                f"{self.unusable_reason.rstrip('.')}; `steplaw-opt laws show {self.name}` shows "
                "the card"
            )

    @property
    def required_variables(self) -> tuple[str, ...]:
        names: list[str] = []
        for f in (self.lr_formula, self.batch_formula):
            if f is not None:
                names += [v for v in f.variables if v not in names]
        return tuple(names)

    def available_values(self, scale: Scale) -> dict[str, float]:
        """Every variable this law could use that ``scale`` determines; the one door through
        which the law meets a scale, so an unusable card is refused here
        (:class:`UnusableLawError`)."""
        self.require_usable()
        values: dict[str, float] = {"N": float(scale.N or 0), "D": float(scale.D or 0)}
        m = scale.M
        if m is not None:
            values["M"] = m
        if scale.target_loss is not None:
            values["L"] = scale.target_loss
        if self.compute == "MD":
            if m is not None:
                values["C"] = m * values["D"]
        else:
            values["C"] = scale.C
        return values

    def _check_available(self, formula: Formula, values: Mapping[str, float]) -> None:
        for v in formula.variables:
            if v not in values:
                raise MissingVariableError(self.name, "M" if v == "C" else v)

    def variable_values(self, scale: Scale) -> dict[str, float]:
        """The law's variables at ``scale``; raises :class:`MissingVariableError` when one is
        missing (a target loss, or the shape for ``M``)."""
        values = self.available_values(scale)
        for f in (self.lr_formula, self.batch_formula):
            if f is not None:
                self._check_available(f, values)
        return values

    def extrapolated_variables(self, scale: Scale) -> tuple[str, ...]:
        """The variables of ``scale`` outside the range the law was fitted on."""
        values = self.available_values(scale)
        return tuple(
            v for v, (lo, hi) in self.validity.items() if v in values and not lo <= values[v] <= hi
        )

    def lr_at(self, scale: Scale) -> float:
        """The predicted learning rate at ``scale``; :class:`UnusablePredictionError` when the
        card's numbers give an infinite, non-positive or absurd (above 1) value there."""
        if self.lr_formula is None:
            raise SteplawInputError(f"law {self.name!r} does not predict a learning rate")
        values = self.available_values(scale)
        self._check_available(self.lr_formula, values)
        lr = self.lr_formula.evaluate(values)
        if not (math.isfinite(lr) and LR_RANGE[0] < lr <= LR_RANGE[1]):
            raise UnusablePredictionError(
                f"law {self.name!r} predicts lr {_number_text(lr)} at {scale}: not a usable "
                f"learning rate (it must lie in ({LR_RANGE[0]:g}, {LR_RANGE[1]:g}]; check the "
                "card's lr coefficient and exponents, or its validity range)"
            )
        return lr

    def batch_tokens_at(self, scale: Scale) -> float:
        """The predicted global batch size at ``scale``, in tokens;
        :class:`UnusablePredictionError` when it is infinite or under one token."""
        if self.batch_formula is None:
            raise SteplawInputError(f"law {self.name!r} does not predict a batch size")
        values = self.available_values(scale)
        self._check_available(self.batch_formula, values)
        batch = self.batch_formula.evaluate(values)
        if self.batch_unit == "sequences":
            batch *= float(self.batch_seq_len or scale.seq_len)
        if not (math.isfinite(batch) and batch >= MIN_BATCH_TOKENS):
            raise UnusablePredictionError(
                f"law {self.name!r} predicts a batch of {_number_text(batch)} tokens at {scale}: "
                "not a usable batch size (check the card's batch coefficient and exponents)"
            )
        return batch

    def log_covariance(self, scale: Scale) -> np.ndarray | None:
        r"""Covariance of :math:`(\ln \mathrm{lr}^*, \ln B^*)` at ``scale`` from the coefficient
        uncertainty: :math:`x_s^\top \Sigma x_s` with :math:`x_s = (1, \ln N, \ln D, …)`.
        ``None`` when the card has no covariance."""
        cov = self.covariance
        if cov is None or self.lr_formula is None or self.batch_formula is None:
            return None
        values = self.variable_values(scale)  # a covariance implies power laws in N, D, C
        x_lr = np.array([1.0 if t == "intercept" else math.log(values[t]) for t in cov.lr_terms])
        x_b = np.array([1.0 if t == "intercept" else math.log(values[t]) for t in cov.batch_terms])
        return np.array(
            [
                [x_lr @ cov.lr @ x_lr, x_lr @ cov.lr_batch @ x_b],
                [x_lr @ cov.lr_batch @ x_b, x_b @ cov.batch @ x_b],
            ]
        )

    def optimum_log_covariance(
        self, scale: Scale, residual_sd: tuple[float, float] | None = None
    ) -> np.ndarray | None:
        r"""Covariance of where the optimum is in :math:`(\ln \mathrm{lr}, \ln B)` around the
        law's point at ``scale``:

        .. math:: x_s^\top \Sigma x_s + \kappa(s)\,\mathrm{diag}(\sigma_{lr}^2, \sigma_B^2)
                  + 0.05^2 I, \qquad \kappa(s) = 1 + (d / \ln 10)^2

        with the coefficient term only when the card has a ``[covariance]``, :math:`\sigma`
        the card's ``[residual]`` (or ``residual_sd``) and :math:`d` the
        :func:`extrapolation_distance` of ``scale``. ``None`` when there is no residual."""
        residual = residual_sd if residual_sd is not None else self.residual_sd
        if residual is None:
            return None
        kappa = extrapolation_widening(extrapolation_distance(self, scale))
        cov = kappa * np.diag(np.square(residual))
        coef = self.log_covariance(scale)
        if coef is not None:
            cov = cov + coef
        return cov + np.eye(2) * MIN_SD**2

    def predict(self, scale: Scale, *, round_batch: BatchRounding = "none") -> Prediction:
        """Evaluate the law at ``scale``: lr*, B* in tokens and sequences, and — when the card
        carries a covariance — 68 % and 95 % intervals of the law's mean from the coefficient
        uncertainty; when it carries a ``[residual]``, 68 % and 95 % intervals of where the
        optimum is (:class:`OptimumIntervals`).

        The intervals grow with the distance of ``scale`` from the data the law was fitted on
        (that is what :math:`x_s^\\top \\Sigma x_s` does, and the optimum's residual is widened
        by :math:`\\kappa(s)` on top); ``extrapolated`` names the variables outside the card's
        validity range.
        """
        lr = batch = None
        missing: list[str] = []
        if self.lr_formula is not None:
            try:
                lr = self.lr_at(scale)
            except (MissingVariableError, UnusablePredictionError) as exc:
                missing.append(str(exc))
        if self.batch_formula is not None:
            try:
                batch = self.batch_tokens_at(scale)
            except (MissingVariableError, UnusablePredictionError) as exc:
                if str(exc) not in missing:
                    missing.append(str(exc))
        lr_iv: tuple[Interval, ...] = ()
        b_iv: tuple[Interval, ...] = ()
        cov = self.log_covariance(scale) if lr is not None and batch is not None else None
        if cov is not None and lr is not None and batch is not None:
            lr_iv = _intervals(lr, float(cov[0, 0]))
            b_iv = _intervals(batch, float(cov[1, 1]))
        optimum, optimum_missing = self._optimum(scale, lr, batch)
        rounded = None
        if batch is not None:
            rounded = round_batch_sequences(batch / scale.seq_len, round_batch)
        return Prediction(
            law=self.name,
            scale=scale,
            lr=lr,
            batch_tokens=batch,
            lr_meaning=self.lr_meaning,
            lr_intervals=lr_iv,
            batch_intervals=b_iv,
            batch_rounded_sequences=rounded,
            extrapolated=self.extrapolated_variables(scale),
            missing="; ".join(missing) or None,
            optimum=optimum,
            optimum_missing=optimum_missing,
        )

    def _optimum(
        self, scale: Scale, lr: float | None, batch: float | None
    ) -> tuple[OptimumIntervals | None, str | None]:
        """The optimum's intervals at ``scale`` for :meth:`predict`, or the reason for none."""
        if self.residual_sd is None:
            return None, "the card has no [residual] (the optimum's scatter around the law)"
        if lr is None and batch is None:
            return None, None  # nothing predicted: ``missing`` says why
        if self.covariance is not None and (lr is None or batch is None):
            return None, None  # the coefficient term needs both formulas evaluated
        cov = self.optimum_log_covariance(scale)
        assert cov is not None
        d = extrapolation_distance(self, scale)
        optimum = OptimumIntervals(
            lr=() if lr is None else _intervals(lr, float(cov[0, 0])),
            batch=() if batch is None else _intervals(batch, float(cov[1, 1])),
            ln_sd=(math.sqrt(cov[0, 0]), math.sqrt(cov[1, 1])),
            residual_sd=self.residual_sd,
            distance=d,
            widening=extrapolation_widening(d),
            coefficients=self.covariance is not None,
        )
        return optimum, None


def extrapolation_distance(law: Law, scale: Scale) -> float:
    """Natural-log distance of ``scale`` outside the law's validity range (0 inside): the
    Euclidean norm over the variables of how far each lies outside its fitted range."""
    values = law.available_values(scale)
    d2 = 0.0
    for var, (lo, hi) in law.validity.items():
        if var in values:
            x = values[var]
            d2 += max(0.0, math.log(lo / x), math.log(x / hi)) ** 2
    return math.sqrt(d2)


def extrapolation_widening(distance: float) -> float:
    """κ(s) = 1 + (d / ln 10)²: the factor on the residual variance of the optimum at ln
    distance ``d`` outside the validity range (one decade out doubles it)."""
    return 1.0 + (distance / math.log(10.0)) ** 2


def _number_text(x: float) -> str:
    """A prediction for a message: words for the values JSON and people cannot read."""
    if math.isnan(x):
        return "not-a-number"
    if math.isinf(x):
        return "infinite" if x > 0 else "minus infinite"
    return f"{x:.3g}"


def _intervals(value: float, log_var: float) -> tuple[Interval, ...]:
    """68 % and 95 % intervals of a log-normal prediction; none when the card's covariance is
    so wide at this scale that a bound is not a finite number (an interval spanning a factor
    beyond ~e^700 says nothing anyway)."""
    if not (math.isfinite(log_var) and log_var >= 0):
        return ()
    sd = math.sqrt(log_var)
    out = []
    for z, m in ((Z68, 0.68), (Z95, 0.95)):
        lo_log, hi_log = math.log(value) - z * sd, math.log(value) + z * sd
        if hi_log >= _LN_MAX:
            return ()
        out.append(Interval(math.exp(lo_log), math.exp(hi_log), m))
    return tuple(out)


# --------------------------------------------------------------------------------- parsing
class _Card:
    """Typed access to a parsed card: every wrong type or value is one line naming the key (as
    it is written in the card, ``[lr].exponents.N``) and the value."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, msg: str) -> SteplawInputError:
        return SteplawInputError(f"law card {self.source!r}: {msg}")

    def table(self, parent: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any] | None:
        """The sub-table ``key`` (``None`` when absent)."""
        if key not in parent:
            return None
        value = parent[key]
        if not isinstance(value, Mapping):
            raise self.fail(f"{where} must be a table, got {show_value(value)}")
        return value

    def text(self, parent: Mapping[str, Any], key: str, where: str, default: str | None) -> str:
        if key not in parent:
            if default is None:
                raise self.fail(f"missing {where}")
            return default
        value = parent[key]
        if not isinstance(value, str):
            raise self.fail(f"{where} must be text, got {show_value(value)}")
        return value

    def number(self, parent: Mapping[str, Any], key: str, where: str) -> float:
        if key not in parent:
            raise self.fail(f"missing {where}")
        value = parent[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(f"{where} must be a number, got {show_value(value)}")
        if not math.isfinite(value):
            raise self.fail(f"{where} must be finite, got {show_value(value)}")
        return float(value)


def _parse_card(data: Mapping[str, Any], source: str) -> Law:
    card = _Card(source)
    fail = card.fail
    if not isinstance(data, Mapping):
        raise fail(f"a card is a table of keys, got {show_value(data)}")

    schema = data.get("schema", 1)
    if isinstance(schema, bool) or schema != 1:
        raise fail(f"unknown schema {show_value(schema)} (this version reads schema 1)")
    if "name" not in data:
        raise fail("missing name")
    name = data["name"]
    if not isinstance(name, str):
        raise fail(f"name has the wrong type: {show_value(name)}")
    if not NAME_RE.fullmatch(name):
        raise fail(
            f"name {show_value(name)} must be letters, digits, '.', '_', '+' or '-' (no spaces "
            "or slashes, at most 100 characters): it names studies and files"
        )
    title = card.text(data, "title", "title", name)
    cit = card.table(data, "citation", "[citation]") or {}
    year = cit.get("year", 0)
    if isinstance(year, bool) or not isinstance(year, int):
        raise fail(f"[citation].year must be a whole number, got {show_value(year)}")
    citation = Citation(
        authors=card.text(cit, "authors", "[citation].authors", ""),
        title=card.text(cit, "title", "[citation].title", ""),
        year=year,
        venue=card.text(cit, "venue", "[citation].venue", ""),
        arxiv=card.text(cit, "arxiv", "[citation].arxiv", ""),
        url=card.text(cit, "url", "[citation].url", ""),
    )

    def formula(key: str) -> Formula | None:
        table = card.table(data, key, f"[{key}]")
        if table is None:
            return None
        form = card.text(table, "form", f"[{key}].form", "power")
        if form not in ("power", "log-linear"):
            raise fail(f"[{key}].form must be 'power' or 'log-linear', got {show_value(form)}")
        if "coefficient" in table and (
            isinstance(table["coefficient"], bool)
            or not isinstance(table["coefficient"], (int, float))
        ):
            bad = show_value(table["coefficient"])
            raise fail(f"[{key}].coefficient has the wrong type: {bad}")
        coefficient = card.number(table, "coefficient", f"[{key}].coefficient")
        terms_key = "exponents" if form == "power" else "slopes"
        if terms_key not in table:
            raise fail(f"missing [{key}].{terms_key}")
        terms = table[terms_key]
        if not isinstance(terms, Mapping):
            raise fail(f"[{key}].{terms_key} has the wrong type: {show_value(terms)}")
        for var, value in terms.items():
            if var not in KNOWN_VARIABLES:
                raise fail(f"[{key}].{terms_key} uses unknown variable {show_value(var)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise fail(f"[{key}].{terms_key}.{var} is not a number: {show_value(value)}")
            if not math.isfinite(value):
                raise fail(f"[{key}].{terms_key}.{var} is not finite: {show_value(value)}")
            if form == "power" and abs(value) > MAX_EXPONENT:
                raise fail(
                    f"[{key}].{terms_key}.{var} = {show_value(value)} is out of range "
                    f"(|exponent| <= {MAX_EXPONENT:g})"
                )
        if form == "power" and coefficient <= 0:
            raise fail(f"[{key}].coefficient must be positive and finite, got {coefficient!r}")
        return Formula(form, coefficient, {k: float(v) for k, v in terms.items()})

    lr_formula = formula("lr")
    batch_formula = formula("batch")
    if lr_formula is None and batch_formula is None:
        raise fail("has neither an [lr] nor a [batch] table")
    lr_table = card.table(data, "lr", "[lr]") or {}
    lr_meaning = card.text(lr_table, "meaning", "[lr].meaning", "peak")
    batch = card.table(data, "batch", "[batch]") or {}
    unit = batch.get("unit", "tokens")
    if unit not in ("tokens", "sequences"):
        raise fail(f"[batch].unit must be 'tokens' or 'sequences', got {show_value(unit)}")
    seq_len = batch.get("seq_len")
    bad_seq_len = isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len <= 0
    if unit == "sequences" and batch_formula is not None and bad_seq_len:
        raise fail(
            "[batch].seq_len must be a positive integer for unit 'sequences', got "
            f"{show_value(seq_len)}"
        )
    compute = data.get("compute")
    if compute is not None and compute not in ("6ND", "MD"):
        raise fail(f"compute must be '6ND' or 'MD', got {show_value(compute)}")
    variables: dict[str, str] = {}
    for var, text in (card.table(data, "variables", "[variables]") or {}).items():
        if not isinstance(text, str):
            raise fail(f"[variables].{var} must be text, got {show_value(text)}")
        variables[str(var)] = text
    validity: dict[str, tuple[float, float]] = {}
    for var, rng in (card.table(data, "validity", "[validity]") or {}).items():
        if var not in KNOWN_VARIABLES:
            raise fail(f"[validity] names unknown variable {show_value(var)}")
        if (
            not isinstance(rng, list)
            or len(rng) != 2
            or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                and x > 0
                for x in rng
            )
            or rng[0] > rng[1]
        ):  # fmt: skip
            raise fail(
                f"[validity].{var} must be [low, high] with 0 < low <= high, got {show_value(rng)}"
            )
        validity[var] = (float(rng[0]), float(rng[1]))

    covariance = None
    cov_table = card.table(data, "covariance", "[covariance]")
    if cov_table is not None:
        covariance = _parse_covariance(cov_table, lr_formula, batch_formula, fail)
    residual = None
    r = card.table(data, "residual", "[residual]")
    if r is not None:
        sds = (r.get("lr_sd"), r.get("batch_sd"))
        if not all(
            isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and s >= 0
            for s in sds
        ):
            raise fail(
                f"[residual] lr_sd and batch_sd must be non-negative numbers, got {show_value(sds)}"
            )
        residual = (float(sds[0]), float(sds[1]))  # type: ignore[arg-type]
    usable, unusable_reason = _parse_usable(card, data)
    return Law(
        name=name,
        title=title,
        citation=citation,
        lr_formula=lr_formula,
        batch_formula=batch_formula,
        lr_meaning=lr_meaning,
        batch_unit=unit,
        batch_seq_len=seq_len if unit == "sequences" else None,
        variables=variables,
        compute=compute,
        validity=validity,
        covariance=covariance,
        residual_sd=residual,
        notes=card.text(data, "notes", "notes", ""),
        warning=card.text(data, "warning", "warning", ""),
        source=source,
        usable=usable,
        unusable_reason=unusable_reason,
    )


def _parse_usable(card: _Card, data: Mapping[str, Any]) -> tuple[bool, str]:
    """``usable`` (true or false, default true) and ``unusable_reason`` (one line of text,
    required when ``usable = false`` and only then)."""
    usable = data.get("usable", True)
    if not isinstance(usable, bool):
        raise card.fail(f"usable must be true or false, got {show_value(usable)}")
    reason = card.text(data, "unusable_reason", "unusable_reason", "").strip()
    if usable:
        if reason:
            raise card.fail("unusable_reason is given but usable is not false")
        return True, ""
    if not reason:
        raise card.fail("usable = false needs an unusable_reason (one line: why)")
    if "\n" in reason or "\r" in reason or len(reason) > MAX_REASON_CHARS:
        raise card.fail(
            f"unusable_reason must be one line of at most {MAX_REASON_CHARS} characters, got "
            f"{show_value(reason)}"
        )
    return False, reason


def _parse_covariance(
    table: Mapping[str, Any], lr_f: Formula | None, batch_f: Formula | None, fail: Any
) -> LawCovariance:
    if lr_f is None or batch_f is None or lr_f.form != "power" or batch_f.form != "power":
        raise fail("[covariance] needs power-law [lr] and [batch] tables")

    def terms(key: str, want: list[str]) -> tuple[str, ...]:
        value = table.get(key, [])
        if not isinstance(value, list) or tuple(value) != tuple(want):
            raise fail(f"[covariance].{key} must be {want}, got {show_value(value)}")
        return tuple(value)

    lr_terms = terms("lr_terms", ["intercept", *lr_f.variables])
    batch_terms = terms("batch_terms", ["intercept", *batch_f.variables])

    def matrix(key: str, rows: int, cols: int) -> np.ndarray:
        try:
            m = np.asarray(table[key], dtype=float)
        except (KeyError, ValueError, TypeError):
            raise fail(f"[covariance].{key} is missing or not a numeric matrix") from None
        if m.shape != (rows, cols) or not np.all(np.isfinite(m)):
            raise fail(
                f"[covariance].{key} must be a finite {rows}×{cols} matrix, got shape {m.shape}"
            )
        return m

    k, j = len(lr_terms), len(batch_terms)
    cov = LawCovariance(
        lr_terms, matrix("lr", k, k), batch_terms, matrix("batch", j, j), matrix("lr_batch", k, j)
    )
    joint = cov.joint()
    if not np.allclose(joint, joint.T, rtol=1e-6, atol=1e-12):
        raise fail("[covariance] is not symmetric")
    eig = np.linalg.eigvalsh(joint)
    if eig.min() <= 1e-12 * max(eig.max(), 1e-300):
        raise fail(f"[covariance] is not positive definite (smallest eigenvalue {eig.min():.3g})")
    return cov


# --------------------------------------------------------------------------------- registry
def _cards_dir() -> Any:
    here = Path(__file__).with_name("cards")
    if here.is_dir():  # an installed or editable package (importlib.resources costs 5 ms)
        return here
    from importlib import resources  # pragma: no cover - a zipped package

    return resources.files("steplaw_opt.priors").joinpath("cards")


@cache
def _shipped_card(filename: str) -> Law:
    data = tomllib.loads(_cards_dir().joinpath(filename).read_text(encoding="utf-8"))
    return Law.from_dict(data, source=f"steplaw_opt.priors/cards/{filename}")


@cache
def _shipped_cards() -> dict[str, Law]:
    laws: dict[str, Law] = {}
    for entry in sorted(_cards_dir().iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            law = _shipped_card(entry.name)
            laws[law.name] = law
    return laws


def list_laws(*, include_unusable: bool = False) -> list[Law]:
    """The shipped law cards, Step Law first: the usable ones (``predict --law all``), or every
    card with ``include_unusable=True`` (``steplaw-opt laws``, which marks the unusable ones)."""
    laws = [law for law in _shipped_cards().values() if include_unusable or law.usable]
    return sorted(laws, key=lambda law: (law.name != "step-law", law.citation.year, law.name))


def load_law(law: str | Path | Law) -> Law:
    """A law by shipped name (``"step-law"``, ``"deepseek-2024"``…) or by path to a card."""
    if isinstance(law, Law):
        return law
    text = str(law)
    # Each shipped card's file is named after its law: read that one alone (predict starts
    # faster), the others only when the name is not a shipped card's.
    if NAME_RE.fullmatch(text) and _cards_dir().joinpath(f"{text}.toml").is_file():
        card = _shipped_card(f"{text}.toml")
        if card.name == text:
            return card
    shipped = _shipped_cards()
    if text in shipped:
        return shipped[text]
    if text.endswith(".toml") or Path(text).exists():
        return Law.from_card(text)
    raise SteplawInputError(
        f"unknown law {text!r}; shipped laws: {', '.join(sorted(shipped))} (or a path to a card)"
    )
