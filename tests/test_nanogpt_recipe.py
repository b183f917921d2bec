"""The nanoGPT recipe (examples/nanogpt/) end to end: its template and patterns, through a real
``steplaw-opt tune`` and a worker, on a stand-in for nanoGPT's train.py (tests/fake_nanogpt.py,
same command line, configurator checks and log lines); and its README shows the same command."""

from __future__ import annotations

import json
import math
import re
import shlex
import sys

import pytest

from steplaw_opt import Scale
from steplaw_opt.objectives import CommandObjective, RunContext, TrialFailed
from steplaw_opt.objectives._command import fraction_of
from tests.conftest import REPO, load_file, run_cli

FAKE = REPO / "tests" / "fake_nanogpt.py"


recipe = load_file("recipe", "examples/nanogpt/recipe.py")  # examples/ is not a package
FAKE_TEMPLATE = recipe.TEMPLATE.replace(
    recipe.TRAIN, f"{shlex.quote(sys.executable)} {shlex.quote(str(FAKE))}", 1
)
assert FAKE_TEMPLATE != recipe.TEMPLATE


def console_commands(text: str) -> list[list[str]]:
    """The ``$ steplaw-opt …`` commands of a Markdown page's console blocks, split as the shell
    splits them."""
    out = []
    for block in re.findall(r"```console\n(.*?)```", text, flags=re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            if line.startswith("$ steplaw-opt"):
                out.append(shlex.split(line[2:]))
    return out


def test_the_readme_shows_the_recipe_exactly():
    commands = console_commands((REPO / "examples/nanogpt/README.md").read_text())
    assert ["steplaw-opt", "tune", *recipe.tune_args()] in commands


def test_print_gives_the_same_command(capsys):
    recipe.main(["--print", "--budget", "0.5"])
    printed = shlex.split(capsys.readouterr().out)
    assert printed == ["steplaw-opt", "tune", *recipe.tune_args(), "--budget", "0.5"]


def test_the_template_fills_nanogpt_overrides_with_rescaled_lengths():
    obj = CommandObjective(recipe.TEMPLATE, warmup_fraction=0.05)
    scale = Scale(N=786e3, D=96e3, seq_len=64)
    command = obj.render(3e-3, 31, scale, 0, "/tmp/steplaw-trial-x/metrics.json")
    args = dict(a[2:].split("=", 1) for a in shlex.split(command) if a.startswith("--"))
    # 96k tokens / (31 sequences × 64 tokens) = 48.4 → 49 iterations; warmup 5 %; decay to the end
    assert args["max_iters"] == "49" and args["eval_interval"] == "49"
    assert args["warmup_iters"] == "2" and args["lr_decay_iters"] == "49"
    assert args["batch_size"] == "31" and args["block_size"] == "64"
    assert args["gradient_accumulation_steps"] == "1"
    assert args["learning_rate"] == "0.003" and args["out_dir"] == "/tmp/steplaw-trial-x"


def _objective(**kw) -> CommandObjective:
    return CommandObjective(
        FAKE_TEMPLATE,
        loss_pattern=recipe.LOSS_PATTERN,
        progress_pattern=recipe.PROGRESS_PATTERN,
        warmup_fraction=0.05,
        **kw,
    )


def test_one_run_reads_the_last_val_loss_and_the_iter_losses():
    reports: list[tuple[int, float]] = []
    ctx = RunContext(trial_number=3, report=lambda s, x: reports.append((s, x)))
    loss = _objective().run(3e-3, 16, Scale(N=786e3, D=96e3, seq_len=64), ctx)
    steps = ctx.notes["steps"]
    assert steps == 94 and ctx.notes["loss_step"] == 94  # the final evaluation
    assert [s for s, _ in reports] == list(range(0, 95, 10))  # log_interval=10
    assert 1.4 < loss < reports[0][1]  # trained: below the first iteration's loss


@pytest.mark.parametrize("lr", [0.2, 1.0])
def test_a_run_that_blows_up_is_diverged(lr):
    # lr 1.0 reaches nanoGPT's configurator as "1.0", a float: "1" would be an int, refused
    # (AssertionError: learning_rate: 1 is not a float) before any training
    with pytest.raises(TrialFailed, match=r"^diverged$"):
        _objective().run(lr, 16, Scale(N=786e3, D=96e3, seq_len=64), RunContext())


def test_an_eval_interval_that_misses_the_end_is_refused_not_read_as_step_0():
    template = FAKE_TEMPLATE.replace("--eval_interval={steps}", "--eval_interval=250")
    obj = CommandObjective(
        template, loss_pattern=recipe.LOSS_PATTERN, progress_pattern=recipe.PROGRESS_PATTERN
    )
    with pytest.raises(TrialFailed, match="final loss is from step 0, but the run went on"):
        obj.run(3e-3, 16, Scale(N=786e3, D=96e3, seq_len=64), RunContext())


def test_the_fake_refuses_what_nanogpt_refuses():
    # nanoGPT's configurator: an unknown key, or a value of another type, stops train.py
    bad = FAKE_TEMPLATE.replace("--log_interval=10", "--log_every=10")
    with pytest.raises(TrialFailed, match=r"exit code 1.*Unknown config key"):
        CommandObjective(bad, loss_pattern=recipe.LOSS_PATTERN).run(
            3e-3, 16, Scale(N=786e3, D=96e3, seq_len=64), RunContext()
        )


@pytest.mark.slow  # end to end: the CLI in subprocesses
def test_tune_and_a_worker_run_the_recipe_end_to_end(tmp_path):
    import optuna

    storage = f"sqlite:///{tmp_path / 'nanogpt.db'}"
    study = ["--study-name", "nanogpt", "--storage", storage]
    base = [*recipe.tune_args(FAKE_TEMPLATE, study), "--no-mlflow", "--json", "--seed", "0"]
    # a study made for workers stores the template, the patterns and the warmup fraction
    made = run_cli("tune", *base, "--n-trials", "4", "--create-only", cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-2000:]
    worker = run_cli(
        "worker", *study, "--command", FAKE_TEMPLATE, "--no-mlflow", "--json", cwd=tmp_path
    )
    assert worker.returncode == 0, worker.stderr[-2000:]
    assert json.loads(worker.stdout)["n_complete"] == 4
    trials = optuna.load_study(study_name="nanogpt", storage=storage).trials
    assert len(trials) == 4
    for t in trials:
        steps = t.user_attrs["steplaw.note.steps"]
        assert t.user_attrs["steplaw.note.loss_step"] == steps
        command = t.user_attrs["steplaw.note.command"]
        assert f"--max_iters={steps} " in command  # the worker used the stored 5 % warmup
        assert f"--warmup_iters={fraction_of(steps, 0.05)} " in command
        assert sorted(t.intermediate_values) == list(range(0, steps + 1, 10))
        assert 1.4 < t.value < 4.2
    # and `tune` itself, resuming the same study, reads the same way (nothing left to run)
    again = run_cli("tune", *base, "--n-trials", "4", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout)["n_complete"] == 4


def _overrides(command: str) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in shlex.split(command) if a.startswith("--"))


