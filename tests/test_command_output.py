"""A command's loss read from its own output (issue 17): log-line patterns, JSON-lines and CSV
metrics files, the placeholders a step-driven script needs, the checks made before anything
runs, and the settings a study stores for its workers."""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time

import pytest

from steplaw_opt import Scale, SteplawInputError
from steplaw_opt.objectives import CommandObjective, RunContext, TrialFailed
from steplaw_opt.objectives._command import command_objective_from_spec
from steplaw_opt.objectives._output import (
    check_pattern,
    match_line,
    parse_loss,
    parse_step,
    read_metrics_file,
)

PY = sys.executable
SCALE = Scale(N=1e6, D=2e8, seq_len=512)
ITER = r"iter (?P<step>\d+): loss (?P<loss>[^\s,]+)"


def run(template: str, **kw) -> tuple[float, list[tuple[int, float]], RunContext]:
    reports: list[tuple[int, float]] = []
    ctx = RunContext(trial_number=1, report=lambda s, x: reports.append((s, x)))
    loss = CommandObjective(template, **kw).run(3e-3, 64, SCALE, ctx)
    return loss, reports, ctx


def printing(*lines: str, err: bool = False) -> str:
    """A command printing ``lines`` (to stderr with ``err``)."""
    code = f"import sys; [print(x, file=sys.{'stderr' if err else 'stdout'}) for x in {lines!r}]"
    return f"{PY} -c {json.dumps(code).replace('{', '{{').replace('}', '}}')}"


# ----------------------------------------------------------------------------- patterns
def test_the_last_match_is_the_final_loss_and_every_match_with_a_step_an_intermediate():
    loss, reports, ctx = run(
        printing("booting", "iter 0: loss 4.5", "iter 10: loss 3.25, time 1ms", "done"),
        loss_pattern=ITER,
    )
    assert loss == 3.25 and reports == [(0, 4.5), (10, 3.25)]
    assert ctx.notes["loss_step"] == 10


def test_patterns_read_stderr_too():
    loss, reports, _ = run(printing("INFO iter 5: loss 2.0", err=True), loss_pattern=ITER)
    assert loss == 2.0 and reports == [(5, 2.0)]


def test_a_pattern_without_a_step_gives_the_final_loss_only():
    loss, reports, _ = run(printing("loss=3.0", "loss=2.5"), loss_pattern=r"loss=(?P<loss>\S+)")
    assert loss == 2.5 and reports == []


def test_a_progress_pattern_reads_other_lines_than_the_final_loss():
    loss, reports, _ = run(
        printing("iter 0: loss 4.0", "eval 0: 4.1", "iter 5: loss 3.0", "eval 5: 3.1"),
        loss_pattern=r"eval (?P<step>\d+): (?P<loss>\S+)",
        progress_pattern=ITER,
    )
    assert loss == 3.1 and reports == [(0, 4.0), (5, 3.0)]


def test_a_progress_pattern_alone_keeps_the_json_line_as_the_result():
    loss, reports, _ = run(printing("iter 3: loss 4.0", '{"loss": 2.0}'), progress_pattern=ITER)
    assert loss == 2.0 and reports == [(3, 4.0)]


def test_a_repeated_step_is_reported_once():
    _, reports, _ = run(printing("iter 1: loss 4.0", "iter 1: loss 3.0"), loss_pattern=ITER)
    assert reports == [(1, 4.0)]


@pytest.mark.parametrize("printed", ["iter 3: loss nan", "iter 3: loss inf", "iter 3: loss 1e999"])
def test_a_non_finite_last_match_is_diverged(printed):
    with pytest.raises(TrialFailed, match=r"^diverged$"):
        run(printing("iter 1: loss 4.0", printed), loss_pattern=ITER)


