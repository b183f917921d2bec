"""The bad-input corpus: every kind of bad input a user can give gets one line naming the bad
value (exit code 2 from the CLI, SteplawInputError from the API) and leaves nothing behind — no
half-made study, card or plot in the working folder.

It covers every class of issue 14's hostile or broken input — command templates with format
specs, malformed and hostile law cards, unusable predictions, bad and unreachable storages,
masked passwords, MLflow stores that are not there, typos that would create a database, a
worker whose command differs from the study's, and the Python API's values — beside the
classes before it; the deeper tests of each class live in tests/test_hostile_input.py,
tests/test_cards_validation.py and tests/test_storage_errors.py. :data:`KINDS` is the count.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from steplaw_opt import Scale, SteplawInputError, load_law, parse_size
from tests.conftest import SHARED_DATA, run_cli

# End to end: the CLI in subprocesses, real files and servers (`-m 'not slow'` skips them).
pytestmark = pytest.mark.slow

GRID = str(SHARED_DATA / "dense_lr_bs_loss.csv")


def _write(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


def _plan_for_1b(*args: str) -> list[str]:
    """A dry-run plan for a 1B-parameter, 20B-token target with ``args``."""
    return ["tune", "--params", "1B", "--tokens", "20B", *args, "--dry-run"]


# (id, argv builder given a scratch folder, text the one line must contain)
CLI_CASES = [
    ("size-negative", lambda d: ["predict", "--params", "-7B", "--tokens", "1T"], "'-7B'"),
    ("size-zero", lambda d: ["predict", "--params", "0", "--tokens", "1T"], "'0'"),
    ("size-nan", lambda d: ["predict", "--params", "nan", "--tokens", "1T"], "'nan'"),
    ("size-inf", lambda d: ["predict", "--params", "7B", "--tokens", "inf"], "'inf'"),
    ("size-unknown-unit", lambda d: ["predict", "--params", "7Q", "--tokens", "1T"], "'7Q'"),
    ("size-garbage", lambda d: ["predict", "--params", "seven", "--tokens", "1T"], "'seven'"),
    (
        "compute-overflows",
        lambda d: ["tune", "--builtin", "--params", "1e300", "--tokens", "1e11", "--dry-run"],
        "1e+300 × 1e+11",
    ),
    ("unknown-law", lambda d: ["predict", "--params", "7B", "--tokens", "1T", "--law", "x"], "'x'"),
    (
        "law-needs-a-target-loss",  # one law that cannot answer: exit 2, not a line and exit 0
        lambda d: ["predict", "--params", "1B", "--tokens", "100B", "--law", "kaplan-2020"],
        "--target-loss",
    ),
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
    # ---- issue 14: hostile or broken input
    *[
        (
            f"template-{kind}",
            lambda d, t=template: ["tune", "--params", "1B", "--tokens", "1T", "--command", t],
            needle,
        )
        for kind, template, needle in (
            ("format-spec", "train --lr {lr:d}", "{lr:d}"),
            ("conversion", "train --lr {lr!r}", "{lr!r}"),
            ("index", "train --lr {lr[0]}", "{lr[0]}"),
            ("huge-width", "train --lr {lr:>99999999999}", "format spec"),
        )
    ],
    (
        "card-text-for-a-table",
        lambda d: _predict_with(_write(d, "t.toml", 'name = "t"\nlr = "fast"\n' + _BATCH)),
        "'fast'",
    ),
    (
        "card-utf16",
        lambda d: _predict_with(_write_bytes(d, "w.toml", "\ufeffname = 'w'\n".encode("utf-16"))),
        "UTF-8",
    ),
    (
        "card-exponent-1000",
        lambda d: _predict_with(_write(d, "e.toml", _LR.replace("-0.713", "1000") + _BATCH)),
        "1000",
    ),
    (
        "card-infinite-lr",
        lambda d: [
            "tune",
            "--params",
            "7B",
            "--tokens",
            "1T",
            "--command",
            "x",
            "--no-mlflow",
            "--law",
            _write(d, "i.toml", _LR.replace("1.79", "1e300").replace("-0.713", "5") + _BATCH),
        ],
        "not a usable learning rate",
    ),
    (
        "round-batch-huge",
        lambda d: ["predict", "--params", "7B", "--tokens", "1T", "--round-batch", "9" * 14],
        "9" * 14,
    ),
    ("storage-malformed", lambda d: _replay_on("sqlite:/one-slash.db"), "not a URL"),
    ("storage-folder", lambda d: _replay_on(f"sqlite:///{d}"), "is a folder"),
    (
        "storage-not-sqlite",
        lambda d: _replay_on(f"sqlite:///{_write(d, 'n.db', 'my notes')}"),
        "not an SQLite database",
    ),
    ("storage-missing-folder", lambda d: _replay_on(f"sqlite:///{d}/no/x.db"), "does not exist"),
    (
        "storage-refused-password-masked",
        lambda d: _replay_on(f"postgresql://u:se/cret@127.0.0.1:{_closed_port()}/db"),
        "u:***@127.0.0.1",
    ),
    ("report-no-mlflow-store", lambda d: ["report", "--run-id", "0123abcd"], "no MLflow store"),
    (
        "fit-storage-typo",
        lambda d: ["fit", "--storage", "sqlite:///tpyo.db", "--study", "x"],  # in the work folder
        "tpyo.db",
    ),
    ("fit-name-with-slash", lambda d: ["fit", "x.csv", "--name", "../card"], "--name"),
    (
        "worker-command-differs",
        lambda d: [
            "worker",
            "--storage",
            _steplaw_db(d),
            "--study-name",
            "made",
            "--command",
            "train {lr}",
            "--no-mlflow",
        ],
        "differs from --command",
    ),
    (
        "ladder-factor",
        lambda d: [
            "tune",
            "--params",
            "1B",
            "--tokens",
            "20B",
            "--builtin",
            "--ladder",
            "4,0.5",
            "--dry-run",
        ],
        "--ladder takes factors greater than 1 (4,16: N/4 and N/16), got '0.5'",
    ),
    (
        "ladder-and-model",
        lambda d: [
            "tune",
            "--params",
            "1B",
            "--tokens",
            "20B",
            "--command",
            "python t.py {model_args} {lr}",
            "--ladder",
            "4",
            "--model",
            "250M=--n_layer=6",
            "--dry-run",
        ],
        "give --ladder or --model, not both",
    ),
    (
        "model-no-equals",
        lambda d: [
            "tune",
            "--params",
            "1B",
            "--tokens",
            "20B",
            "--command",
            "python t.py {model_args} {lr}",
            "--model",
            "250M",
            "--dry-run",
        ],
        "--model must be N=ARGS",
    ),
    (
        "model-none-smaller",
        lambda d: [
            "tune",
            "--params",
            "1B",
            "--tokens",
            "20B",
            "--command",
            "python t.py {model_args} {lr}",
            "--model",
            "2B=--n_layer=30",
            "--dry-run",
        ],
        "no --model is smaller than the target's N=1e+09",
    ),
    (
        "model-builtin",
        lambda d: [
            "tune",
            "--params",
            "1B",
            "--tokens",
            "20B",
            "--builtin",
            "--model",
            "250M=--n_layer=6",
            "--dry-run",
        ],
        "--model applies to --command only",
    ),
    (
        "ladder-replay",
        lambda d: [
            "tune",
            "--params",
            "214663680",
            "--tokens",
            "1e11",
            "--replay",
            GRID,
            "--ladder",
            "4",
            "--dry-run",
        ],
        "a ladder cannot be used with it",
    ),
    (
        "ladder-too-small",
        lambda d: [
            "tune",
            "--params",
            "100k",
            "--tokens",
            "1M",
            "--seq-len",
            "128",
            "--builtin",
            "--ladder",
            "100",
            "--dry-run",
        ],
        "too small for a transformer",
    ),
    (
        "ladder-far-below-target",
        lambda d: _plan_for_1b("--builtin", "--ladder", "1e9"),
        "ladder size N=1 is less than 1/1000 of the target's N=1e+09",
    ),
    (
        "model-far-below-target",
        lambda d: _plan_for_1b(
            "--command", "python t.py {model_args} --lr {lr}", "--model", "1K=--n_layer=1"
        ),
        "ladder size N=1000 is less than 1/1000 of the target's N=1e+09",
    ),
    (
        "demo-with-model",
        lambda d: ["tune", "--demo", "--model", "50K=--n_layer=1", "--dry-run"],
        "--model applies to --command only",
    ),
]

_LR = (
    'name = "c"\n[lr]\nform = "power"\ncoefficient = 1.79\nexponents = { N = -0.713, D = 0.307 }\n'
)
_BATCH = '[batch]\nunit = "tokens"\nform = "power"\ncoefficient = 0.58\nexponents = { D = 0.571 }\n'


def _predict_with(card: str) -> list[str]:
    return ["predict", "--params", "7B", "--tokens", "1T", "--law", card]


def _replay_on(storage: str) -> list[str]:
    return ["tune", "--replay", GRID, "--params", "214663680", "--tokens", "1e11", "--no-mlflow",
            "--storage", storage]  # fmt: skip


def _write_bytes(folder: Path, name: str, data: bytes) -> str:
    path = folder / name
    path.write_bytes(data)
    return str(path)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    # ---- issue 14: the Python API
    ("api-template-format-spec", lambda: _command("train {lr:.2e}"), "{lr:.2e}"),
    ("command-env-not-text", lambda: _command("echo", env={"SEED": 1}), "env['SEED']"),
    ("command-workdir-missing", lambda: _command("echo", workdir="/no/such/dir"), "/no/such/dir"),
    (
        "callable-returns-text",
        lambda: _callable(lambda lr, b, s: "3.1").run(1e-3, 8, _S, _ctx()),
        "not a number",
    ),
    ("space-bounds", lambda: _space().bounds_uv((1e-2, 1e-4), (1, 2), _S), "lr bounds"),
    ("space-lr-zero", lambda: _space().to_uv(0.0, 8, _S), "lr must be"),
    ("round-batch-float", lambda: load_law("step-law").predict(_S, round_batch=64.0), "64.0"),
    ("scale-huge-int", lambda: Scale(N=10**400, D=1e9), "N must be positive"),
    ("card-year-text", lambda: _card_dict(year="2024"), "'2024'"),
    ("card-citation-text", lambda: _card_dict(citation="Li et al."), "'Li et al.'"),
]

_S = Scale(N=1e9, D=1e11)


def _ctx():
    from steplaw_opt.objectives import RunContext

    return RunContext()


def _space():
    from steplaw_opt.space import LawSpace

    return LawSpace(load_law("step-law"))


def _card_dict(**changes):
    from steplaw_opt.priors import Law

    data = {"name": "d", "citation": {"authors": "X", "title": "t", "year": 2024},
            "lr": {"form": "power", "coefficient": 1.0, "exponents": {"N": -0.7}}}  # fmt: skip
    if "year" in changes:
        data["citation"]["year"] = changes["year"]
    if "citation" in changes:
        data["citation"] = changes["citation"]
    return Law.from_dict(data)


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


# The number of kinds of bad input the corpus holds (issue 14 found 46 when filed; the corpus
# held 56 before its hostile-input classes were added). Adding a kind means raising this.
KINDS = 96


def test_the_corpus_counts_its_kinds():
    n = len(CLI_CASES) + len(API_CASES)
    print(f"bad-input corpus: {len(CLI_CASES)} CLI + {len(API_CASES)} API = {n} kinds")
    assert n == KINDS
    ids = [c[0] for c in CLI_CASES] + [c[0] for c in API_CASES]
    assert len(set(ids)) == n, "every kind has its own id"
