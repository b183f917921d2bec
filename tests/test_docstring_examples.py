"""The docstrings' examples run and print what they say (a stale figure in an example is a
wrong answer a reader copies)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "steplaw_opt",
    "steplaw_opt.scale",
    "steplaw_opt.sizes",
    "steplaw_opt.space",
    "steplaw_opt.trainer",
    "steplaw_opt.landscape",
    "steplaw_opt.priors._law",
    "steplaw_opt.priors._prior",
    "steplaw_opt.samplers._plateau",
    "steplaw_opt.samplers._study",
    "steplaw_opt.objectives._callable",
    "steplaw_opt.objectives._command",
    "steplaw_opt.tune._config",
    "steplaw_opt.tune._plan",
    "steplaw_opt.tune._time",
    "steplaw_opt.tune._tune",
    "steplaw_opt.bench",
    "steplaw_opt.bench._grids",
]


@pytest.mark.parametrize("name", MODULES)
def test_the_examples_in_the_docstrings_hold(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no example: drop it from MODULES"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} fail"


def test_every_module_with_an_example_is_listed() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    found = set()
    for folder, package in (("steplaw_opt", "steplaw_opt"), ("samplers", "steplaw_opt.samplers"),
                            ("priors", "steplaw_opt.priors")):  # fmt: skip
        for path in (root / folder).rglob("*.py"):
            if ">>> " in path.read_text():
                rel = path.relative_to(root / folder).with_suffix("")
                parts = [p for p in rel.parts if p != "__init__"]
                found.add(".".join([package, *parts]))
    assert found <= set(MODULES), f"examples not run: {sorted(found - set(MODULES))}"
