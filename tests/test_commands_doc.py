"""docs/commands.md runs: every recipe's options, read from the page, applied to the page's own
sample output by a real command objective give the loss and steps the page says; every command
on the page is accepted by ``steplaw-opt tune``; the Python example builds its objective."""

from __future__ import annotations

import itertools
import re
import shlex

import pytest

from steplaw_opt import Scale
from steplaw_opt.objectives import CommandObjective, RunContext
from tests.conftest import REPO
from tests.test_nanogpt_recipe import console_commands, recipe

PAGE = (REPO / "docs" / "commands.md").read_text(encoding="utf-8")
OPTIONS = {
    "--loss-pattern": "loss_pattern",
    "--progress-pattern": "progress_pattern",
    "--metrics-format": "metrics_format",
    "--loss-key": "loss_key",
    "--step-key": "step_key",
    "--warmup-fraction": "warmup_fraction",
    "--decay-fraction": "decay_fraction",
}
# What the page says each sample gives: (final loss, [(step, intermediate loss), …]).
EXPECTED = {
    "nanoGPT": (2.1566, [(0, 4.059), (10, 2.3612), (20, 2.1719)]),
    "Hugging Face Trainer": (2.6811, [(100, 3.1245), (200, 2.7342)]),
    "PyTorch Lightning (CSVLogger)": (2.561, [(99, 2.774), (199, 2.561)]),
}


def recipes() -> dict[str, str]:
    section = PAGE.split("\n## Recipes\n", 1)[1].split("\n## ", 1)[0]
    return {part.split("\n", 1)[0].strip(): part for part in section.split("\n### ")[1:]}


def options_of(argv: list[str]) -> tuple[str, dict[str, object]]:
    """The ``--command`` template and the CommandObjective keywords of a ``tune`` command."""
    pairs = dict(itertools.pairwise(argv))  # a flag → the word after it
    kw: dict[str, object] = {}
    for flag, name in OPTIONS.items():
        if flag in argv:
            value = pairs[flag]
            kw[name] = float(value) if name.endswith("fraction") else value
    return pairs["--command"], kw


def sample_of(text: str) -> tuple[str, str]:
    found = re.search(r"```(text|csv)\n(.*?)```", text, flags=re.S)
    assert found is not None, "a recipe shows a sample of what it reads"
    return found.group(1), found.group(2)


def test_the_page_has_every_recipe_the_test_knows():
    assert sorted(recipes()) == sorted(EXPECTED)


# Log lines are read from stdout and stderr alike (Python's logging writes to stderr).
CASES = [("nanoGPT", "stdout"), ("nanoGPT", "stderr"), ("Hugging Face Trainer", "stdout"),
         ("Hugging Face Trainer", "stderr"), ("PyTorch Lightning (CSVLogger)", "file")]  # fmt: skip


@pytest.mark.parametrize(("name", "stream"), CASES)
def test_a_recipe_reads_its_sample(name, stream, tmp_path):
    text = recipes()[name]
    (command,) = console_commands(text)
    template, kw = options_of(command)
    CommandObjective(template, **kw)  # the page's own template is valid with its options
    kind, sample = sample_of(text)
    path = tmp_path / f"sample.{kind}"
    path.write_text(sample)
    if stream == "file":  # the job writes it where the page says: {trial_dir}/metrics.csv
        job = f"cp {shlex.quote(str(path))} {{trial_dir}}/metrics.{kind}"
    else:
        job = f"cat {shlex.quote(str(path))}" + (" >&2" if stream == "stderr" else "")
    reports: list[tuple[int, float]] = []
    ctx = RunContext(report=lambda s, x: reports.append((s, x)))
    loss = CommandObjective(job, **kw).run(1e-3, 8, Scale(N=1e6, D=1e6, seq_len=64), ctx)
    final, progress = EXPECTED[name]
    assert loss == final
    assert reports == progress  # parsed from the same text: exact


def test_the_nanogpt_section_shows_the_recipe_patterns():
    (command,) = console_commands(recipes()["nanoGPT"])
    template, kw = options_of(command)
    assert kw["loss_pattern"] == recipe.LOSS_PATTERN
    assert kw["progress_pattern"] == recipe.PROGRESS_PATTERN
    assert set(template.split()) <= set(recipe.TEMPLATE.split())  # a shortened recipe


def test_terminal_colours_do_not_hide_a_match(tmp_path):
    (command,) = console_commands(recipes()["nanoGPT"])
    _, kw = options_of(command)
    path = tmp_path / "coloured.txt"
    path.write_text(
        "\x1b[32mstep 0: train loss 4.1, val loss \x1b[1m4.2\x1b[0m\n"
        "\x1b[33miter 0: loss 4.0, time 1ms\x1b[0m\n"
        "progress 10% |###   |\riter 10: loss 3.5, time 1ms\n"
        "step 10: train loss 3.3, val loss 3.4\n"
    )
    reports: list[tuple[int, float]] = []
    ctx = RunContext(report=lambda s, x: reports.append((s, x)))
    job = CommandObjective(f"cat {shlex.quote(str(path))}", **kw)
    assert job.run(1e-3, 8, Scale(N=1e6, D=1e6, seq_len=64), ctx) == 3.4
    assert reports == [(0, 4.0), (10, 3.5)]


def test_every_command_on_the_page_is_accepted_by_tune(capsys):
    from steplaw_opt.cli import main

    commands = console_commands(PAGE)
    assert len(commands) == 5
    for argv in commands:
        with pytest.raises(SystemExit) as info:
            main([*argv[1:], "--dry-run", "--storage", ":memory:", "--no-mlflow"])
        assert info.value.code == 0, capsys.readouterr().err


def test_the_python_example_builds_its_objective(monkeypatch):
    import steplaw_opt.tune

    block = re.search(r"## From Python\n\n```python\n(.*?)```", PAGE, flags=re.S)
    assert block is not None
    seen: dict[str, object] = {}
    monkeypatch.setattr(
        steplaw_opt.tune, "tune", lambda target, objective, **kw: seen.update(o=objective)
    )
    exec(compile(block.group(1), "docs/commands.md", "exec"), {"__name__": "doc"})
    objective = seen["o"]
    assert isinstance(objective, CommandObjective)
    assert objective.warmup_fraction == 0.05 and objective.output.loss_pattern


def test_the_doc_names_every_placeholder():
    from steplaw_opt.objectives._command import PLACEHOLDERS

    table = PAGE.split("## Placeholders", 1)[1].split("\n## ", 1)[0]
    assert sorted(re.findall(r"^\| `\{(\w+)\}` \|", table, flags=re.M)) == sorted(PLACEHOLDERS)
