"""The bad-input corpus: every kind of bad input a user can give gets one line naming the bad
value (exit code 2 from the CLI, SteplawInputError from the API) and leaves nothing behind — no
half-made study, card or plot in the working folder."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from steplaw_opt import Scale, SteplawInputError, load_law, parse_size
from tests.conftest import SHARED_DATA, run_cli

GRID = str(SHARED_DATA / "dense_lr_bs_loss.csv")


def _write(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


# (id, argv builder given a scratch folder, text the one line must contain)
CLI_CASES = [
    ("size-negative", lambda d: ["predict", "--params", "-7B", "--tokens", "1T"], "'-7B'"),
    ("size-zero", lambda d: ["predict", "--params", "0", "--tokens", "1T"], "'0'"),
    ("size-nan", lambda d: ["predict", "--params", "nan", "--tokens", "1T"], "'nan'"),
    ("size-inf", lambda d: ["predict", "--params", "7B", "--tokens", "inf"], "'inf'"),
    ("size-unknown-unit", lambda d: ["predict", "--params", "7Q", "--tokens", "1T"], "'7Q'"),
    ("size-garbage", lambda d: ["predict", "--params", "seven", "--tokens", "1T"], "'seven'"),
    ("unknown-law", lambda d: ["predict", "--params", "7B", "--tokens", "1T", "--law", "x"], "'x'"),
    (
        "missing-card",
        lambda d: ["predict", "--params", "7B", "--tokens", "1T", "--law", str(d / "none.toml")],
        "none.toml",
    ),
    (
        "card-bad-toml",
        lambda d: [
            "predict",
            "--params",
            "7B",
            "--tokens",
            "1T",
            "--law",
            _write(d, "c.toml", "name = ["),
        ],
        "not valid TOML",
    ),
    (
        "card-singular-cov",
        lambda d: [
            "predict",
            "--params",
            "7B",
            "--tokens",
            "1T",
            "--law",
            _write(d, "s.toml", SINGULAR_CARD),
        ],
        "positive definite",
    ),
    (
        "card-unknown-unit",
        lambda d: [
            "predict",
            "--params",
            "7B",
            "--tokens",
            "1T",
            "--law",
            _write(d, "u.toml", BAD_UNIT_CARD),
        ],
        "'furlongs'",
    ),
    ("shape-incomplete", lambda d: ["predict", "--tokens", "1T", "--d-model", "64"], "d_ff"),
    (
        "shape-disagrees",
        lambda d: [
            "predict",
            "--params",
            "1B",
            "--tokens",
            "1T",
            "--d-model",
            "960",
            "--d-ff",
            "9368",
            "--n-layers",
            "7",
        ],
        "disagrees",
    ),
    (
        "seq-len-zero",
        lambda d: ["predict", "--params", "7B", "--tokens", "1T", "--seq-len", "0"],
        "seq_len",
    ),
    (
        "round-batch",
        lambda d: ["predict", "--params", "7B", "--tokens", "1T", "--round-batch", "-4"],
        "'-4'",
    ),
    (
        "moe-active>total",
        lambda d: ["predict", "--params", "1B", "--tokens", "1T", "--active-params", "2B"],
        "exceeds",
    ),
    (
        "unknown-option",
        lambda d: ["predict", "--params", "7B", "--tokens", "1T", "--bogus"],
        "--bogus",
    ),
    ("tune-no-objective", lambda d: ["tune", "--params", "1B", "--tokens", "1T"], "exactly one"),
    (
        "template-unknown-placeholder",
        lambda d: [
            "tune",
            "--params",
            "1B",
            "--tokens",
            "1T",
            "--command",
            "train {learning_rate}",
        ],
        "{learning_rate}",
    ),
    (
        "template-malformed",
        lambda d: ["tune", "--params", "1B", "--tokens", "1T", "--command", "train {lr"],
        "malformed",
    ),
    (
        "budget-negative",
        lambda d: ["tune", "--params", "1B", "--tokens", "1T", "--command", "x", "--budget", "-1"],
        "budget",
    ),
    (
        "budget-too-small",
        lambda d: [
            "tune",
            "--params",
            "1B",
            "--tokens",
            "1T",
            "--command",
            "x",
            "--budget",
            "0.001",
        ],
        "buys no run",
    ),
    (
        "unknown-sampler",
        lambda d: [
            "tune",
            "--params",
            "1B",
            "--tokens",
            "1T",
            "--command",
            "x",
            "--sampler",
            "grid",
        ],
        "'grid'",
    ),
    (
        "batch-unit",
        lambda d: [
            "tune",
            "--params",
            "1B",
            "--tokens",
            "1T",
            "--command",
            "x",
            "--batch-unit",
            "bytes",
        ],
        "'bytes'",
    ),
    (
        "replay-missing",
        lambda d: ["tune", "--params", "1B", "--tokens", "1T", "--replay", str(d / "g.csv")],
        "g.csv",
    ),
    (
        "replay-unknown-setting",
        lambda d: ["tune", "--params", "1B", "--tokens", "1T", "--replay", GRID],
        "no setting",
    ),
    (
        "corpus-missing",
        lambda d: [
            "tune",
            "--params",
            "1B",
            "--tokens",
            "1T",
            "--builtin",
            "--corpus",
            str(d / "nope"),
        ],
        "nope",
    ),
    (
        "refit-law-no-dir",
        lambda d: [
            "tune",
            "--params",
            "1B",
            "--tokens",
            "1T",
            "--command",
            "x",
            "--refit-law",
            str(d / "no" / "c.toml"),
        ],
        "does not exist",
    ),
    (
        "refit-law-not-toml",
        lambda d: [
            "tune",
            "--params",
            "1B",
            "--tokens",
            "1T",
            "--command",
            "x",
            "--refit-law",
            str(d / "c.json"),
        ],
        ".toml",
    ),
    ("fit-missing-csv", lambda d: ["fit", str(d / "runs.csv")], "runs.csv"),
    ("fit-missing-column", lambda d: ["fit", _write(d, "r.csv", "lr,bs,N\n0.001,64,1e8\n")], "'D'"),
    ("fit-bad-row", lambda d: ["fit", _write(d, "b.csv", BAD_ROW_CSV)], "row 3"),
    ("fit-one-setting", lambda d: ["fit", _write(d, "o.csv", ONE_SETTING_CSV)], "distinct"),
    ("bench-bad-budgets", lambda d: ["bench", "--budgets", "0,x"], "budgets"),
    ("bench-unknown-method", lambda d: ["bench", "--methods", "magic", "--quick"], "'magic'"),
    ("bench-missing-grid", lambda d: ["bench", str(d / "grid.csv")], "grid.csv"),
    (
        "worker-missing-study-db",
        lambda d: ["worker", "--storage", f"sqlite:///{d / 'none.db'}", "--study-name", "x"],
        "none.db",
    ),
    (
        "worker-missing-study",
        lambda d: ["worker", "--storage", _steplaw_db(d), "--study-name", "other"],
        "no study 'other'",
    ),
    (
        "worker-foreign-study",
        lambda d: ["worker", "--storage", _foreign_db(d), "--study-name", "plain"],
        "not made by steplaw-opt",
    ),
    (
        "worker-heartbeat-zero",
        lambda d: [
            "worker",
            "--storage",
            _steplaw_db(d),
            "--study-name",
            "made",
            "--heartbeat-interval",
            "0",
        ],
        "--heartbeat-interval",
    ),
    (
        "tune-create-only-in-memory",
        lambda d: [
            "tune",
            "--replay",
            GRID,
            "--params",
            "214663680",
            "--tokens",
            "1e11",
            "--storage",
            ":memory:",
            "--create-only",
            "--no-mlflow",
        ],
        "--create-only needs a --storage",
    ),
]


def _foreign_db(folder: Path) -> str:
    """A study made by plain Optuna, not by steplaw-opt."""
    import optuna

    url = f"sqlite:///{folder / 'plain.db'}"
    optuna.create_study(study_name="plain", storage=url)
    return url


def _steplaw_db(folder: Path) -> str:
    """A study made by `tune --create-only` (through the API, in the scratch folder)."""
    from steplaw_opt.objectives import GridReplayObjective
    from steplaw_opt.tune import tune

    url = f"sqlite:///{folder / 'made.db'}"
    if not (folder / "made.db").exists():
        tune(Scale(N=214663680, D=1e11), GridReplayObjective(GRID), budget=1, storage=url,
             study_name="made", create_only=True, heartbeat_interval=1)  # fmt: skip
    return url


SINGULAR_CARD = """
name = "singular"
[citation]
authors = "X"
title = "t"
year = 2024
[lr]
form = "power"
coefficient = 1.0
exponents = { N = -0.7 }
[batch]
unit = "tokens"
form = "power"
coefficient = 1.0
exponents = { D = 0.5 }
[covariance]
lr_terms = ["intercept", "N"]
lr = [[1.0, 1.0], [1.0, 1.0]]
batch_terms = ["intercept", "D"]
batch = [[1.0, 0.0], [0.0, 1.0]]
lr_batch = [[0.0, 0.0], [0.0, 0.0]]
"""

BAD_UNIT_CARD = """
name = "bad-unit"
[citation]
authors = "X"
title = "t"
year = 2024
[batch]
unit = "furlongs"
form = "power"
coefficient = 1.0
exponents = { D = 0.5 }
"""

BAD_ROW_CSV = "lr,bs,N,D,smooth loss\n0.001,64,1e8,1e10,2.5\n0.002,-64,1e8,1e10,2.4\n"
ONE_SETTING_CSV = "lr,bs,N,D,smooth loss\n0.001,64,1e8,1e10,2.5\n0.002,64,1e8,1e10,2.4\n"


@pytest.mark.parametrize(
    ("argv", "needle"), [(c[1], c[2]) for c in CLI_CASES], ids=[c[0] for c in CLI_CASES]
)
def test_cli_bad_input(tmp_path, argv, needle):
    scratch = tmp_path / "inputs"
    scratch.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    r = run_cli(*argv(scratch), cwd=work)
    assert r.returncode == 2, (r.stdout[-500:], r.stderr[-500:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in r.stderr
    assert list(work.iterdir()) == [], "bad input left something behind"


API_CASES = [
    ("scale-nan", lambda: Scale(N=math.nan, D=1e9), "N must be positive"),
    ("scale-str", lambda: Scale(N="7B", D=1e9), "must be a number"),  # type: ignore[arg-type]
    ("parse-size", lambda: parse_size("1.4X", "tokens"), "'1.4X'"),
    ("law-not-found", lambda: load_law("kaplan"), "'kaplan'"),
    ("sampler-same-params", lambda: _sampler(lr_param="x", batch_param="x"), "'x'"),
    ("sampler-acquisition", lambda: _sampler(acquisition="pi"), "'pi'"),
    ("sampler-not-a-scale", lambda: _plateau()(object()), "Scale"),
    ("prior-not-pd", lambda: _prior(np.array([[1.0, 2.0], [2.0, 1.0]])), "positive definite"),
    ("objective-signature", lambda: _callable(lambda lr: lr), "must accept"),
    ("template-empty", lambda: _command(" "), "empty"),
    ("template-timeout", lambda: _command("echo", timeout=0), "timeout"),
    ("plan-budget-nan", lambda: _plan(math.nan), "budget"),
    ("tune-heartbeat-zero", lambda: _tune(heartbeat_interval=0), "heartbeat"),
    ("tune-create-only-memory", lambda: _tune(storage=":memory:", create_only=True), "shared"),
    ("worker-study-from-python", lambda: _worker_without_spec(), "stores no objective"),
]


def _plateau():
    from steplaw_opt.samplers import PlateauSampler

    return PlateauSampler


def _sampler(**kw):
    return _plateau()(Scale(N=1e9, D=1e11), **kw)


def _prior(cov):
    from steplaw_opt.priors import Prior

    return Prior(np.zeros(2), cov)


def _callable(f):
    from steplaw_opt.objectives import CallableObjective

    return CallableObjective(f)


def _command(template, **kw):
    from steplaw_opt.objectives import CommandObjective

    return CommandObjective(template, **kw)


def _plan(budget):
    from steplaw_opt.tune import plan_proxies

    return plan_proxies(Scale(N=1e9, D=1e11), budget)


def _tune(**kw):
    from steplaw_opt.objectives import CallableObjective
    from steplaw_opt.tune import tune

    return tune(Scale(N=1e9, D=1e11), CallableObjective(lambda lr, batch, scale: 1.0), **kw)


def _worker_without_spec():
    import tempfile

    from steplaw_opt.tune import run_worker

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/w.db"
        _tune(storage=url, study_name="w", create_only=True)
        return run_worker("w", url)


@pytest.mark.parametrize(
    ("call", "needle"), [(c[1], c[2]) for c in API_CASES], ids=[c[0] for c in API_CASES]
)
def test_api_bad_input(call, needle):
    with pytest.raises(SteplawInputError) as info:
        call()
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_the_corpus_is_large_enough():
    assert len(CLI_CASES) + len(API_CASES) >= 30