def test_no_match_says_which_pattern_and_the_last_line():
    with pytest.raises(TrialFailed) as info:
        run(printing("step 10 | train loss 3.2"), loss_pattern=ITER)
    reason = info.value.reason
    assert "no output line matched the loss pattern" in reason and "step 10 | train" in reason


def test_a_final_loss_long_before_the_end_is_refused():
    stale = "final loss is from step 0, but the run went on to step 90"
    with pytest.raises(TrialFailed, match=stale):
        run(
            printing("eval 0: 4.2", "iter 0: loss 4.0", "iter 90: loss 2.0"),
            loss_pattern=r"eval (?P<step>\d+): (?P<loss>\S+)",
            progress_pattern=ITER,
        )


def test_binary_garbage_and_a_huge_line_do_not_hide_the_last_match():
    code = (
        "import sys; o = sys.stdout.buffer; o.write(b'iter 1: loss 4.0\\n'); "
        "o.write(bytes(range(256)) * 64 + b'\\n'); o.write(b'x' * 3_000_000 + b'\\n'); "
        "o.write(b'\\xff\\xfe iter 2: loss 3.5 \\x00\\n'); o.flush()"
    )
    started = time.monotonic()
    loss, reports, _ = run(f'{PY} -c "{code}"', loss_pattern=ITER)
    assert loss == 3.5 and reports == [(1, 4.0), (2, 3.5)]
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    ("text", "value"),
    [("2.5", 2.5), ("2.5,", 2.5), ("1e-3", 1e-3), ("nan", None), ("x", None), ("", None)],
)
def test_loss_text(text, value):
    got = parse_loss(text)
    if text == "nan":
        assert got is not None and math.isnan(got)
    else:
        assert got == value


@pytest.mark.parametrize(
    ("text", "value"),
    [("120", 120), ("1,200", 1200), ("1_200", 1200), ("12.0", 12), ("-1", None),
     ("1.5", None), ("1e99", None), ("x1", None), (True, None), (7, 7)],
)  # fmt: skip
def test_step_text(text, value):
    assert parse_step(text) == value


def test_a_redrawn_progress_bar_line_is_matched_piece_by_piece():
    pattern = check_pattern(ITER, "loss pattern")
    readings = match_line(pattern, "10%|#  |\riter 4: loss 3.0\r20%|## |\riter 8: loss 2.0")
    assert [(r.step, r.loss) for r in readings] == [(4, 3.0), (8, 2.0)]


# ----------------------------------------------------------------------------- checks
@pytest.mark.parametrize(
    ("pattern", "needle"),
    [
        ("iter (?P<step>\\d+: loss", "not a regular expression"),
        ("iter (\\d+): loss ([0-9.]+)", "no group named loss"),
        ("iter (?P<stpe>\\d+): loss (?P<loss>\\S+)", "group named stpe"),
        ("", "non-empty"),
        ("a\nb(?P<loss>x)", "one-line"),
        ("(?P<loss>x)" + "y" * 3000, "one-line"),
    ],
)
def test_a_bad_pattern_is_refused_in_one_line(pattern, needle):
    for kw in ({"loss_pattern": pattern}, {"progress_pattern": pattern}):
        with pytest.raises(SteplawInputError) as info:
            CommandObjective("train", **kw)
        message = str(info.value)
        assert needle in message and "\n" not in message and len(message) < 400, message


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"metrics_format": "xml"}, "metrics format"),
        ({"metrics_format": "csv"}, "neither {metrics_file} nor {trial_dir}"),
        ({"loss_key": ""}, "loss key"),
        ({"step_key": "a\nb"}, "step key"),
        ({"warmup_fraction": 1.5}, "warmup fraction"),
        ({"warmup_fraction": math.nan}, "warmup fraction"),
        ({"decay_fraction": True}, "decay fraction"),
        ({"decay_fraction": "0.2"}, "decay fraction"),
    ],
)
def test_bad_reading_settings_are_refused_up_front(kw, needle):
    with pytest.raises(SteplawInputError, match=None) as info:
        CommandObjective("train --out {lr}", **kw)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_the_cli_refuses_a_bad_pattern_with_exit_2_before_anything_runs(capsys, tmp_path):
    from steplaw_opt.cli import main

    marker = tmp_path / "ran"
    with pytest.raises(SystemExit) as info:
        main(["tune", "--params", "1M", "--tokens", "2e8", "--command", f"touch {marker}",
              "--loss-pattern", "loss (?P<loss>[0-9.]+", "--storage", ":memory:",
              "--no-mlflow"])  # fmt: skip
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "loss (?P<loss>[0-9.]+" in err and "not a regular expression" in err
    assert not marker.exists()


