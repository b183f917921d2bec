"""Objectives: run one training job at (lr, batch size, scale) and return its final loss.

Every objective has one interface, :class:`Objective`: ``run(lr, batch_size, scale, trial)``
returns the final loss, or raises :class:`TrialFailed` with a reason (a non-zero exit, a
timeout, a diverged run). ``batch_size`` is in the unit the study was set up with (sequences of
``scale.seq_len`` tokens, or tokens).

- :class:`CallableObjective` — a Python function ``f(lr, batch_size, scale) -> float``;
- :class:`CommandObjective` — a shell command template (``{lr} {batch_size} …``);
- :class:`BuiltinTrainerObjective` — the built-in nanoGPT-style proxy trainer (torch);
- :class:`GridReplayObjective` — the released Step Law grids, replayed.
"""

from steplaw_opt._lazy import lazy_getattr
from steplaw_opt.objectives._base import Objective, RunContext, TrialFailed
from steplaw_opt.objectives._callable import CallableObjective
from steplaw_opt.objectives._command import CommandObjective
from steplaw_opt.objectives._replay import GridReplayObjective

__all__ = [
    "BuiltinTrainerObjective",
    "CallableObjective",
    "CommandObjective",
    "GridReplayObjective",
    "Objective",
    "RunContext",
    "TrialFailed",
]


# The built-in trainer imports torch, so only on first use.
_LAZY = {"BuiltinTrainerObjective": "steplaw_opt.objectives._builtin"}
__getattr__ = lazy_getattr(__name__, _LAZY)
