"""``steplaw-opt bench --startup``: its figures, their order and its CLI (never a timing
assertion: the machine is shared)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from steplaw_opt.bench._startup import StartupResult, measure_startup
from tests.conftest import run_cli


def test_the_figures_are_medians_and_their_ratio():
    r = StartupResult(
        ("/venv/bin/python3", "-c", "import typer, rich, numpy"),
        ("/venv/bin/steplaw-opt", "predict", "--params", "1e9", "--tokens", "1e11"),
        baseline_ms=(100.0, 300.0, 200.0),
        predict_ms=(390.0, 400.0, 900.0),
    )
    assert (r.baseline_median_ms, r.predict_median_ms, r.ratio) == (200.0, 400.0, 2.0)
    lines = r.lines()
    assert lines[0] == "baseline: 200 ms (median of 3)  python3 -c 'import typer, rich, numpy'"
    assert lines[1] == (
        "predict:  400 ms (median of 3)  steplaw-opt predict --params 1e9 --tokens 1e11"
    )
    assert lines[2] == "ratio:    2.00× (target ≤ 1.5×)"
    assert len(lines) == 3
    doc = r.to_dict()
    assert doc["repeat"] == 3 and doc["ratio"] == 2.0 and doc["predict_ms"] == [390.0, 400.0, 900.0]
    assert json.loads(json.dumps(doc)) == doc
    uncached = StartupResult(r.baseline_command, r.predict_command, (1.0,), (1.0,), False)
    assert uncached.lines()[-1].startswith("note: no bytecode cache")


def test_the_two_commands_alternate_after_one_untimed_run_each(tmp_path: Path):
    log = tmp_path / "order"

    def mark(letter: str) -> tuple[str, ...]:
        return (sys.executable, "-c", f"open({str(log)!r}, 'a').write({letter!r})")

    r = measure_startup(3, baseline=mark("b"), predict=mark("p"))
    assert log.read_text() == "bp" + "bp" + "pb" + "bp"
    assert len(r.baseline_ms) == len(r.predict_ms) == 3
    assert all(t > 0 for t in (*r.baseline_ms, *r.predict_ms))


def test_a_failing_command_or_no_repeat_is_refused():
    with pytest.raises(ValueError, match="repeat"):
        measure_startup(0)
    fails = (sys.executable, "-c", "import sys; sys.exit('broken install')")
    with pytest.raises(RuntimeError, match="broken install"):
        measure_startup(1, baseline=(sys.executable, "-c", "pass"), predict=fails)


def test_cli_startup_json_and_refusal():
    r = run_cli("bench", "--startup", "--repeat", "1", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["repeat"] == 1 and doc["predict_command"][-2:] == ["--tokens", "1e11"]
    assert doc["ratio"] == pytest.approx(doc["predict_median_ms"] / doc["baseline_median_ms"])
    r = run_cli("bench", "--startup", "--repeat", "0")
    assert r.returncode == 2 and "--repeat" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