def test_the_cli_refuses_reading_options_for_other_objectives(capsys):
    from steplaw_opt.cli import main

    with pytest.raises(SystemExit) as info:
        main(["tune", "--params", "1M", "--tokens", "2e8", "--builtin", "--warmup-fraction",
              "0.2", "--dry-run", "--no-mlflow"])  # fmt: skip
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--warmup-fraction applies to --command only" in err


# ----------------------------------------------------------------------------- placeholders
@pytest.mark.parametrize(
    ("batch", "unit", "fractions", "expected"),
    [
        # 2e8 tokens / (64 × 512) = 6103.5 → 6104 steps; 10 % warmup; decay to the end
        (64, "sequences", {}, (6104, 610, 6104)),
        (32768, "tokens", {}, (6104, 610, 6104)),
        (100_000, "tokens", {"warmup_fraction": 0.0, "decay_fraction": 0.2}, (2000, 0, 400)),
        # one batch beyond the tokens; the decay ends a step after the warmup (no 0/0)
        (1e9, "tokens", {"warmup_fraction": 0.01}, (1, 1, 2)),
    ],
)
def test_steps_warmup_and_decay(batch, unit, fractions, expected):
    obj = CommandObjective(
        "train {steps} {warmup_steps} {decay_steps} {batch_tokens}", batch_unit=unit, **fractions
    )
    command = obj.render(3e-3, batch, SCALE, 0, "/tmp/t/metrics.json")
    assert tuple(int(x) for x in command.split()[1:4]) == expected
    assert obj.steps(batch, SCALE) == expected[0]


def test_trial_dir_is_the_metrics_files_folder_and_is_removed():
    code = "import os,sys; print(os.path.isdir(sys.argv[1]) and not os.listdir(sys.argv[1]))"
    template = f'{PY} -c "{code}" {{trial_dir}}; echo {{trial_dir}} >&2; exit 3'
    with pytest.raises(TrialFailed) as info:
        run(template)
    folder = info.value.reason.split(": ", 1)[1].strip()
    assert "steplaw-trial-" in folder and not os.path.exists(folder)


WRITE_LOSS = f"{PY} -c \"import sys; open(sys.argv[1], 'w').write('{{{{\\\"loss\\\": 1.5}}}}')\""


@pytest.mark.parametrize("folder_name", ["with space", "semi;touch pwned;x", "it's", 'dq"$HOME`'])
@pytest.mark.parametrize("form", ["{trial_dir}/metrics.json", "'{trial_dir}'/metrics.json",
                                  '"{trial_dir}/metrics.json"'])  # fmt: skip
def test_a_hostile_temporary_folder_reaches_the_job_as_one_word(
    tmp_path, monkeypatch, folder_name, form
):
    tmp_root = tmp_path / folder_name
    tmp_root.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_root))
    loss, _, _ = run(f"{WRITE_LOSS} {form}", workdir=work)
    assert loss == 1.5
    assert list(work.iterdir()) == [] and list(tmp_root.iterdir()) == []


@pytest.mark.parametrize("name", ["steps", "warmup_steps", "decay_steps", "trial_dir"])
def test_new_placeholders_take_no_format_spec(name):
    with pytest.raises(SteplawInputError, match=f"{{{name}:d}}"):
        CommandObjective(f"train {{{name}:d}}")


