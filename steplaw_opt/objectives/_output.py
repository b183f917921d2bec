"""How a command's losses are read: JSON lines (the default), log lines matched by a regular
expression, and metrics files (one JSON document, JSON lines, CSV with a header).

Everything here reads input a job controls, so it is bounded and never raises on bad bytes: a
value that is not a number is no loss, a file that is not a regular file is not read, and only
the last :data:`MAX_METRICS_BYTES` of a file are parsed. docs/commands.md describes the rules
for users; this module is their one implementation.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any

from steplaw_opt.errors import SteplawInputError

METRICS_FORMATS = ("json", "jsonl", "csv")
PATTERN_GROUPS = ("loss", "step")  # the named groups a loss pattern may have
MAX_PATTERN_CHARS = 2000  # a log-line pattern longer than this is a mistake
MAX_KEY_CHARS = 200  # a JSON key or CSV column name
MAX_LINE_BYTES = 64 * 1024  # a JSON loss line is short: longer output lines keep their tail
MAX_METRICS_BYTES = 1 << 20  # the tail of a metrics file that is read
MAX_STEP = 10**15  # a "step" beyond this is not a step count

# Terminal colour and cursor codes (torchtitan and rich colour their log lines).
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
_DIGITS = re.compile(r"[0-9]{1,16}")


def _shown(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Reading:
    """One loss a job reported: its value, the step it was reached at (``None``: not given) and
    whether the job said it diverged."""

    loss: float
    step: int | None = None
    diverged: bool = False


# ----------------------------------------------------------------------------- checking
def check_pattern(pattern: object, what: str) -> re.Pattern[str]:
    """``pattern`` compiled, or one line naming it: not text, too long, not a regular
    expression, no ``loss`` group, or a named group other than ``loss`` and ``step``."""
    if not isinstance(pattern, str) or not pattern:
        raise SteplawInputError(
            f"the {what} must be a non-empty regular expression, got {_shown(repr(pattern))}"
        )
    if len(pattern) > MAX_PATTERN_CHARS or any(c in pattern for c in "\x00\n\r"):
        raise SteplawInputError(
            f"the {what} {_shown(pattern)!r} is not a one-line pattern (over "
            f"{MAX_PATTERN_CHARS:,} characters, a line break or a NUL byte)"
        )
    try:
        compiled = re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SteplawInputError(
            f"the {what} {_shown(pattern)!r} is not a regular expression: {detail}"
        ) from None
    groups = set(compiled.groupindex)
    if "loss" not in groups:
        raise SteplawInputError(
            f"the {what} {_shown(pattern)!r} has no group named loss: write "
            r"(?P<loss>[^\s,]+) where the loss stands (and (?P<step>\d+) for the step)"
        )
    extra = sorted(groups - set(PATTERN_GROUPS))
    if extra:
        raise SteplawInputError(
            f"the {what} {_shown(pattern)!r} has a group named {extra[0]}; only loss and step "
            "are read (write (?:…) for a group that is not captured)"
        )
    return compiled


def check_key(key: object, what: str) -> str:
    """A JSON key or CSV column name: non-empty one-line text."""
    if (
        not isinstance(key, str)
        or not key.strip()
        or len(key) > MAX_KEY_CHARS
        or any(c in key for c in "\x00\n\r")
    ):
        raise SteplawInputError(
            f"the {what} must be a non-empty one-line name, got {_shown(repr(key))}"
        )
    return key


def check_format(metrics_format: object) -> str:
    """``metrics_format`` when it is one of :data:`METRICS_FORMATS` (``json``, ``jsonl``,
    ``csv``); else a one-line refusal showing what was given (cut and escaped)."""
    if not isinstance(metrics_format, str) or metrics_format not in METRICS_FORMATS:
        raise SteplawInputError(
            f"metrics format must be one of {', '.join(METRICS_FORMATS)}, got "
            f"{_shown(repr(metrics_format))}"
        )
    return metrics_format


# ----------------------------------------------------------------------------- values
def parse_loss(text: str | None) -> float | None:
    """A loss written as text (``2.345``, ``1e-3``, ``nan``, ``inf``), or ``None``; a huge
    number is infinite (it diverged), never an error."""
    if text is None:
        return None
    text = text.strip().rstrip(",;")
    if not text or len(text) > 400:
        return math.inf if text.lstrip("+").isdigit() else None
    try:
        return float(text)
    except (ValueError, OverflowError):
        return None


def parse_step(text: object) -> int | None:
    """A step count (``120``, ``1,200``, ``1_200``, ``120.0``, a JSON integer), or ``None``."""
    if isinstance(text, bool):
        return None
    if isinstance(text, int):
        return text if 0 <= text <= MAX_STEP else None
    if isinstance(text, float):
        return int(text) if text.is_integer() and 0 <= text <= MAX_STEP else None
    if not isinstance(text, str):
        return None
    text = text.strip().replace(",", "").replace("_", "")
    if _DIGITS.fullmatch(text):
        value = int(text)
        return value if value <= MAX_STEP else None
    try:
        number = float(text) if len(text) <= 40 else math.nan
    except ValueError:
        return None
    return parse_step(number) if math.isfinite(number) else None


def loss_of(record: dict[str, Any], key: str = "loss") -> float | None:
    """The loss in a JSON record, or ``None`` (a bool, a list, a string that is no number)."""
    loss = record.get(key)
    if isinstance(loss, bool) or not isinstance(loss, (int, float, str)):
        return None
    try:
        return float(loss)  # json allows NaN/Infinity; "nan" strings too
    except (ValueError, OverflowError):  # an integer of 400 digits overflows a float
        return math.inf if isinstance(loss, int) else None


def reading_of(record: dict[str, Any], loss_key: str, step_key: str) -> Reading | None:
    """The reading in a JSON record: its loss and step, or that it diverged; ``None`` when it
    has neither a loss nor ``"diverged": true``."""
    diverged = record.get("diverged") is True
    loss = loss_of(record, loss_key)
    if loss is None and not diverged:
        return None
    step = record.get(step_key)
    is_step = isinstance(step, int) and not isinstance(step, bool) and 0 <= step <= MAX_STEP
    return Reading(math.nan if loss is None else loss, step if is_step else None, diverged)


def parse_json_line(line: str) -> dict[str, Any] | None:
    """The JSON object an output line holds (the whole line, spaces around it aside), or
    ``None``: a line that is not ``{…}``, bad JSON, JSON too deep or a number too long for the
    parser, or JSON that is not an object."""
    line = line.strip()
    if not (line.startswith("{") and line.endswith("}")):
        return None
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):  # bad JSON, a 5000-digit number, [[[[…]]]]
        return None
    return value if isinstance(value, dict) else None


# ----------------------------------------------------------------------------- log lines
def segments(line: str) -> list[str]:
    """The pieces of an output line a pattern is matched against: colour codes removed, and
    split at carriage returns (a progress bar redraws itself with ``\\r`` on one line)."""
    text = _ANSI.sub("", line) if "\x1b" in line else line
    return [s for s in text.replace("\r\n", "\n").split("\r") if s.strip()]


def match_line(pattern: re.Pattern[str], line: str) -> list[Reading]:
    """The readings ``pattern`` finds in ``line`` (its first match in each segment); a match
    whose ``loss`` is not a number is skipped, one whose ``step`` is not a count has no step."""
    out: list[Reading] = []
    has_step = "step" in pattern.groupindex
    for segment in segments(line):
        m = pattern.search(segment)
        if m is None:
            continue
        loss = parse_loss(m.group("loss"))
        if loss is None:
            continue
        out.append(Reading(loss, parse_step(m.group("step")) if has_step else None))
    return out


# ----------------------------------------------------------------------------- files
def _read_regular(path: str, *, head: bool) -> tuple[bytes, bool] | None:
    """The first (``head``) or last :data:`MAX_METRICS_BYTES` of ``path`` and whether the file
    is longer; ``None`` unless it is a regular file. Opened without blocking: a FIFO or a link
    to ``/dev/zero`` must not hang the study."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        cut = info.st_size > MAX_METRICS_BYTES
        if cut and not head:
            os.lseek(fd, info.st_size - MAX_METRICS_BYTES, os.SEEK_SET)
        return os.read(fd, MAX_METRICS_BYTES), cut
    except OSError:
        return None
    finally:
        os.close(fd)