def test_the_checkpoint_nanogpt_saves_anyway_lands_in_the_trial_folder_and_goes_with_it(
    tmp_path, monkeypatch
):
    # nanoGPT saves ckpt.pt whenever the val loss improves after iteration 0, even with
    # --always_save_checkpoint=False: it must go to {trial_dir} (under $TMPDIR), and go with it
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen: list[list[str]] = []

    def report(step: int, loss: float) -> None:  # the last iter line: after the save
        if step == 100:
            seen.append(sorted(str(p) for p in tmp_path.glob("steplaw-trial-*/ckpt.pt")))

    ctx = RunContext(report=report)
    _objective().run(3e-3, 16, Scale(N=786e3, D=100 * 16 * 64, seq_len=64), ctx)
    assert ctx.notes["steps"] == 100
    out_dir = _overrides(ctx.notes["command"])["out_dir"]
    assert seen == [[f"{out_dir}/ckpt.pt"]], (seen, out_dir)
    assert out_dir.startswith(str(tmp_path)) and not (tmp_path / out_dir).exists()
    assert list(tmp_path.iterdir()) == []  # the trial folder and its checkpoint are gone


@pytest.mark.parametrize(
    ("tokens", "fractions"),
    [(16 * 64, (0.05, 1.0)), (10 * 16 * 64, (0.5, 0.5)), (10 * 16 * 64, (0.0, 0.0))],
    ids=["one step", "equal fractions", "both zero"],
)
def test_decay_steps_stay_past_warmup_so_nanogpt_never_divides_by_zero(tokens, fractions):
    warmup_fraction, decay_fraction = fractions
    obj = CommandObjective(
        FAKE_TEMPLATE,
        loss_pattern=recipe.LOSS_PATTERN,
        progress_pattern=recipe.PROGRESS_PATTERN,
        warmup_fraction=warmup_fraction,
        decay_fraction=decay_fraction,
    )
    ctx = RunContext()
    loss = obj.run(3e-3, 16, Scale(N=786e3, D=tokens, seq_len=64), ctx)  # no ZeroDivisionError
    args = _overrides(ctx.notes["command"])
    assert int(args["lr_decay_iters"]) == int(args["warmup_iters"]) + 1
    assert math.isfinite(loss)


def test_a_wsd_cooldown_shorter_than_the_warmup_is_left_as_asked():
    obj = CommandObjective(
        "train --warmup {warmup_steps} --cooldown {decay_steps} --steps {steps}",
        warmup_fraction=0.1,
        decay_fraction=0.05,
    )
    assert obj.schedule_steps(100) == (10, 5)
    only_decay = CommandObjective("train --decay {decay_steps}", decay_fraction=0.0)
    assert only_decay.schedule_steps(100) == (10, 0)  # one placeholder: nothing to keep apart