# ----------------------------------------------------------------------------- metrics files
def test_json_lines_with_other_keys():
    lines = ('{"iter": 1, "val_loss": 3.0}', '{"iter": 2, "val_loss": 2.0}', '{"other": 1}')
    loss, reports, _ = run(printing(*lines[:2]), loss_key="val_loss", step_key="iter")
    assert loss == 2.0 and reports == [(1, 3.0), (2, 2.0)]
    with pytest.raises(TrialFailed, match="'val_loss' value"):
        run(printing(lines[2]), loss_key="val_loss")


def test_a_jsonl_metrics_file_is_followed_while_the_job_runs():
    code = (
        "import json,sys,time; f=open(sys.argv[1],'w'); "
        "f.write(json.dumps({'step': 1, 'loss': 3.0}) + '\\n'); f.flush(); time.sleep(1.6); "
        "f.write(json.dumps({'step': 2, 'loss': 2.0}) + '\\n'); f.write('{\"step\": 3, \"lo')"
    )
    seen: list[tuple[int, float, float]] = []
    ctx = RunContext(report=lambda s, x: seen.append((s, x, time.monotonic())))
    obj = CommandObjective(
        f"{PY} -c {json.dumps(code).replace('{', '{{').replace('}', '}}')} {{metrics_file}}",
        metrics_format="jsonl",
    )
    loss = obj.run(3e-3, 64, SCALE, ctx)
    ended = time.monotonic()
    assert loss == 2.0 and [(s, x) for s, x, _ in seen] == [(1, 3.0), (2, 2.0)]
    assert ended - seen[0][2] > 0.5  # the first step arrived while the job still ran


def test_a_csv_rewritten_whole_with_a_new_column_is_read_right(tmp_path):
    code = (
        "import sys,time; p=sys.argv[1]; "
        "open(p,'w').write('train_loss,step\\n3.0,9\\n2.8,19\\n'); time.sleep(1.3); "
        "open(p,'w').write('train_loss,step,val_loss\\n3.0,9,\\n2.8,19,\\n,19,2.7\\n2.5,29,\\n"
        ",29,2.4\\n')"
    )
    template = f"{PY} -c {json.dumps(code).replace('{', '{{').replace('}', '}}')} {{metrics_file}}"
    loss, reports, _ = run(template, metrics_format="csv", loss_key="val_loss")
    assert loss == 2.4 and reports == [(19, 2.7), (29, 2.4)]
    loss, reports, _ = run(template, metrics_format="csv", loss_key="train_loss")
    assert loss == 2.5 and reports == [(9, 3.0), (19, 2.8), (29, 2.5)]


