"""A shell command template as the objective.

The template's placeholders are filled per run (Python format rules: write a literal brace as
``{{`` or ``}}``) and the command runs in ``/bin/sh``::

    python train.py --lr {lr} --batch-size {batch_size} --tokens {tokens} --out {metrics_file}

A placeholder is a bare name: no format spec, conversion, attribute or index (``{lr:.2e}``,
``{lr!r}``, ``{lr[0]}`` are refused when the objective is made, not at the first trial). Every
value is quoted for the shell, so a temporary folder with a space, a quote or a ``;`` in its name
reaches the job as one word and runs nothing; a placeholder may stand bare or inside your own
single or double quotes (``--out '{metrics_file}'``), the value is quoted for where it stands.
Numbers need no quotes and get none (``--lr 0.003``); ``{lr}`` is always a Python float literal
(``1.0``, never ``1``: a script that type-checks its overrides, as nanoGPT's does, gets a float).

By default the job reports its loss as the last JSON line on stdout (``{"loss": 3.21}``) or as
JSON in ``{metrics_file}``; lines like ``{"step": 100, "loss": 3.9}`` are intermediate losses,
passed on as they arrive. A training script as it is can be read instead (docs/commands.md;
:mod:`steplaw_opt.objectives._output` implements it): a regular expression with named groups
``loss`` and ``step`` matched against its stdout and stderr lines (the last match is the final
loss, every match with a step an intermediate loss), and/or ``{metrics_file}`` as JSON lines or
CSV with a named column, followed while the job runs. Step-driven scripts get ``{steps}``
(``ceil(tokens / batch_tokens)``), ``{warmup_steps}`` and ``{decay_steps}`` (fractions of the
steps) and ``{trial_dir}``.

A non-zero exit, a timeout, a line with ``"diverged": true``, a loss that is not finite or no loss
at all is a failed run whose reason (exit code and stderr tail, "timeout", "diverged") is
recorded. Output is read defensively: bytes that are not UTF-8 are replaced, a line longer than
:data:`MAX_LINE_BYTES` keeps only its tail, a metrics file is read only if it is a regular file
(not a FIFO or ``/dev/zero``) and only its last :data:`MAX_METRICS_BYTES`, and a failure reason
keeps the tail of stderr, a few KB at most.
"""

from __future__ import annotations

import collections
import contextlib
import decimal
import json
import math
import numbers
import os
import queue
import re
import shlex
import signal
import string
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from steplaw_opt.errors import SteplawInputError
from steplaw_opt.objectives._base import Objective, RunContext, TrialFailed
from steplaw_opt.objectives._output import (
    MAX_LINE_BYTES,
    MAX_METRICS_BYTES,  # noqa: F401  (the documented limit, named in the docstring)
    LossFormat,
    Reading,
    file_signature,
    parse_json_line,
    read_json_metrics,
    read_metrics_file,
    reading_of,
)
from steplaw_opt.scale import Scale

PLACEHOLDERS = (
    "lr",
    "batch_size",
    "batch_tokens",
    "tokens",
    "params",
    "seq_len",
    "steps",
    "warmup_steps",
    "decay_steps",
    "trial_number",
    "trial_dir",
    "metrics_file",
    "model_args",
)
SCHEDULE_PLACEHOLDERS = ("warmup_steps", "decay_steps")
STDERR_TAIL_LINES = 5
# A job ended by SIGTERM, SIGINT or SIGHUP (the signal, or a shell's 128 + signal): a stop from
# outside. STOP_SIGNAL_WAIT: seconds to wait for this process's own stop signal after it.
_STOP_EXITS = frozenset({-15, -2, -1, 143, 130, 129})
STOP_SIGNAL_WAIT = 1.0
WARMUP_FRACTION = 0.1  # {warmup_steps}: this fraction of {steps}, as the built-in trainer warms up
DECAY_FRACTION = 1.0  # {decay_steps}: this fraction of {steps} (a cosine to the last step)
METRICS_POLL = 1.0  # seconds between looks at a JSON-lines or CSV metrics file while a job runs
# A final loss matched before this fraction of the last step reported is not the run's result
# (an evaluation interval that does not divide the run leaves only the step-0 evaluation).
STALE_FRACTION = 0.9
# The defaults of CommandObjective's loss-reading and schedule settings (the CLI refuses them
# for an objective that is not a command).
COMMAND_DEFAULTS: dict[str, Any] = {
    "loss_pattern": None,
    "progress_pattern": None,
    "metrics_format": "json",
    "loss_key": "loss",
    "step_key": "step",
    "warmup_fraction": WARMUP_FRACTION,
    "decay_fraction": DECAY_FRACTION,
}


MAX_TEMPLATE_CHARS = 100_000  # a command line longer than this is not a command (ARG_MAX)
REASON_TAIL_CHARS = 2000  # the stderr tail kept in a failure reason


