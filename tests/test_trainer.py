"""The built-in proxy trainer: its N count, schedule, a real (short) run, divergence, the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from steplaw_opt.errors import SteplawInputError
from steplaw_opt.scale import Scale, non_embedding_params
from steplaw_opt.trainer import (
    EXIT_BAD_INPUT,
    EXIT_DIVERGED,
    GPT,
    MIN_LR,
    VOCAB_SIZE,
    lr_at,
    shape_for_params,
    train,
    warmup_steps,
)
from tests.conftest import REPO

# End to end: the CLI in subprocesses, real files and servers (`-m 'not slow'` skips them).
pytestmark = pytest.mark.slow

# A tiny model and run: 1 layer, d_model 32, 60 steps of 8 sequences of 32 bytes (< 1 s).
TINY = Scale(d_model=32, d_ff=64, n_layers=1, n_heads=2, seq_len=32, D=60 * 8 * 32)


def test_n_counted_from_module_matches_hand_count() -> None:
    model = GPT(d_model=32, d_ff=48, n_layers=2, n_heads=1, seq_len=16)
    # per layer: q, k, v, out = 4·32² = 4096; gate, up, down = 3·32·48 = 4608
    assert model.non_embedding_params() == 2 * (4096 + 4608) == 17408
    # everything else is embedding (tied head) or a norm gain, which the Step Law leaves out
    total = sum(p.numel() for p in model.parameters())
    assert total == 17408 + VOCAB_SIZE * 32 + 16 * 32 + (2 * 2 + 1) * 32


@pytest.mark.parametrize("target", [2e4, 1e5, 1e6, 1e7])
def test_shape_for_params_matches_scale_count(target: float) -> None:
    shape = shape_for_params(target)
    assert abs(shape.N / target - 1) < 0.01
    assert shape.d_model % shape.n_heads == 0
    model = GPT(shape.d_model, shape.d_ff, shape.n_layers, shape.n_heads, seq_len=8)
    assert model.non_embedding_params() == non_embedding_params(
        shape.d_model, shape.d_ff, shape.n_layers
    )


def test_schedule_warms_up_to_peak_and_ends_at_fixed_floor() -> None:
    steps, peak = 200, 3e-2
    warmup = warmup_steps(steps)
    assert warmup == 20
    lrs = [lr_at(s, steps, peak, warmup) for s in range(steps)]
    assert lrs[0] == pytest.approx(peak / warmup)
    assert lrs[warmup - 1] == pytest.approx(peak) and lrs[warmup] == pytest.approx(peak)
    assert max(lrs) == pytest.approx(peak)
    assert lrs[-1] == MIN_LR  # exactly the fixed 1e-5, whatever the peak
    assert all(a >= b for a, b in zip(lrs[warmup:-1], lrs[warmup + 1 :], strict=True))
    assert lr_at(steps - 1, steps, 1.0, warmup) == MIN_LR
    assert lr_at(steps - 1, steps, 1e-6, warmup) == 1e-6  # a peak below the floor stays flat


def test_short_training_run_loss_falls_and_is_deterministic() -> None:
    seen: list[tuple[int, float]] = []
    r = train(1e-2, 8, TINY, seed=0, report=lambda s, x: seen.append((s, x)), eval_tokens=4096)
    assert not r.diverged and r.steps == 60 and r.tokens == 60 * 8 * 32
    assert r.N == TINY.N == 1 * (4 * 32 * 32 + 3 * 32 * 64)
    assert seen[-1][0] == 60 and seen[0][1] > seen[-1][1] + 0.5
    assert r.loss == r.val_loss < math.log(VOCAB_SIZE) - 1.0  # well below uniform bytes
    again = train(1e-2, 8, TINY, seed=0, eval_tokens=4096)
    assert again.loss == r.loss


def test_absurd_lr_is_reported_as_diverged_not_raised() -> None:
    r = train(10.0, 8, TINY, eval_tokens=4096)
    assert r.diverged and r.loss == math.inf and r.steps < 60
    assert r.to_dict()["loss"] is None


def test_bad_input_raises_input_error(tmp_path) -> None:
    with pytest.raises(SteplawInputError, match="lr"):
        train(-1.0, 8, TINY)
    with pytest.raises(SteplawInputError, match="batch_size"):
        train(1e-3, 0, TINY)
    with pytest.raises(SteplawInputError, match="neither"):
        train(1e-3, 8, TINY, corpus=tmp_path / "missing.txt")


def test_custom_corpus_file(tmp_path) -> None:
    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 2000)
    r = train(1e-2, 8, TINY, corpus=text, eval_tokens=2048)
    assert not r.diverged and r.loss < 2.0  # a repetitive text is easy


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "steplaw_opt.trainer", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


TINY_ARGS = ["--d-model", "32", "--d-ff", "64", "--n-layers", "1", "--seq-len", "32"]


@pytest.mark.slow  # a fresh interpreter importing torch: ~5-10 s
def test_cli_prints_json_lines_and_final_loss(tmp_path) -> None:
    metrics = tmp_path / "m.json"
    tokens = str(60 * 8 * 32)
    p = _cli("--lr", "0.01", "--batch-size", "8", "--tokens", tokens, *TINY_ARGS,
             "--metrics-file", str(metrics), "--threads", "1")  # fmt: skip
    assert p.returncode == 0, p.stderr
    lines = [json.loads(x) for x in p.stdout.splitlines()]
    assert all(set(x) == {"step", "loss"} for x in lines[:-1]) and len(lines) > 5
    final = lines[-1]
    assert final["diverged"] is False and final["steps"] == 60 and final["N"] == 10240
    assert math.isfinite(final["loss"]) and json.loads(metrics.read_text()) == final


@pytest.mark.slow
def test_cli_diverged_run_has_its_own_exit_code() -> None:
    p = _cli("--lr", "10", "--batch-size", "8", "--tokens", "15360", *TINY_ARGS)
    assert p.returncode == EXIT_DIVERGED
    final = json.loads(p.stdout.splitlines()[-1])
    assert final["diverged"] is True and final["loss"] is None


@pytest.mark.parametrize(
    ("args", "word"),
    [
        (["--lr", "-1", "--batch-size", "8", "--tokens", "1e4", "--params", "1e5"], "lr"),
        (["--lr", "0.01", "--batch-size", "8", "--params", "1e5"], "--tokens"),
        (["--lr", "0.01", "--batch-size", "2.5", "--tokens", "1e4", "--params", "1e5"], "batch"),
        (["--lr", "0.01", "--batch-size", "8", "--tokens", "1e4"], "N"),
    ],
)
def test_cli_bad_input_exits_with_one_line(args: list[str], word: str) -> None:
    p = _cli(*args)
    assert p.returncode == EXIT_BAD_INPUT
    assert len(p.stderr.strip().splitlines()) == 1 and word in p.stderr
    assert p.stderr.startswith("error:")