def test_a_half_written_last_row_waits_for_its_line_break(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("step,loss\n1,3.0\n2,2.")
    running, _ = read_metrics_file(str(path), "csv", "loss", "step", running=True)
    done, _ = read_metrics_file(str(path), "csv", "loss", "step")
    assert [(r.step, r.loss) for r in running] == [(1, 3.0)]
    assert [(r.step, r.loss) for r in done] == [(1, 3.0), (2, 2.0)]


def test_a_csv_without_the_column_names_the_columns():
    code = "import sys; open(sys.argv[1],'w').write('epoch,step,train_loss\\n0,1,2.0\\n')"
    with pytest.raises(TrialFailed) as info:
        run(f'{PY} -c "{code}" {{metrics_file}}', metrics_format="csv", loss_key="val_loss")
    assert "no column 'val_loss' (columns: epoch, step, train_loss)" in info.value.reason


def test_a_csv_metrics_file_that_is_a_fifo_does_not_hang():
    started = time.monotonic()
    with pytest.raises(TrialFailed, match="not a regular file"):
        run("mkfifo {metrics_file}; sleep 1.2", metrics_format="csv")
    assert time.monotonic() - started < 10


def test_the_file_wins_over_stdout():
    code = (
        "import sys; open(sys.argv[1],'w').write('step,loss\\n5,1.25\\n'); print('iter 5: loss 9')"
    )
    loss, _, _ = run(f'{PY} -c "{code}" {{metrics_file}}', metrics_format="csv", loss_pattern=ITER)
    assert loss == 1.25


# ----------------------------------------------------------------------------- the study
SETTINGS = {
    "loss_pattern": ITER,
    "progress_pattern": r"eval (?P<step>\d+): (?P<loss>\S+)",
    "metrics_format": "jsonl",
    "loss_key": "val_loss",
    "step_key": "iter",
    "warmup_fraction": 0.05,
    "decay_fraction": 0.2,
}


def test_the_settings_round_trip_through_the_stored_config():
    from steplaw_opt.tune import TuneConfig
    from steplaw_opt.tune._tune import objective_from_spec

    obj = CommandObjective("train --out {metrics_file} {warmup_steps}", **SETTINGS)
    config = TuneConfig(objective_spec=obj.to_spec(), timeout_per_trial=30.0)
    stored = TuneConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    again = objective_from_spec(stored.objective_spec, stored)
    assert isinstance(again, CommandObjective)
    assert again.to_spec() == obj.to_spec() and again.timeout == 30.0
    assert again.identity_key() == obj.identity_key()


def test_a_spec_from_an_older_study_takes_the_defaults():
    obj = command_objective_from_spec({"kind": "command", "command": "echo"})
    assert obj.output.loss_pattern is None and obj.output.metrics_format == "json"
    assert obj.warmup_fraction == 0.1 and obj.decay_fraction == 1.0


def test_a_changed_database_value_is_refused_in_one_line():
    spec = {**CommandObjective("echo {metrics_file}").to_spec(), "loss_pattern": "(?P<loss>"}
    with pytest.raises(SteplawInputError, match="not a regular expression"):
        command_objective_from_spec(spec)


def test_a_resume_with_another_pattern_stores_it_for_the_workers_started_after(tmp_path):
    import optuna

    from steplaw_opt.tune import TuneConfig, tune
    from steplaw_opt.tune._tune import objective_from_spec

    storage = f"sqlite:///{tmp_path / 's.db'}"
    template = "echo 'iter 0: loss 3.0' && echo '{{\"loss\": 2.0}}'"
    target = Scale(N=1e6, D=2e7, seq_len=128)

    def go(obj: CommandObjective) -> None:
        tune(target, obj, n_trials=1, storage=storage, study_name="s", seed=0,
             objective_spec=obj.to_spec())  # fmt: skip

    go(CommandObjective(template))
    go(CommandObjective(template, progress_pattern=ITER))  # a fixed pattern, same template
    study = optuna.load_study(study_name="s", storage=storage)
    config = TuneConfig.from_dict(json.loads(study.user_attrs["steplaw.config"]))
    worker = objective_from_spec(config.objective_spec, config)
    assert isinstance(worker, CommandObjective)
    assert worker.output.progress_pattern == ITER and worker.template == template


def test_a_resume_with_other_fractions_is_refused_but_another_pattern_is_not(tmp_path):
    from steplaw_opt.tune import tune

    storage = f"sqlite:///{tmp_path / 's.db'}"
    template = 'echo "warmup {warmup_steps}" && echo \'{{"loss": 2.0}}\''
    target = Scale(N=1e6, D=2e7, seq_len=128)

    def go(**kw):
        return tune(target, CommandObjective(template, **kw), n_trials=1, storage=storage,
                    study_name="s", seed=0)  # fmt: skip

    assert go().n_complete == 1
    assert go(progress_pattern=ITER).n_complete == 1  # how the loss is read may be fixed
    with pytest.raises(SteplawInputError, match="tunes command"):
        go(warmup_fraction=0.2)
