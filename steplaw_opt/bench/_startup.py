"""``steplaw-opt bench --startup``: the cold start of ``steplaw-opt predict`` against the time to
import typer, rich and numpy, measured in the same run.

Each figure is the median wall time of ``repeat`` fresh interpreters, the two commands
interleaved (which one goes first alternates), after one untimed run of each; the ratio of the
medians is the figure to compare across machines, an absolute time only says how busy this one
was. Only the standard library is imported here.
"""

from __future__ import annotations

import importlib.util
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PREDICT_ARGS = ("predict", "--params", "1e9", "--tokens", "1e11")
TARGET_RATIO = 1.5  # issue 17: predict's cold start at most 1.5× the baseline


@dataclass(frozen=True)
class StartupResult:
    """Wall times in ms of the baseline (``import typer, rich, numpy``) and of ``predict``."""

    baseline_command: tuple[str, ...]
    predict_command: tuple[str, ...]
    baseline_ms: tuple[float, ...]
    predict_ms: tuple[float, ...]
    bytecode_cached: bool = True

    @property
    def baseline_median_ms(self) -> float:
        return statistics.median(self.baseline_ms)

    @property
    def predict_median_ms(self) -> float:
        return statistics.median(self.predict_ms)

    @property
    def ratio(self) -> float:
        """Median predict time over median baseline time."""
        return self.predict_median_ms / self.baseline_median_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline_command": list(self.baseline_command),
            "predict_command": list(self.predict_command),
            "repeat": len(self.baseline_ms),
            "baseline_median_ms": self.baseline_median_ms,
            "predict_median_ms": self.predict_median_ms,
            "ratio": self.ratio,
            "target_ratio": TARGET_RATIO,
            "bytecode_cached": self.bytecode_cached,
            "baseline_ms": list(self.baseline_ms),
            "predict_ms": list(self.predict_ms),
        }

    def lines(self) -> list[str]:
        """The report, one figure a line."""
        k = len(self.baseline_ms)
        out = [
            f"baseline: {self.baseline_median_ms:.0f} ms (median of {k})  "
            f"{_shown(self.baseline_command)}",
            f"predict:  {self.predict_median_ms:.0f} ms (median of {k})  "
            f"{_shown(self.predict_command)}",
            f"ratio:    {self.ratio:.2f}× (target ≤ {TARGET_RATIO}×)",
        ]
        if not self.bytecode_cached:
            out.append(
                "note: no bytecode cache for steplaw_opt (PYTHONDONTWRITEBYTECODE?): its modules "
                "are compiled on every start, which these figures include"
            )
        return out


def _shown(command: Sequence[str]) -> str:
    return shlex.join([Path(command[0]).name, *command[1:]])


def baseline_command() -> tuple[str, ...]:
    return (sys.executable, "-c", "import typer, rich, numpy")


def predict_command() -> tuple[str, ...]:
    """The ``steplaw-opt`` console script beside this interpreter, else ``python -m``."""
    script = Path(sys.executable).with_name("steplaw-opt")
    if script.is_file():
        return (str(script), *PREDICT_ARGS)
    return (sys.executable, "-m", "steplaw_opt.cli", *PREDICT_ARGS)  # pragma: no cover


def bytecode_cached() -> bool:
    """Whether ``steplaw_opt``'s own modules load from a bytecode cache."""
    spec = importlib.util.find_spec("steplaw_opt")
    if spec is None or spec.origin is None:  # pragma: no cover
        return False
    return Path(importlib.util.cache_from_source(spec.origin)).is_file()


def measure_startup(
    repeat: int = 15,
    *,
    baseline: Sequence[str] | None = None,
    predict: Sequence[str] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> StartupResult:
    """Time ``repeat`` fresh runs of each command, interleaved, after one untimed run of each."""
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    commands = (tuple(baseline or baseline_command()), tuple(predict or predict_command()))
    for command in commands:
        _run(command)
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(repeat):
        for j in (0, 1) if i % 2 == 0 else (1, 0):
            start = clock()
            _run(commands[j])
            times[j].append((clock() - start) * 1000)
    return StartupResult(
        commands[0], commands[1], tuple(times[0]), tuple(times[1]), bytecode_cached()
    )


def _run(command: Sequence[str]) -> None:
    done = subprocess.run(
        list(command), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [""])[-1]
        raise RuntimeError(f"{_shown(command)} exited with {done.returncode}: {last}")