def _shown(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _parse_template(template: str) -> list[tuple[str, str | None]]:
    """The template as (literal text, placeholder name or None) pairs, checked completely: one
    line naming a malformed template, an unknown placeholder, or one with a format spec,
    conversion, attribute or index (they would fail, or silently truncate, at the first
    trial: every value is a string already formatted and quoted for the shell)."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise SteplawInputError(
            f"command template {_shown(template)!r} is malformed: {exc}"
        ) from None
    known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
    out: list[tuple[str, str | None]] = []
    for literal, field, spec, conversion in parts:
        if field is None:
            out.append((literal, None))
            continue
        written = "{" + field + (f"!{conversion}" if conversion else "")
        written += (f":{spec}" if spec else "") + "}"
        name = re.split(r"[.\[]", field, maxsplit=1)[0]
        if name not in PLACEHOLDERS:
            raise SteplawInputError(
                f"command template has unknown placeholder {_shown(written)}; known: {known} "
                "(write literal braces as {{ and }})"
            )
        if name != field or conversion or spec:
            raise SteplawInputError(
                f"command template placeholder {_shown(written)} takes no format spec, "
                f"conversion, attribute or index: write {{{name}}} (values come formatted, "
                "lr as a float literal of 6 significant digits, sizes as whole numbers, and "
                "quoted for the shell)"
            )
        out.append((literal, name))
    return out


def template_fields(template: str) -> list[str]:
    """The placeholder names a template uses; raises naming a malformed or unknown one, or one
    with a format spec, conversion, attribute or index."""
    return [name for _, name in _parse_template(template) if name is not None]


def _quote_state(text: str, state: str) -> str:
    """The shell's quoting state after ``text``, starting in ``state``: ``""`` (unquoted),
    ``"'"`` or ``'"'`` (inside single or double quotes)."""
    i = 0
    while i < len(text):
        c = text[i]
        if state == "'":
            if c == "'":
                state = ""
        elif c == "\\":
            i += 1  # escapes the next character, unquoted and inside double quotes
        elif state == '"':
            if c == '"':
                state = ""
        elif c in "'\"":
            state = c
        i += 1
    return state


def shell_quote(value: str, state: str) -> str:
    """``value`` as one literal word where the template puts it: bare (``shlex.quote``, which
    leaves numbers alone), inside single quotes (a quote closes them, is escaped, reopens) or
    inside double quotes (backslash, double quote, dollar and backquote are escaped)."""
    if state == "'":
        return value.replace("'", "'\\''")
    if state == '"':
        return re.sub(r'([\\"$`])', r"\\\1", value)
    return shlex.quote(value)


def render_template(
    parts: list[tuple[str, str | None]], values: Mapping[str, str | Sequence[str]]
) -> str:
    """Fill parsed template ``parts`` with ``values``, each quoted for the shell where it
    stands; a value that is a sequence of words (``{model_args}``) stands bare, each word
    quoted on its own."""
    out: list[str] = []
    state = ""
    for literal, name in parts:
        out.append(literal)
        state = _quote_state(literal, state)
        if name is not None:
            value = values[name]
            if isinstance(value, str):
                out.append(shell_quote(value, state))
            elif state:  # several words cannot stand inside one quoted word
                raise SteplawInputError(
                    f"placeholder {{{name}}} stands inside quotes in the command template; "
                    "write it bare (it is several words, each quoted for the shell)"
                )
            else:
                out.append(" ".join(shlex.quote(word) for word in value))
    return "".join(out)


def _lines(stream: IO[Any]) -> Iterator[str]:
    """The lines of a job's output, read in bounded pieces: bytes that are not UTF-8 are
    replaced (a binary stream must not kill the reader and leave the pipe full), and a line
    longer than :data:`MAX_LINE_BYTES` keeps only its tail (a 2 MB line is not held whole)."""
    raw = getattr(stream, "buffer", stream)  # the bytes under a text-mode pipe
    partial = b""
    while True:
        chunk = raw.readline(MAX_LINE_BYTES)
        if not chunk:
            if partial:
                yield partial.decode("utf-8", errors="replace")
            return
        if isinstance(chunk, str):  # a text stream without a buffer (tests, wrappers)
            chunk = chunk.encode("utf-8", errors="replace")
        if chunk.endswith(b"\n"):
            line = (partial + chunk)[-MAX_LINE_BYTES:] if partial else chunk
            partial = b""
            yield line.decode("utf-8", errors="replace")
        else:
            partial = (partial + chunk)[-MAX_LINE_BYTES:]


def _tail(text: str, limit: int = REASON_TAIL_CHARS) -> str:
    """The last ``limit`` characters of ``text`` (what a person reads first in a traceback is
    its end)."""
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


class CommandObjective(Objective):
    """Runs a shell command template per trial (see the module docstring and docs/commands.md).

    Args:
        template: the command, with placeholders ``{lr} {batch_size} {batch_tokens} {tokens}
            {params} {seq_len} {steps} {warmup_steps} {decay_steps} {trial_number} {trial_dir}
            {metrics_file} {model_args}``.
        batch_unit: the unit of ``{batch_size}``: ``"sequences"`` (of ``seq_len``) or
            ``"tokens"``; ``{batch_tokens}`` is always tokens.
        timeout: seconds per run (``None``: no limit); the whole process group is stopped.
        workdir: where the command runs (default: the current folder).
        env: extra environment variables.
        loss_pattern: a regular expression with a named group ``loss`` (and optionally
            ``step``) searched in every stdout and stderr line; the last match is the final
            loss (``None``: the last JSON line on stdout).
        progress_pattern: the pattern of the intermediate losses (default: ``loss_pattern``);
            a match needs a ``step`` to count.
        metrics_format: how ``{metrics_file}`` is read: ``"json"`` (one document or JSON
            lines, read at the end), ``"jsonl"`` or ``"csv"`` (followed while the job runs:
            rows with a step are intermediate losses, the last row with a loss is the final
            one; the file wins over stdout).
        loss_key, step_key: the key (JSON) or column (CSV) of the loss and of the step.
        warmup_fraction: ``{warmup_steps}`` is this fraction of ``{steps}`` (rounded, at least
            1 when positive).
        decay_fraction: ``{decay_steps}`` is this fraction of ``{steps}`` (1.0: the decay ends
            at the last step, nanoGPT's ``lr_decay_iters``; 0.2: a WSD cooldown's length); at
            least ``{warmup_steps}`` + 1 when the template uses both and this fraction is not
            below the warmup's (:meth:`schedule_steps`).
        models: the model configs a ladder runs (:func:`parse_models`): non-embedding size N
            → the arguments that build it (``"--n_layer=6 --n_embd=384"``), which
            ``{model_args}`` becomes for a run at that N, as shell words, each quoted. Give the
            ladder's sizes to the study (``tune(ladder=…)``; the CLI's ``--model`` does both).
    """

    name = "command"
    checks_stops = True  # its wait polls context.stop_check every 0.1 s

    def __init__(
        self,
        template: str,
        *,
        batch_unit: str = "sequences",
        timeout: float | None = None,
        workdir: str | Path | None = None,
        env: dict[str, str] | None = None,
        loss_pattern: str | None = None,
        progress_pattern: str | None = None,
        metrics_format: str = "json",
        loss_key: str = "loss",
        step_key: str = "step",
        warmup_fraction: float = WARMUP_FRACTION,
        decay_fraction: float = DECAY_FRACTION,
        models: Mapping[float, str] | None = None,
    ) -> None:
        if not isinstance(template, str) or not template.strip():
            raise SteplawInputError("command template is empty")
        if len(template) > MAX_TEMPLATE_CHARS or "\x00" in template:
            raise SteplawInputError(
                f"command template {_shown(template)!r} is not a command line (over "
                f"{MAX_TEMPLATE_CHARS:,} characters, or a NUL byte)"
            )
        self._parts = _parse_template(template)
        self.fields = [name for _, name in self._parts if name is not None]
        if batch_unit not in ("sequences", "tokens"):
            raise SteplawInputError(
                f"batch_unit must be 'sequences' or 'tokens', got {batch_unit!r}"
            )
        if timeout is not None and not (
            isinstance(timeout, (int, float))
            and not isinstance(timeout, bool)
            and timeout > 0  # NaN fails this too
        ):
            raise SteplawInputError(
                f"timeout must be a positive number of seconds, got {timeout!r}"
            )
        self.output = LossFormat(
            loss_pattern=loss_pattern,
            progress_pattern=progress_pattern,
            metrics_format=metrics_format,
            loss_key=loss_key,
            step_key=step_key,
        )
        if metrics_format != "json" and not {"metrics_file", "trial_dir"} & set(self.fields):
            raise SteplawInputError(
                f"metrics format {metrics_format!r} reads {{metrics_file}}, but the command "
                "template has neither {metrics_file} nor {trial_dir}: tell the job where to "
                "write it"
            )
        self.warmup_fraction = _fraction("warmup fraction", warmup_fraction)
        self.decay_fraction = _fraction("decay fraction", decay_fraction)
        self.template = template
        self.batch_unit = batch_unit
        self.timeout = timeout
        self.workdir = _check_workdir(workdir)
        self.env = _check_env(env)
        self.models = parse_models(models)
        if "model_args" in self.fields and not self.models:
            raise SteplawInputError(
                "the command template uses {model_args} but no model configs were given "
                "(--model N=ARGS)"
            )
        if self.models and not {"model_args", "params"} & set(self.fields):
            raise SteplawInputError(
                "model configs were given but the command template has neither {model_args} "
                "nor {params}: the job would train the same model at every size"
            )
        # A trial render now, with values like a real trial's: whatever the template does
        # wrong shows here, not at the first trial.
        sample_n = next(iter(self.models), 1e9)
        self.render(1e-3, 64, Scale(N=sample_n, D=1e11), 0, "/tmp/steplaw-trial-x/metrics.json")

    def model_words(self, scale: Scale) -> list[str]:
        """``{model_args}`` at ``scale``: the words of the model config of its N (sizes match
        to a relative 1e-6), or one line naming the size none was given for."""
        n = float(scale.N or 0)
        for size, words in self.models.items():
            if math.isclose(size, n, rel_tol=1e-6):
                return words
        known = ", ".join(f"{m:.4g}" for m in self.models)
        raise SteplawInputError(
            f"no model config for N={n:.4g} (the command template uses {{model_args}}); "
            f"--model gives {known}"
        )

    def check_scales(self, scales: Sequence[Scale]) -> None:
        """With ``{model_args}`` in the template every planned size needs a model config."""
        if "model_args" in self.fields:
            for scale in scales:
                self.model_words(scale)

    def steps(self, batch_size: float, scale: Scale) -> int:
        """``{steps}``: optimizer steps that train on the run's tokens,
        ``ceil(tokens / batch_tokens)`` (at least 1; the last batch may overshoot the tokens
        by less than one batch)."""
        return steps_for(float(scale.D or 0), self._batch_tokens(batch_size, scale))

    def _batch_tokens(self, batch_size: float, scale: Scale) -> float:
        return batch_size if self.batch_unit == "tokens" else batch_size * scale.seq_len

    def render(
        self, lr: float, batch_size: float, scale: Scale, trial_number: int, metrics: str
    ) -> str:
        """The shell command for one run: every value quoted for where it stands."""
        batch_tokens = self._batch_tokens(batch_size, scale)
        steps = steps_for(float(scale.D or 0), batch_tokens)
        warmup, decay = self.schedule_steps(steps)
        values = {
            "lr": float_literal(lr),
            "batch_size": _number(batch_size),
            "batch_tokens": _number(batch_tokens),
            "tokens": _number(float(scale.D or 0)),
            "params": _number(float(scale.N or 0)),
            "seq_len": str(scale.seq_len),
            "steps": str(steps),
            "warmup_steps": str(warmup),
            "decay_steps": str(decay),
            "trial_number": str(trial_number),
            "trial_dir": os.path.dirname(metrics) or ".",
            "metrics_file": metrics,
        }
        words: dict[str, str | Sequence[str]] = dict(values)
        if "model_args" in self.fields:
            words["model_args"] = self.model_words(scale)
        return render_template(self._parts, words)

    def schedule_steps(self, steps: int) -> tuple[int, int]:
        """``{warmup_steps}`` and ``{decay_steps}`` for a run of ``steps``: their fractions of
        it (:func:`fraction_of`), except that when the template uses both and the decay is meant
        to end after the warmup (``decay_fraction >= warmup_fraction``, nanoGPT's
        ``lr_decay_iters``), ``{decay_steps}`` is at least ``{warmup_steps}`` + 1 — rounding a
        short run (1 step, or equal fractions) would make them equal, and a schedule that
        divides by their difference (nanoGPT's ``get_lr``) divide by zero. It can then be
        ``steps`` + 1."""
        warmup = fraction_of(steps, self.warmup_fraction)
        decay = fraction_of(steps, self.decay_fraction)
        if (
            all(name in self.fields for name in SCHEDULE_PLACEHOLDERS)
            and self.decay_fraction >= self.warmup_fraction
            and decay <= warmup
        ):
            decay = warmup + 1
        return warmup, decay

    def to_spec(self) -> dict[str, Any]:
        """How ``steplaw-opt worker`` rebuilds this objective (stored in the study):
        :func:`command_objective_from_spec` reads it back."""
        return {
            "kind": "command",
            "command": self.template,
            **self.output.to_dict(),
            "warmup_fraction": self.warmup_fraction,
            "decay_fraction": self.decay_fraction,
            "models": [[size, shlex.join(words)] for size, words in self.models.items()],
        }

    def identity_key(self) -> Any:
        """What a resumed study compares: the template, and the schedule fractions when the
        template uses them (they change what a run trains; how the loss is read may be fixed
        and the study resumed)."""
        used = [name for name in SCHEDULE_PLACEHOLDERS if name in self.fields]
        if "model_args" in self.fields:  # the configs are what each size trains
            models = [[size, words] for size, words in self.models.items()]
            return [self.template, models, *(self._fractions(used) if used else [])]
        if not used:
            return self.template
        return [self.template, *self._fractions(used)]

    def _fractions(self, used: list[str]) -> list[float | None]:
        return [
            self.warmup_fraction if "warmup_steps" in used else None,
            self.decay_fraction if "decay_steps" in used else None,
        ]

    def run(self, lr: float, batch_size: float, scale: Scale, context: RunContext) -> float:
        timeout = context.timeout if context.timeout is not None else self.timeout
        with tempfile.TemporaryDirectory(prefix="steplaw-trial-") as tmp:
            metrics = str(Path(tmp) / self.output.metrics_name())
            command = self.render(lr, batch_size, scale, context.trial_number, metrics)
            context.notes["command"] = command
            if "steps" in self.fields:
                context.notes["steps"] = self.steps(batch_size, scale)
            return self._execute(command, metrics, timeout, context)

    # ------------------------------------------------------------------ process handling
    def _execute(
        self, command: str, metrics: str, timeout: float | None, context: RunContext
    ) -> float:
        env = {**os.environ, **self.env}
        grace = stop_grace()  # read (and checked) before the job starts
        proc = subprocess.Popen(
            command,
            shell=True,
            cwd=self.workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, so a timeout stops its children
        )
        # Stops the group even when this process cannot (SIGKILL, a crash): see _Watchdog.
        watchdog = _Watchdog(proc.pid, grace)
        events: queue.Queue[tuple[str, Any]] = queue.Queue()
        stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        state = _RunState()
        fmt = self.output
        follow = None if fmt.metrics_format == "json" else _MetricsFollower(metrics, fmt)

        def matched(line: str) -> None:
            final, progress = fmt.match(line)
            for reading in final:
                events.put(("final", reading))
            for reading in progress:
                events.put(("progress", reading))

        def pump_stdout() -> None:
            assert proc.stdout is not None
            for line in _lines(proc.stdout):  # bounded, binary-safe
                if fmt.reads_json_lines:
                    record = parse_json_line(line)
                    if record is not None:
                        events.put(("json", record))
                if fmt.reads_lines:
                    matched(line)
                if line.strip():
                    state.last_line = line[-500:]

        def pump_stderr() -> None:
            assert proc.stderr is not None
            for line in _lines(proc.stderr):  # bounded, binary-safe
                if fmt.reads_lines:
                    matched(line)
                if line.strip():
                    stderr_tail.append(line.rstrip())

        threads = [threading.Thread(target=f, daemon=True) for f in (pump_stdout, pump_stderr)]
        for t in threads:
            t.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            try:
                while True:
                    self._drain(events, state, context)
                    if follow is not None:
                        follow.poll(state, context)
                    if context.stop_check is not None:
                        context.stop_check()
                    try:
                        proc.wait(timeout=0.1)
                        break
                    except subprocess.TimeoutExpired:
                        if deadline is not None and time.monotonic() > deadline:
                            _stop(proc, grace)
                            raise TrialFailed(f"timeout after {timeout:g} s") from None
            except BaseException:  # timeout, Ctrl-C, SIGTERM/SIGHUP (raised by the run loop)
                _stop(proc, grace)
                raise
            _stop(proc, grace)  # the job's shell has exited: end what it left running
            if proc.returncode in _STOP_EXITS and context.stop_check is not None:
                # A scheduler that stops a job signals all its processes at once (Slurm's time
                # limit, scancel, systemd's control-group kill): the job may die a moment
                # before this process gets its own signal. Wait for that signal, so the run is
                # "interrupted" (run again), not a failure that settles its slot.
                until = time.monotonic() + STOP_SIGNAL_WAIT
                while time.monotonic() < until:
                    context.stop_check()
                    time.sleep(0.02)
        finally:
            watchdog.release()
        for t in threads:
            t.join(timeout=5)
        self._drain(events, state, context)
        if follow is not None:
            follow.poll(state, context, force=True)
        tail = _tail(" | ".join(stderr_tail))  # stored and shown: a few KB at most
        if proc.returncode != 0:
            reason = f"exit code {proc.returncode}"
            if state.last_record is not None and state.last_record.get("diverged") is True:
                reason = "diverged"
            raise TrialFailed(f"{reason}: {tail}" if tail and reason != "diverged" else reason)
        final = self._final(state, metrics)
        if final is None:
            problem = follow.problem if follow is not None else None
            raise TrialFailed(fmt.no_loss(problem, state.last_line))
        if final.diverged or not math.isfinite(final.loss):
            raise TrialFailed("diverged")
        if final.step is not None:
            context.notes["loss_step"] = final.step
            last = max(state.reported, default=final.step)
            if fmt.loss_pattern is not None and final.step < STALE_FRACTION * last:
                raise TrialFailed(
                    f"the final loss is from step {final.step}, but the run went on to step "
                    f"{last}: print the loss at the end of the run (nanoGPT: "
                    "--eval_interval={steps}); docs/commands.md"
                )
        return final.loss

    def _final(self, state: _RunState, metrics: str) -> Reading | None:
        """The run's result: the metrics file's (its last loss), else stdout's (the last match
        of the loss pattern, or the last JSON line)."""
        fmt = self.output
        if fmt.metrics_format == "json":
            record = read_json_metrics(metrics)
            if record:  # a JSON document in {metrics_file} is the result
                return reading_of(record, fmt.loss_key, fmt.step_key)
        elif state.file_final is not None:
            return state.file_final
        if not fmt.reads_json_lines:
            return state.final_match
        if state.last_record is None:
            return None
        return reading_of(state.last_record, fmt.loss_key, fmt.step_key)

    def _drain(
        self, events: queue.Queue[tuple[str, Any]], state: _RunState, context: RunContext
    ) -> None:
        fmt = self.output
        while True:
            try:
                kind, item = events.get_nowait()
            except queue.Empty:
                return
            if kind == "json":
                reading = reading_of(item, fmt.loss_key, fmt.step_key)
                if reading is not None and fmt.progress_pattern is None:
                    state.report(reading, context)
                state.last_record = item  # the last JSON line is the run's result
            elif kind == "final":
                state.final_match = item
            else:
                state.report(item, context)


class _RunState:
    """What one run has reported so far (touched by the thread that polls the job)."""

    def __init__(self) -> None:
        self.last_record: dict[str, Any] | None = None  # the last JSON line on stdout
        self.final_match: Reading | None = None  # the last match of the loss pattern
        self.file_final: Reading | None = None  # the last loss in a jsonl/csv metrics file
        self.last_line: str | None = None  # stdout's last non-empty line (for a hint)
        self.reported: set[int] = set()

    def report(self, reading: Reading, context: RunContext) -> None:
        """Pass an intermediate loss on: one per step (the first), finite losses only."""
        step = reading.step
        if step is None or step in self.reported or not math.isfinite(reading.loss):
            return
        self.reported.add(step)
        if context.report is not None:
            context.report(step, reading.loss)


class _MetricsFollower:
    """A JSON-lines or CSV ``{metrics_file}``, read again whenever it changed (at most every
    :data:`METRICS_POLL` seconds, and once at the end): a file that is rewritten whole (as
    Lightning's CSV logger does when a new metric appears) is read right."""

    def __init__(self, path: str, fmt: LossFormat) -> None:
        self.path = path
        self.fmt = fmt
        self.seen: tuple[int, int, int] | None = None
        self.next_poll = 0.0
        self.problem: str | None = "it was not written (or is not a regular file)"

    def poll(self, state: _RunState, context: RunContext, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self.next_poll:
            return
        self.next_poll = now + METRICS_POLL
        signature = file_signature(self.path)
        if signature is None or (signature == self.seen and not force):
            return  # the end reads once more: a last line without a line break counts then
        self.seen = signature
        fmt = self.fmt
        readings, self.problem = read_metrics_file(
            self.path, fmt.metrics_format, fmt.loss_key, fmt.step_key, running=not force
        )
        for reading in readings:
            state.report(reading, context)
        if readings:
            state.file_final = readings[-1]


def steps_for(tokens: float, batch_tokens: float) -> int:
    """``ceil(tokens / batch_tokens)``, at least 1 (a ratio within rounding of a whole number
    is that number)."""
    if not (batch_tokens > 0 and math.isfinite(tokens) and tokens > 0):
        return 1
    q = tokens / batch_tokens
    n = round(q)
    return max(1, n if abs(q - n) <= 1e-9 * max(1.0, q) else math.ceil(q))


def fraction_of(steps: int, fraction: float) -> int:
    """``fraction`` of ``steps``, rounded half up, at least 1 when ``fraction`` is positive
    and at most ``steps``."""
    if fraction <= 0:
        return 0
    return min(steps, max(1, math.floor(fraction * steps + 0.5)))


def _fraction(what: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (0 <= value <= 1)  # NaN fails this too
    ):
        raise SteplawInputError(f"the {what} must be a number in [0, 1], got {_shown(repr(value))}")
    return float(value)


def float_literal(x: float) -> str:
    """``x`` to 6 significant digits, written as a Python float literal: ``1.0``, not ``1``
    (``0.00312``, ``1e-05``, ``100000.0``). A script that type-checks its overrides, as
    nanoGPT's configurator does with ``literal_eval``, refuses an int where a float is due."""
    return repr(float(f"{x:.6g}"))


def _number(x: float) -> str:
    return str(round(x)) if abs(x - round(x)) < 1e-9 * max(1.0, abs(x)) else f"{x:.6g}"


def _check_workdir(workdir: Any) -> Path | None:
    if workdir is None:
        return None
    if not isinstance(workdir, (str, os.PathLike)):
        raise SteplawInputError(f"workdir must be a folder path, got {workdir!r}")
    path = Path(workdir)
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise SteplawInputError(f"workdir {_shown(str(path), 200)!r} {what}")
    return path


def _check_env(env: Any) -> dict[str, str]:
    """Extra environment variables as a ``{name: value}`` dict of strings (what ``exec``
    takes), checked now rather than when the first job starts."""
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise SteplawInputError(
            f"env must be a dict of name: value strings, got {_shown(repr(env))}"
        )
    out: dict[str, str] = {}
    for key, value in env.items():
        if not isinstance(key, str) or not key or "=" in key or "\x00" in key:
            raise SteplawInputError(f"env names must be non-empty text without '=', got {key!r}")
        if not isinstance(value, str) or "\x00" in value:
            raise SteplawInputError(
                f"env[{key!r}] must be text, got {_shown(repr(value))} (write str(value))"
            )
        out[key] = value
    return out


# --------------------------------------------------------------------------------- workers
def stored_command(study: Any) -> str | None:
    """The command template a study made by ``tune --create-only --command`` stores for its
    workers (``None`` when it stores another objective). Whoever can write the study's
    database can change it: docs/security.md."""
    from steplaw_opt._records import ATTR_CONFIG

    try:
        doc = json.loads(study.user_attrs.get(ATTR_CONFIG) or "{}")
    except (TypeError, ValueError):
        return None
    spec = doc.get("objective") if isinstance(doc, dict) else None
    if isinstance(spec, dict) and spec.get("kind") == "command":
        command = spec.get("command")
        return command if isinstance(command, str) else None
    return None


def worker_objective(
    study: Any, command: str, models: Mapping[float, str] | None = None
) -> CommandObjective:
    """The objective of a worker that states its own ``command`` (``worker --command``): the
    study must store exactly that command, and the same model configs as ``models`` (the
    worker's ``--model``), or the worker refuses in one line and runs nothing; the worker then
    runs its own copies, never the stored text (which may change meanwhile)."""
    from steplaw_opt._records import ATTR_CONFIG

    stored = stored_command(study)
    if stored != command:
        what = "no command" if stored is None else f"the command {_shown(stored, 120)!r}"
        raise SteplawInputError(
            f"the study's stored command differs from --command: study {study.study_name!r} "
            f"stores {what}, this worker runs only {_shown(command, 120)!r}; nothing was run"
        )
    doc = json.loads(study.user_attrs[ATTR_CONFIG])
    timeout = doc.get("timeout_per_trial")
    own = parse_models(models)
    stored_models = parse_models(_stored_models(doc["objective"].get("models")))
    if own != stored_models:
        shown = ", ".join(f"{n:.4g}" for n in stored_models) or "none"
        raise SteplawInputError(
            f"the study's stored model configs differ from this worker's --model: study "
            f"{study.study_name!r} stores {shown}; give the same --model entries as tune; "
            "nothing was run"
        )
    return command_objective_from_spec(
        {  # its own copies of the template and the model configs
            **doc["objective"],
            "command": command,
            "models": [[n, shlex.join(w)] for n, w in own.items()],
        },
        batch_unit=doc.get("batch_unit", "sequences"),
        timeout=float(timeout) if isinstance(timeout, (int, float)) else None,
    )


def command_objective_from_spec(
    spec: Mapping[str, Any], *, batch_unit: str = "sequences", timeout: float | None = None
) -> CommandObjective:
    """The objective a study's stored spec describes (:meth:`CommandObjective.to_spec`; keys
    an older version did not write take their defaults), checked as when it was made: a value
    someone changed in the database is refused in one line."""
    command = spec.get("command")
    if not isinstance(command, str):
        raise SteplawInputError(f"the study's stored command is not text: {_shown(repr(command))}")
    return CommandObjective(
        command,
        batch_unit=batch_unit,
        timeout=timeout,
        loss_pattern=spec.get("loss_pattern"),
        progress_pattern=spec.get("progress_pattern"),
        metrics_format=spec.get("metrics_format", "json"),
        loss_key=spec.get("loss_key", "loss"),
        step_key=spec.get("step_key", "step"),
        warmup_fraction=spec.get("warmup_fraction", WARMUP_FRACTION),
        decay_fraction=spec.get("decay_fraction", DECAY_FRACTION),
        models=_stored_models(spec.get("models")),
    )


def _stored_models(pairs: Any) -> dict[float, str] | None:
    if pairs is None or pairs == []:
        return None
    try:
        return {float(size): str(args) for size, args in pairs}
    except (TypeError, ValueError):
        raise SteplawInputError(
            f"the study's stored model configs are not [N, args] pairs: {_shown(repr(pairs))}"
        ) from None


MAX_MODELS = 16


def parse_models(models: Mapping[float, str] | None) -> dict[float, list[str]]:
    """Model configs as size → shell words (``shlex.split``), largest first: each size a
    positive number, no size twice, each config text that splits (balanced quotes).

    >>> parse_models({6e6: "--n_layer=4 --n_embd='256'", 2.5e7: "--n_layer=6"})
    {25000000.0: ['--n_layer=6'], 6000000.0: ['--n_layer=4', '--n_embd=256']}
    """
    if not models:
        return {}
    if not isinstance(models, Mapping):
        raise SteplawInputError(
            f"models must map a size N to its arguments, got {_shown(repr(models))}"
        )
    if len(models) > MAX_MODELS:
        raise SteplawInputError(f"{len(models)} model configs, more than {MAX_MODELS}: a typo?")
    sizes: dict[float, str] = {}
    for size, args in models.items():
        n = _as_size(size)
        if n is None:
            raise SteplawInputError(
                f"model size must be a positive number, got {_shown(repr(size))}"
            )
        if any(math.isclose(n, m, rel_tol=1e-6) for m in sizes):
            raise SteplawInputError(f"model size N={n:.4g} is given twice")
        sizes[n] = args
    out: dict[float, list[str]] = {}
    for n, args in sorted(sizes.items(), key=lambda kv: -kv[0]):
        if not isinstance(args, str) or "\x00" in args:
            raise SteplawInputError(
                f"the arguments of model N={n:.4g} must be text, got {_shown(repr(args))}"
            )
        try:
            out[n] = shlex.split(args)
        except ValueError as exc:
            raise SteplawInputError(
                f"the arguments of model N={n:.4g} do not split into words ({exc}): "
                f"{_shown(args)!r}"
            ) from None
    return out


def _as_size(size: Any) -> float | None:
    """A model size as a float: a real number (or Decimal), not text ("25M": the CLI's
    --model parses those) or a bool, finite and positive once a float; ``None`` otherwise."""
    if isinstance(size, bool) or not isinstance(size, (numbers.Real, decimal.Decimal)):
        return None
    try:
        n = float(size)
    except (OverflowError, ValueError):
        return None
    return n if math.isfinite(n) and n > 0 else None


STOP_GRACE = 10.0  # seconds a job gets between SIGTERM and SIGKILL (STEPLAW_STOP_GRACE)
_WATCHDOG = (  # $1: the job's process group, $2: the grace period in whole seconds
    'read -r word; [ "$word" = done ] && exit 0; '
    'kill -s TERM -- "-$1" 2>/dev/null || exit 0; i=0; '
    'while [ "$i" -lt "$2" ] && kill -s 0 -- "-$1" 2>/dev/null; do sleep 1; i=$((i+1)); done; '
    'kill -s KILL -- "-$1" 2>/dev/null; exit 0'
)


def stop_grace() -> float:
    """Seconds between SIGTERM and SIGKILL when a job is stopped: ``STEPLAW_STOP_GRACE``, else
    :data:`STOP_GRACE` (time for a training job to write its last checkpoint)."""
    raw = os.environ.get("STEPLAW_STOP_GRACE")
    if raw is None or not raw.strip():
        return STOP_GRACE
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 <= value <= 3600):
        raise SteplawInputError(
            f"STEPLAW_STOP_GRACE must be a number of seconds in [0, 3600], got {raw!r}"
        )
    return value


class _Watchdog:
    """A tiny shell in its own session that stops the job's process group when this process
    dies without stopping it (SIGKILL, the OOM killer, a crash): it waits on a pipe only this
    process holds, and the kernel closes the pipe whatever way the process ends. A normal end
    writes "done" and the watchdog exits without touching anything."""

    def __init__(self, pgid: int, grace: float) -> None:
        try:
            self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                ["/bin/sh", "-c", _WATCHDOG, "steplaw-watchdog", str(pgid),
                 str(math.ceil(grace))],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # deaf to the terminal's Ctrl-C and hang-up
            )  # fmt: skip
        except OSError:  # no /bin/sh: the job still stops on every stop this process sees
            self._proc = None

    def release(self) -> None:
        """The job's group has been dealt with: let the watchdog go."""
        proc, self._proc = self._proc, None
        if proc is None or proc.stdin is None:
            return
        with contextlib.suppress(OSError):
            proc.stdin.write(b"done\n")
            proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=2)


def _group_alive(pgid: int, proc: subprocess.Popen[str]) -> bool:
    """Whether any process of the job's group is still alive (zombies do not count: they are
    dead, waiting for a parent to reap them)."""
    proc.poll()  # reap the shell if it has exited, so it does not count as alive
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we may not signal is alive
        return True
    try:
        entries = os.listdir("/proc")
    except OSError:  # no /proc (macOS): trust the signal
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _stop(proc: subprocess.Popen[str], grace: float | None = None) -> None:
    """Stop the command's whole process group: SIGTERM, then SIGKILL to whatever is left of the
    group after ``grace`` seconds. The group, not the shell, decides: the shell may die at once
    while the job it started ignores SIGTERM. A second Ctrl-C (or any error) during the grace
    period kills the group at once, so no stop leaves a job behind."""
    pgid = proc.pid  # start_new_session: the shell leads its own session and group
    if not _group_alive(pgid, proc):
        proc.wait()
        return
    grace = stop_grace() if grace is None else grace
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    try:
        while time.monotonic() < deadline and _group_alive(pgid, proc):
            time.sleep(0.05)
    finally:
        if _group_alive(pgid, proc):
            _signal_group(pgid, signal.SIGKILL)
        proc.wait()