@pytest.mark.slow  # end to end: the CLI in subprocesses
def test_ten_run_studies_of_the_recipe_stay_inside_its_bounds(tmp_path):
    # The recipe as shipped, 10 runs (its plan: 6 + 3 + 1 proxy runs). With the default lr
    # bounds (capped at 1) the study was drawn to the cap: 5 runs diverged or were refused and
    # lr 1 was recommended, "widen the bound". With the recipe's bounds none fails, and the
    # recommendation lies inside them and near the fake's optimum (lr ~1e-2). Six seeds, not
    # one: ten runs on this made-up landscape (concave below its optimum, not a bowl) give a
    # recommendation that moves from seed to seed, and the drift terms can read the proxies'
    # scatter as a trend (tests/test_drift.py's xfail): in one seed of six the target's lr
    # is carried to the upper bound, and the result says so.
    seeds = range(6)
    lr_errors, inside = [], 0
    for seed in seeds:
        storage = f"sqlite:///{tmp_path / f'nanogpt{seed}.db'}"
        study = ["--study-name", "nanogpt", "--storage", storage]
        args = recipe.tune_args(FAKE_TEMPLATE, study)
        lr_lo = float(args[args.index("--lr-min") + 1])
        lr_hi = float(args[args.index("--lr-max") + 1])
        done = run_cli(
            "tune", *args, "--no-mlflow", "--json", "--seed", str(seed), "--n-trials", "10",
            cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        result = json.loads(done.stdout)
        assert (result["n_complete"], result["n_failed"]) == (10, 0), seed
        opt = result["refined_optimum"]
        lr_errors.append(abs(math.log(opt["lr"] / 1e-2)))
        if opt["notes"]:  # only ever the honest "sits on its search bound"
            assert all("search bound" in note for note in opt["notes"]), opt["notes"]
            continue
        inside += 1
        margin = 1.05  # strictly inside, not clipped onto a bound
        assert lr_lo * margin < opt["lr"] < lr_hi / margin, seed
        assert lr_lo < opt["lr_interval_95"][0] < opt["lr_interval_95"][1] < lr_hi, seed
    assert inside >= len(seeds) - 1, lr_errors
    assert sorted(lr_errors)[len(seeds) // 2] < math.log(2), lr_errors  # within 2x, mostly


LADDER_FAKE = recipe.LADDER_TEMPLATE.replace(
    recipe.TRAIN, f"{shlex.quote(sys.executable)} {shlex.quote(str(FAKE))}", 1
)


def test_the_readme_shows_the_ladder_recipe_exactly():
    commands = console_commands((REPO / "examples/nanogpt/README.md").read_text())
    assert ["steplaw-opt", "tune", *recipe.ladder_args()] in commands
    # each model's N is nanoGPT's non-embedding count of the overrides it is given
    entries = recipe.LADDER_MODELS[1::2]
    for entry in entries:
        size, args = entry.split("=", 1)
        o = _overrides(args)
        assert int(size) == 12 * int(o["n_layer"]) * int(o["n_embd"]) ** 2
        assert int(o["n_embd"]) % int(o["n_head"]) == 0


def test_a_ladder_study_builds_each_rung_with_its_own_model_and_a_worker_keeps_them(tmp_path):
    import optuna

    storage = f"sqlite:///{tmp_path / 'nanogpt.db'}"
    study = ["--study-name", "ladder", "--storage", storage]
    base = [*recipe.ladder_args(LADDER_FAKE, study), "--no-mlflow", "--json", "--seed", "0"]
    made = run_cli("tune", *base, "--n-trials", "4", "--create-only", cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-2000:]
    # a worker stating its own command must state the same model configs
    bare = run_cli("worker", *study, "--command", LADDER_FAKE, "--no-mlflow", cwd=tmp_path)
    assert bare.returncode == 2 and "stored model configs differ" in bare.stderr
    models = recipe.LADDER_MODELS
    worker = run_cli(
        "worker", *study, "--command", LADDER_FAKE, *models, "--no-mlflow", "--json", cwd=tmp_path
    )
    assert worker.returncode == 0, worker.stderr[-2000:]
    trials = optuna.load_study(study_name="ladder", storage=storage).trials
    assert len(trials) == 4
    sizes = {int(e.split("=", 1)[0]): _overrides(e.split("=", 1)[1]) for e in models[1::2]}
    seen = set()
    for t in trials:
        n = round(t.user_attrs["steplaw.N"])
        o = _overrides(t.user_attrs["steplaw.note.command"])
        assert n in sizes and n < 786432  # a rung, not the target
        assert {k: o[k] for k in ("n_layer", "n_head", "n_embd")} == sizes[n]
        assert round(t.user_attrs["steplaw.D"]) == round(1536000 * n / 786432)
        seen.add(n)
    assert seen == {196608, 98304}
