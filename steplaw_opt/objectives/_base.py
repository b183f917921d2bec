"""The interface every objective implements."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from steplaw_opt.scale import Scale

MAX_REASON_CHARS = 4000  # a reason is stored in the study and shown in the progress display


def bounded_reason(reason: object) -> str:
    """``reason`` as text of at most :data:`MAX_REASON_CHARS`: its head (what failed) and its
    tail (the last lines a person reads), so a 2 MB error is neither stored nor printed whole."""
    text = str(reason)
    if len(text) <= MAX_REASON_CHARS:
        return text
    head = 200
    return f"{text[:head]} … {text[-(MAX_REASON_CHARS - head - 3) :]}"


class TrialFailed(Exception):
    """A run that produced no usable loss. ``reason`` is one line for people and for the
    sampler (``"diverged"`` marks a run whose loss blew up), cut to a few KB."""

    def __init__(self, reason: str) -> None:
        reason = bounded_reason(reason)
        super().__init__(reason)
        self.reason = reason


@dataclass
class RunContext:
    """What an objective may use besides (lr, batch, scale): the trial's number, a callback for
    intermediate losses (``report(step, loss)``), a per-trial time limit in seconds, and
    ``stop_check()``, which an objective waiting on a job calls now and then: it raises the
    stop (a ``KeyboardInterrupt``) that a signal asked for, in case Python swallowed the
    exception (a signal landing in a ``__del__`` or a weakref callback)."""

    trial_number: int = 0
    report: Callable[[int, float], None] | None = None
    timeout: float | None = None
    notes: dict[str, object] = field(default_factory=dict)  # objective-specific facts to record
    stop_check: Callable[[], None] | None = None


class Objective(abc.ABC):
    """Run one training job and return its final loss (lower is better)."""

    #: A short name for tables and the MLflow record.
    name: str = "objective"
    #: Whether :meth:`run` calls ``context.stop_check()`` at least every second while it
    #: waits (the command objective does). Otherwise a stop (Ctrl-C, SIGTERM) interrupts
    #: :meth:`run` wherever it is, as Ctrl-C interrupts any Python code.
    checks_stops: bool = False

    @abc.abstractmethod
    def run(self, lr: float, batch_size: float, scale: Scale, context: RunContext) -> float:
        """The final loss of a run at ``lr`` and ``batch_size`` at ``scale``.

        Raises :class:`TrialFailed` when the run fails; a NaN or infinite loss is reported as a
        failure with reason ``"diverged"`` by the caller, so objectives may simply return it.
        """

    def allowed_tokens(self, scale: Scale) -> Sequence[float] | None:
        """The training-token counts a proxy run may use at ``scale``'s N (``None``: any)."""
        return None

    def allowed_scales(self, target: Scale) -> Sequence[Scale] | None:
        """The only scales (any N and D) a proxy run for ``target`` may use, when this objective
        chooses them itself (a replayed grid holds a few settings); ``None``: the plan picks
        token fractions at the target's N (:meth:`allowed_tokens`)."""
        return None

    def check_scales(self, scales: Sequence[Scale]) -> None:
        """Raise :class:`~steplaw_opt.errors.SteplawInputError` (one line) when this objective
        cannot run at one of the planned ``scales`` (a model size it cannot build, say), before
        any run is spent. The default accepts every scale."""
        return None

    def allowed_batch_sizes(self, scale: Scale) -> Sequence[float] | None:
        """The batch sizes this objective can run, if it is restricted (``None``: any)."""
        return None

    def expected_seconds(self, scale: Scale) -> float | None:
        """Its own estimate of a run's wall time at ``scale``, for a time budget before any run
        has been measured (``None``: it has none; the measured runs are used)."""
        return None
