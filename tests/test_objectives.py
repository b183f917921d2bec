"""Objectives: the command template (placeholders, JSON line, metrics file, failures, timeout,
NaN), the callable and the replay."""

from __future__ import annotations

import math
import sys
import time

import pytest

from steplaw_opt import Scale, SteplawInputError
from steplaw_opt.objectives import (
    CallableObjective,
    CommandObjective,
    GridReplayObjective,
    RunContext,
    TrialFailed,
)

PY = sys.executable
SCALE = Scale(N=1e6, D=2e8, seq_len=512)


def run(template: str, **kw) -> tuple[float, list[tuple[int, float]], RunContext]:
    reports: list[tuple[int, float]] = []
    ctx = RunContext(trial_number=7, report=lambda s, x: reports.append((s, x)))
    loss = CommandObjective(template, **kw).run(3e-3, 64, SCALE, ctx)
    return loss, reports, ctx


def test_placeholders_are_filled():
    template = (
        f'{PY} -c "import json,sys; a=sys.argv[1:]; '
        "print(json.dumps({{'loss': sum(map(float, a))}}))\" "
        "{lr} {batch_size} {batch_tokens} {tokens} {params} {seq_len} {trial_number}"
    )
    loss, _, ctx = run(template)
    assert loss == pytest.approx(3e-3 + 64 + 64 * 512 + 2e8 + 1e6 + 512 + 7)
    assert ctx.notes["command"].endswith(" 0.003 64 32768 200000000 1000000 512 7")


def test_last_json_line_wins_and_steps_are_reported():
    script = (
        "import json\n"
        "for s in (10, 20):\n"
        "    print(json.dumps({{'step': s, 'loss': 5.0 - s / 10}}))\n"
        "print('not json')\n"
        "print(json.dumps({{'loss': 3.21}}))\n"
    )
    loss, reports, _ = run(f'{PY} -c "{script}"')
    assert loss == 3.21
    assert reports == [(10, 4.0), (20, 3.0)]


def test_metrics_file():
    code = "import json,sys; json.dump({{'loss': 2.5}}, open(sys.argv[1], 'w'))"
    loss, _, _ = run(f'{PY} -c "{code}" {{metrics_file}}')
    assert loss == 2.5


def test_non_zero_exit_is_a_failure_with_stderr_tail():
    with pytest.raises(TrialFailed, match=r"exit code 3: .*out of memory"):
        run(f"{PY} -c \"import sys; print('CUDA out of memory', file=sys.stderr); sys.exit(3)\"")


def test_no_loss_printed():
    with pytest.raises(TrialFailed, match="printed no loss"):
        run("echo hello")


@pytest.mark.parametrize(
    "printed",
    ['{{"loss": NaN}}', '{{"loss": Infinity}}', '{{"loss": 9.0, "diverged": true}}'],
)
def test_nan_inf_and_diverged_are_failures(printed):
    with pytest.raises(TrialFailed, match="diverged"):
        run(f"echo '{printed}'")


def test_timeout_stops_the_whole_process_group():
    start = time.monotonic()
    with pytest.raises(TrialFailed, match="timeout after 1 s"):
        run("sleep 30 & sleep 30; echo '{{\"loss\": 1}}'", timeout=1)
    assert time.monotonic() - start < 10


def test_unknown_placeholder_and_bad_templates():
    with pytest.raises(SteplawInputError, match=r"unknown placeholder \{learning_rate\}"):
        CommandObjective("train --lr {learning_rate}")
    with pytest.raises(SteplawInputError, match="literal braces"):
        CommandObjective("echo '{\"loss\": 1}'")
    with pytest.raises(SteplawInputError, match="malformed"):
        CommandObjective("train --lr {lr")
    with pytest.raises(SteplawInputError, match="empty"):
        CommandObjective("  ")
    with pytest.raises(SteplawInputError, match="timeout"):
        CommandObjective("echo", timeout=-1)


def test_tokens_unit():
    obj = CommandObjective("echo {batch_size} {batch_tokens}", batch_unit="tokens")
    assert obj.render(1e-3, 65536, SCALE, 0, "m") == "echo 65536 65536"


@pytest.mark.parametrize(
    ("lr", "shown"),
    [
        (1.0, "1.0"),
        (1, "1.0"),
        (2.0, "2.0"),
        (100000.0, "100000.0"),
        (0.003, "0.003"),
        (0.0031234567, "0.00312346"),
        (1e-05, "1e-05"),
        (3.2e-7, "3.2e-07"),
    ],
)
def test_lr_is_always_a_float_literal(lr, shown):
    # a script that type-checks its overrides (nanoGPT's configurator: literal_eval, then the
    # default's type) must get a float: "1" would be an int and stop the run
    from ast import literal_eval

    command = CommandObjective("train --lr={lr}").render(lr, 64, SCALE, 0, "m")
    written = command.split("=", 1)[1]
    assert written == shown
    assert type(literal_eval(written)) is float
    assert math.isclose(literal_eval(written), lr, rel_tol=1e-5)


def test_callable_objective_checks_its_signature():
    obj = CallableObjective(lambda lr, batch_size, scale: lr * batch_size)
    assert obj.run(0.5, 4, SCALE, RunContext()) == 2.0
    with pytest.raises(SteplawInputError, match="must accept"):
        CallableObjective(lambda lr: lr)


def test_replay_objective(steplaw_data):
    obj = GridReplayObjective(steplaw_data / "dense_lr_bs_loss.csv")
    s = obj.settings[0]
    scale = Scale(N=s.N, D=s.D)
    i = s.best_index
    assert obj.run(float(s.lr[i]), float(s.batch[i]), scale, RunContext()) == s.min_loss
    assert obj.allowed_tokens(Scale(N=s.N, D=1e11)) == [4e9, 1.14e10, 2e10, 1e11]
    with pytest.raises(SteplawInputError, match="no setting"):
        obj.run(1e-3, 64, Scale(N=1e9, D=1e9), RunContext())
    assert math.isfinite(obj.run(1e-3, 64, scale, RunContext()))
