import json
import subprocess
import sys

import pytest

from tests.conftest import run_cli


def test_predict_json_matches_the_formula():
    r = run_cli("predict", "--params", "7e9", "--tokens", "1.4e12", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["lr"] == pytest.approx(1.79 * 7e9**-0.713 * 1.4e12**0.307, rel=1e-9)
    assert doc["batch_tokens"] == pytest.approx(0.58 * 1.4e12**0.571, rel=1e-9)
    assert doc["batch_sequences"] == pytest.approx(doc["batch_tokens"] / 2048)
    lo, hi = doc["lr_interval"]["95%"]
    assert lo < doc["lr"] < hi
    assert doc["extrapolated"] == ["N", "D"]


def test_predict_accepts_human_sizes_and_a_shape():
    a = json.loads(run_cli("predict", "--params", "7B", "--tokens", "1.4T", "--json").stdout)
    b = json.loads(run_cli("predict", "--params", "7e9", "--tokens", "1400B", "--json").stdout)
    assert a["lr"] == pytest.approx(b["lr"], rel=1e-12)
    c = run_cli(
        "predict",
        "--d-model",
        "960",
        "--d-ff",
        "9368",
        "--n-layers",
        "7",
        "--tokens",
        "4B",
        "--json",
    )
    assert json.loads(c.stdout)["N"] == 214_663_680


def test_predict_table_and_all_laws():
    r = run_cli("predict", "--params", "7B", "--tokens", "1.4T")
    assert r.returncode == 0 and "learning rate" in r.stdout and "Extrapolation" in r.stdout
    r = run_cli("predict", "--params", "7B", "--tokens", "1.4T", "--law", "all", "--json")
    doc = json.loads(r.stdout)
    assert doc["laws"][0]["law"] == "step-law" and len(doc["laws"]) >= 1


def test_laws_list_and_show():
    r = run_cli("laws")
    assert r.returncode == 0 and "step-law" in r.stdout
    r = run_cli("laws", "show", "step-law")
    assert r.returncode == 0 and "2503.04715" in r.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["predict", "--params", "-7B", "--tokens", "1T"], "'-7B'"),
        (["predict", "--params", "0", "--tokens", "1T"], "'0'"),
        (["predict", "--params", "nan", "--tokens", "1T"], "'nan'"),
        (["predict", "--params", "7X", "--tokens", "1T"], "'7X'"),
        (["predict", "--params", "7B", "--tokens", "inf"], "'inf'"),
        (["predict", "--params", "7B", "--tokens", "1T", "--law", "nope"], "'nope'"),
        (["predict", "--params", "7B", "--tokens", "1T", "--law", "/no/such/x.toml"], "x.toml"),
        (["predict", "--params", "7B", "--tokens", "1T", "--round-batch", "-4"], "'-4'"),
        (["predict", "--params", "7B", "--tokens", "1T", "--seq-len", "0"], "seq_len"),
        (["predict", "--params", "7B", "--tokens", "1T", "--bogus"], "--bogus"),
        (["predict", "--params", "7B"], "--tokens"),
        (["predict", "--tokens", "1T", "--d-model", "64"], "d_ff"),
        (["laws", "show", "nope"], "'nope'"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, needle):
    r = run_cli(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert needle in lines[0] and "Traceback" not in r.stderr


def test_unreadable_card_exits_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [")
    r = run_cli("predict", "--params", "7B", "--tokens", "1T", "--law", str(bad))
    assert r.returncode == 2 and "bad.toml" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_import_is_light():
    code = (
        "import sys, steplaw_opt, steplaw_opt.cli, steplaw_opt.priors, steplaw_opt.samplers;"
        "heavy = [m for m in ('torch', 'botorch', 'gpytorch', 'mlflow') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# What `steplaw-opt predict` must not import (issue 17: its cold start within 1.5x of importing
# typer, rich and numpy): the heavy libraries, and pydantic and the full typer app, which a
# plain predict skips (steplaw_opt.cli._direct). Checked by name, never by timing.
HEAVY = ("torch", "botorch", "gpytorch", "mlflow", "optuna", "pandas", "matplotlib", "scipy",
         "sqlalchemy", "pydantic", "steplaw_opt.cli._app", "steplaw_opt.priors._prior")  # fmt: skip


@pytest.mark.parametrize("extra", [[], ["--json"], ["--law", "all"]], ids=["table", "json", "all"])
def test_predict_imports_nothing_heavy(extra):
    code = (
        "import sys; from steplaw_opt.cli import main\n"
        f"try:\n    main(['predict', '--params', '7B', '--tokens', '1T', *{extra!r}])\n"
        "except SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
        f"print('HEAVY=' + ','.join(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}"
        f" or m in {HEAVY!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "HEAVY="


def test_predict_help_and_errors_still_come_from_the_typer_app():
    """Whatever the direct path does not take goes to the typer app: the help, and its errors."""
    r = run_cli("predict", "--help")
    assert r.returncode == 0 and "--tokens" in r.stdout and "--round-batch" in r.stdout
    r = run_cli("predict", "--params", "7B", "--tokens", "1T", "--seq-len", "2k")
    assert r.returncode == 2 and "'--seq-len'" in r.stderr and "integer" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_rounded_batch_outside_the_interval_gets_a_note_with_its_cost():
    """6.48B on 2T: the law's 2,992 sequences round (pow2) to 4,096, outside the law's mean 95 %
    range (2,484 – 3,604): one note, with the loss the rounding costs by the released grids'
    curvature, exp(H_vv · ln(4096/2992)²) − 1; a rounding inside the range gets none."""
    import math

    from steplaw_opt.landscape import BowlPrior

    args = ["predict", "--params", "6.48e9", "--tokens", "2e12", "--round-batch"]
    r = run_cli(*args, "pow2")
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    cost = math.expm1(BowlPrior.default().h_mean[2] * math.log(4096 / 2992.0) ** 2)
    assert (
        "note: the rounded batch 4,096 lies outside the law's mean 95 % range (2,484 – 3,604 "
        f"sequences); by the released grids' curvature it costs about {cost:.2%} in loss"
    ) in text
    inside = run_cli(*args, "100")  # 3,000: inside the range
    assert inside.returncode == 0 and "3,000" in inside.stdout and "note:" not in inside.stdout


def test_the_rounding_note_imports_nothing_heavy():
    code = (
        "import sys; from steplaw_opt.cli import main\n"
        "try:\n    main(['predict', '--params', '6.48e9', '--tokens', '2e12', '--round-batch',"
        " 'pow2'])\nexcept SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
        f"print('HEAVY=' + ','.join(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}"
        f" or m in {HEAVY!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "note: the rounded batch 4,096" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "HEAVY="