def read_json_metrics(path: str) -> dict[str, Any] | None:
    """The JSON a job wrote to ``{metrics_file}`` (one document, or JSON lines: the last), or
    ``None``. Only a regular file is read, only its last :data:`MAX_METRICS_BYTES`, and bytes
    that are not UTF-8 are replaced."""
    got = _read_regular(path, head=False)
    if got is None:
        return None
    text = got[0].decode("utf-8", errors="replace")
    try:
        value = json.loads(text)
        return value if isinstance(value, dict) else None
    except (ValueError, RecursionError):
        records = [r for r in map(parse_json_line, text.splitlines()) if r is not None]
        return records[-1] if records else None


def file_signature(path: str) -> tuple[int, int, int] | None:
    """What changes when a file is written (inode, size, modification time), or ``None`` when
    it is not a regular file."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


def _tail_lines(path: str, complete: bool) -> list[str] | None:
    """The lines of the file's tail; with ``complete``, without a last line that has no line
    break yet (the job is still writing it)."""
    got = _read_regular(path, head=False)
    if got is None:
        return None
    raw, cut = got
    if complete and not raw.endswith(b"\n"):
        raw = raw[: raw.rfind(b"\n") + 1]
    lines = raw.decode("utf-8", errors="replace").splitlines()
    return lines[1:] if cut else lines  # a tail starts inside a line


def read_metrics_file(
    path: str, metrics_format: str, loss_key: str, step_key: str, *, running: bool = False
) -> tuple[list[Reading], str | None]:
    """Every reading in a JSON-lines or CSV metrics file, in order, and what is wrong with the
    file when it gives none (``None``: nothing to say). While the job is ``running``, a last
    line without its line break is left for the next read (it may be half written)."""
    if metrics_format == "jsonl":
        lines = _tail_lines(path, running)
        if lines is None:
            return [], "it was not written (or is not a regular file)"
        out = []
        for line in lines:
            record = parse_json_line(line)
            reading = None if record is None else reading_of(record, loss_key, step_key)
            if reading is not None:
                out.append(reading)
        return out, None if out else f"no JSON line in it has a {loss_key!r} value"
    head = _read_regular(path, head=True)
    if head is None:
        return [], "it was not written (or is not a regular file)"
    if running and b"\n" not in head[0]:
        return [], "its header line is not written yet"
    first = head[0].split(b"\n", 1)[0][:MAX_LINE_BYTES].decode("utf-8", errors="replace")
    header = next(csv.reader([first.strip("\ufeff\r")]), [])
    columns = [c.strip() for c in header]
    if loss_key not in columns:
        shown = _shown(", ".join(columns), 200) or "none"
        return [], f"it has no column {loss_key!r} (columns: {shown})"
    loss_i = columns.index(loss_key)
    step_i = columns.index(step_key) if step_key in columns else None
    lines = _tail_lines(path, running) or []
    if lines and not head[1]:
        lines = lines[1:]  # the whole file: its first line is the header
    out = []
    for row in csv.reader(line.replace("\x00", "") for line in lines):
        if len(row) <= loss_i or row == header:
            continue
        loss = parse_loss(row[loss_i])
        if loss is None:
            continue  # an empty cell: this row logged another metric
        step = parse_step(row[step_i]) if step_i is not None and len(row) > step_i else None
        out.append(Reading(loss, step))
    return out, None if out else f"no row has a {loss_key!r} value"


# ----------------------------------------------------------------------------- the format
@dataclass(frozen=True)
class LossFormat:
    """Where a command's losses are: the checked settings of :class:`CommandObjective`.

    ``loss_pattern`` (log lines on stdout and stderr; the last match is the final loss),
    ``progress_pattern`` (the intermediate losses; default: ``loss_pattern``),
    ``metrics_format`` (``{metrics_file}`` as ``json``, ``jsonl`` or ``csv``), and the
    ``loss_key``/``step_key`` of JSON lines, JSON metrics and CSV columns."""

    loss_pattern: str | None = None
    progress_pattern: str | None = None
    metrics_format: str = "json"
    loss_key: str = "loss"
    step_key: str = "step"
    _final: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)
    _progress: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_format(self.metrics_format)
        check_key(self.loss_key, "loss key")
        check_key(self.step_key, "step key")
        final = (
            None if self.loss_pattern is None else check_pattern(self.loss_pattern, "loss pattern")
        )
        progress = (
            final
            if self.progress_pattern is None
            else check_pattern(self.progress_pattern, "progress pattern")
        )
        object.__setattr__(self, "_final", final)
        object.__setattr__(self, "_progress", progress)

    @property
    def reads_lines(self) -> bool:
        """Whether output lines are matched against a pattern."""
        return self._final is not None or self._progress is not None

    @property
    def reads_json_lines(self) -> bool:
        """Whether JSON lines on stdout are read (no loss pattern is given)."""
        return self._final is None

    def match(self, line: str) -> tuple[list[Reading], list[Reading]]:
        """The final-loss and the progress readings in one output line."""
        final, progress = self._final, self._progress
        found = [] if final is None else match_line(final, line)
        if progress is final:
            return found, found
        return found, [] if progress is None else match_line(progress, line)

    def metrics_name(self) -> str:
        """The file name of ``{metrics_file}`` in the trial folder."""
        return f"metrics.{self.metrics_format}"

    def to_dict(self) -> dict[str, Any]:
        """These settings as plain values, as stored in a study's objective spec (a worker
        rebuilds the objective from them:
        :func:`~steplaw_opt.objectives._command.command_objective_from_spec`)."""
        return {
            "loss_pattern": self.loss_pattern,
            "progress_pattern": self.progress_pattern,
            "metrics_format": self.metrics_format,
            "loss_key": self.loss_key,
            "step_key": self.step_key,
        }

    def no_loss(self, metrics_problem: str | None, last_line: str | None) -> str:
        """Why a run has no loss, in one line, for the settings in use."""
        if self.metrics_format != "json":
            where = f"the {self.metrics_format} metrics file {{metrics_file}}"
            return f"the command reported no loss: {where} gave none ({metrics_problem})"
        if self.loss_pattern is not None:
            text = "the command printed no loss: no output line matched the loss pattern "
            text += repr(_shown(self.loss_pattern))
            if last_line:
                text += f" (its last line: {_shown(last_line.strip(), 120)!r})"
            return text
        if self.loss_key != "loss":
            return (
                f"the command printed no loss (expected a last JSON line with a {self.loss_key!r} "
                "value on stdout, or JSON in {metrics_file})"
            )
        return (
            'the command printed no loss (expected a last JSON line like {"loss": 3.21} '
            "on stdout, or JSON in {metrics_file})"
        )
