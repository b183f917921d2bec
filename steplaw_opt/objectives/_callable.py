"""A Python function as the objective."""

from __future__ import annotations

import inspect
import numbers
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from steplaw_opt.errors import SteplawInputError
from steplaw_opt.objectives._base import Objective, RunContext
from steplaw_opt.scale import Scale


class CallableObjective(Objective):
    """Wraps ``f(lr, batch_size, scale) -> float``; ``batch_size`` is in the study's unit.

    Exceptions from ``f`` other than :class:`~steplaw_opt.objectives.TrialFailed` propagate:
    a bug in your function should stop the study, not be recorded as a failed run.

    Example:
        >>> from steplaw_opt import Scale
        >>> obj = CallableObjective(lambda lr, batch_size, scale: 3.0 + lr)
        >>> obj.run(1e-3, 128, Scale(N=1e6, D=1e8), RunContext())
        3.001
    """

    name = "callable"

    def __init__(self, function: Callable[[float, float, Scale], float]) -> None:
        if not callable(function):
            raise SteplawInputError(f"objective must be callable, got {function!r}")
        try:
            inspect.signature(function).bind(1.0, 1.0, None)
        except TypeError:
            raise SteplawInputError(
                f"objective {getattr(function, '__name__', function)!r} must accept "
                "(lr, batch_size, scale)"
            ) from None
        except ValueError:  # builtins without a signature: trust them
            pass
        self.function = function
        self.name = getattr(function, "__name__", "callable")

    def run(self, lr: float, batch_size: float, scale: Scale, context: RunContext) -> float:
        return as_loss(self.function(lr, batch_size, scale), self.name)


def as_loss(value: Any, name: str = "objective") -> float:
    """A callable's return value as a loss: any real number (Python, NumPy, a 0-d array or
    tensor); anything else — text, ``None``, a bool, a list, a complex number, an array of
    several values — is a bug in the function, reported in one line naming the value (a run
    that failed should raise :class:`~steplaw_opt.objectives.TrialFailed` instead)."""
    refused = (
        value is None
        or isinstance(value, (bool, np.bool_, str, bytes))
        or getattr(value, "shape", ()) != ()  # an array of several values
    )
    if not refused:
        if isinstance(value, numbers.Real):
            return float(value)
        try:  # 0-d arrays and tensors convert; complex numbers and containers do not
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # NumPy's ComplexWarning: the imaginary part lost
                return float(value)
        except (TypeError, ValueError, OverflowError, Warning):
            pass
    text = repr(value)
    text = text if len(text) <= 60 else text[:59] + "…"
    raise SteplawInputError(
        f"objective {name!r} returned {text} ({type(value).__name__}), not a number: return the "
        "run's loss as a float, or raise TrialFailed for a run that failed"
    )
