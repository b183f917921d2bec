"""Law cards that are broken or hostile (issue 14): every problem is one line naming the key and
the value, from the API (SteplawInputError) and from the CLI (exit code 2); a card whose
numbers make a prediction infinite, zero or negative never prints ``Infinity`` and never lets
a study start."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from steplaw_opt import Scale, SteplawInputError
from steplaw_opt.priors import Law, load_law
from tests.conftest import run_cli

HEAD = 'name = "c"\n'
CITATION = '[citation]\nauthors = "X"\ntitle = "t"\nyear = 2024\n'
LR = '[lr]\nform = "power"\ncoefficient = 1.79\nexponents = { N = -0.713, D = 0.307 }\n'
BATCH = '[batch]\nunit = "tokens"\nform = "power"\ncoefficient = 0.58\nexponents = { D = 0.571 }\n'


def card(top: str = "", citation: str = CITATION, lr: str = LR, batch: str = BATCH) -> str:
    """A card with ``top`` as extra top-level keys (before any table, where TOML puts them)."""
    return HEAD + top + citation + lr + batch


# (id, card text, text the one line must contain: the key, and the bad value where shown)
BROKEN = [
    ("lr-is-text", card(top='lr = "fast"\n', lr=""), "'fast'"),
    ("batch-is-number", card(top="batch = 3\n", batch=""), "[batch]"),
    ("citation-is-text", card(top='citation = "Li et al."\n', citation=""), "'Li et al.'"),
    ("validity-is-text", card(top='validity = "wide"\n'), "'wide'"),
    ("variables-is-list", card(top="variables = [1, 2]\n"), "[variables]"),
    ("covariance-is-text", card(top='covariance = "diag"\n'), "'diag'"),
    ("residual-is-number", card(top="residual = 0.3\n"), "[residual]"),
    ("lr-array-of-tables", card(lr=LR.replace("[lr]", "[[lr]]")), "[lr]"),
    ("year-is-text", card(citation=CITATION.replace("2024", '"twenty"')), "'twenty'"),
    ("year-is-float", card(citation=CITATION.replace("2024", "2024.5")), "2024.5"),
    ("authors-is-number", card(citation=CITATION.replace('"X"', "7")), "authors"),
    ("title-is-number", card(top="title = 3\n"), "title"),
    ("notes-is-table", card(top="notes = { a = 1 }\n"), "notes"),
    ("warning-is-list", card(top='warning = ["x"]\n'), "warning"),
    ("meaning-is-number", card(lr=LR.replace("[lr]\n", "[lr]\nmeaning = 3\n")), "meaning"),
    ("form-is-list", card(lr=LR.replace('form = "power"', 'form = ["power"]')), "form"),
    ("exponents-is-number", card(lr=LR.replace("{ N = -0.713, D = 0.307 }", "1.5")), "exponents"),
    ("exponent-1000", card(lr=LR.replace("-0.713", "1000")), "1000"),
    ("exponent-minus-1000", card(lr=LR.replace("-0.713", "-1000")), "-1000"),
    ("coefficient-is-text", card(lr=LR.replace("1.79", '"1.79"')), "'1.79'"),
    ("seq-len-is-bool", card(batch=BATCH.replace('"tokens"', '"sequences"\nseq_len = true')),
     "seq_len"),
    ("validity-bad-item", card(top="", batch=BATCH + '[validity]\nN = [1.0, "x"]\n'), "'x'"),
    ("variables-value-number", card(batch=BATCH + "[variables]\nN = 3\n"), "[variables].N"),
    ("lr-terms-is-number", card(batch=BATCH + "[covariance]\nlr_terms = 5\n"), "lr_terms"),
    ("residual-sd-text", card(batch=BATCH + '[residual]\nlr_sd = "big"\nbatch_sd = 0.1\n'),
     "'big'"),
    ("name-with-slash", card().replace('name = "c"', 'name = "../../etc/x"'), "'../../etc/x'"),
    ("name-empty", card().replace('name = "c"', 'name = ""'), "name"),
    ("deeply-nested", card(top="x = " + "[" * 5000 + "]" * 5000 + "\n"), "c.toml"),
    ("usable-is-text", card(top='usable = "no"\n'), "'no'"),
    ("usable-is-number", card(top="usable = 0\n"), "usable"),
    ("unusable-without-reason", card(top="usable = false\n"), "unusable_reason"),
    ("unusable-blank-reason", card(top='usable = false\nunusable_reason = "  "\n'),
     "unusable_reason"),
    ("reason-is-number", card(top="usable = false\nunusable_reason = 3\n"), "unusable_reason"),
    ("reason-two-lines", card(top='usable = false\nunusable_reason = "a\\nb"\n'),
     "unusable_reason"),
    ("reason-too-long", card(top=f'usable = false\nunusable_reason = "{"x" * 301}"\n'),
     "300"),
    ("reason-but-usable", card(top='unusable_reason = "why"\n'), "usable is not false"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "needle"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_a_broken_card_is_one_line_naming_the_key(tmp_path, text, needle):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(SteplawInputError) as info:
        Law.from_card(path)
    message = str(info.value)
    assert needle in message and "\n" not in message, message
    assert len(message) < 500


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"\xff\xfe" + card().encode("utf-16-le"), "UTF-8"),
        (bytes(range(256)) * 40, "UTF-8"),
        (b"\x00" * 100, "c.toml"),
        (b"name = 'c'\n" + b"# " + b"x" * 3_000_000 + b"\n", "too large"),
    ],
    ids=["utf-16", "binary", "nul-bytes", "3-mb"],
)
def test_a_card_that_is_not_utf8_text_is_one_line(tmp_path, data, needle):
    path = tmp_path / "c.toml"
    path.write_bytes(data)
    with pytest.raises(SteplawInputError) as info:
        load_law(str(path))
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "case", ["utf-16", "lr-is-text", "exponent-1000", "citation-is-text", "year-is-text"]
)
def test_the_cli_refuses_a_broken_card_in_one_line(tmp_path, case):
    path = tmp_path / "c.toml"
    if case == "utf-16":
        path.write_bytes(b"\xff\xfe" + card().encode("utf-16-le"))
    else:
        path.write_text(dict((c[0], c[1]) for c in BROKEN)[case])
    r = run_cli("predict", "--params", "7B", "--tokens", "1T", "--law", str(path), cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


# ------------------------------------------------------------------------------- predictions
INFINITE_LR = card(lr=LR.replace("1.79", "1e300").replace("-0.713", "5.0"))
NEGATIVE_LR = card(lr='[lr]\nform = "log-linear"\ncoefficient = 0.001\nslopes = { N = -1.0 }\n')
ZERO_BATCH = card(batch=BATCH.replace("0.58", "1e-300").replace("0.571", "-9.0"))
WIDE_COV = card(
    batch=BATCH
    + '[covariance]\nlr_terms = ["intercept", "N", "D"]\nbatch_terms = ["intercept", "D"]\n'
    "lr = [[1e6, 0.0, 0.0], [0.0, 1e6, 0.0], [0.0, 0.0, 1e6]]\n"
    "batch = [[1e6, 0.0], [0.0, 1e6]]\nlr_batch = [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]\n"
)


def _strict_json(text: str) -> object:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in JSON output")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(
    ("text", "what"),
    [(INFINITE_LR, "lr"), (NEGATIVE_LR, "lr"), (ZERO_BATCH, "batch"), (WIDE_COV, "intervals")],
    ids=["infinite-lr", "negative-lr", "zero-batch", "overflowing-intervals"],
)
def test_an_unusable_prediction_is_flagged_never_infinity(tmp_path, text, what):
    path = tmp_path / "c.toml"
    path.write_text(text)
    law = Law.from_card(path)
    p = law.predict(Scale(N=7e9, D=1e12))
    doc = _strict_json(json.dumps(p.to_dict()))
    r = run_cli("predict", "--params", "7B", "--tokens", "1T", "--law", str(path), "--json",
                cwd=tmp_path)  # fmt: skip
    assert r.returncode in (0, 2), r.stderr[-2000:]
    if r.returncode == 0:
        doc = _strict_json(r.stdout)
        if what == "intervals":  # the point is fine; intervals past e^700 are left out
            assert doc["lr"] > 0 and doc["lr_interval"] == {}, doc
        else:
            assert doc["missing"] and doc[what if what == "lr" else "batch_tokens"] is None, doc
    else:
        assert len(r.stderr.strip().splitlines()) == 1
    text_run = run_cli("predict", "--params", "7B", "--tokens", "1T", "--law", str(path),
                       cwd=tmp_path)  # fmt: skip
    assert "Infinity" not in text_run.stdout
    assert not re.search(r"\binf\b", text_run.stdout.lower()), text_run.stdout
    assert "Traceback" not in text_run.stderr


@pytest.mark.parametrize("text", [INFINITE_LR, NEGATIVE_LR, ZERO_BATCH], ids=["inf", "neg", "0"])
def test_a_study_never_starts_on_an_unusable_prediction(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    work = tmp_path / "work"
    work.mkdir()
    r = run_cli("tune", "--params", "7B", "--tokens", "1T", "--command", "echo", "--law",
                str(path), "--no-mlflow", cwd=work)  # fmt: skip
    assert r.returncode == 2, (r.stdout[-1000:], r.stderr[-2000:])
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert list(work.iterdir()) == []


def test_every_shipped_law_gives_strict_json_at_extreme_scales(tmp_path):
    for params, tokens in (("1e15", "1e18"), ("1000", "1000"), ("1T", "1e9")):
        r = run_cli("predict", "--params", params, "--tokens", tokens, "--law", "all", "--json",
                    "--target-loss", "2.0", cwd=tmp_path)  # fmt: skip
        assert r.returncode == 0, r.stderr[-2000:]
        doc = _strict_json(r.stdout)
        for law in doc["laws"]:
            for key in ("lr", "batch_tokens"):
                assert law[key] is None or law[key] > 0, (law["law"], key, law[key])


def test_the_shipped_cards_still_load():
    from steplaw_opt.priors import list_laws

    assert {law.name for law in list_laws()} >= {"step-law", "deepseek-2024", "kaplan-2020"}
    every = {law.name for law in list_laws(include_unusable=True)}
    assert every - {law.name for law in list_laws()} == {"bjorck-2024"}  # marked usable = false
    assert load_law("step-law").predict(Scale(N=7e9, D=1.4e12)).lr == pytest.approx(9.17e-4, 1e-2)


def test_a_card_written_by_fit_loads_again(tmp_path):
    """The stricter checks accept every card the project writes itself."""
    import tomli_w

    from steplaw_opt.priors import fit_law, read_runs_csv
    from tests.conftest import SHARED_DATA

    grid = SHARED_DATA / "dense_lr_bs_loss.csv"
    if not grid.exists():
        pytest.skip("no released data")
    result = fit_law(read_runs_csv(grid), n_bootstrap=20, name="my-fit")
    path = Path(tmp_path / "fit.toml")
    path.write_text(tomli_w.dumps(result.card))
    assert Law.from_card(path).name == "my-fit"
