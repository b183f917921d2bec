"""Law cards written for users (issue 17): every shipped card's notes read as a reference (Source,
Form and units, Verified, Not verified, Validity range; no research diary), and a card marked
``usable = false`` is listed and shown but never predicts or serves as a prior: left out of
``--law all`` and ``list_laws()``, refused in one line (UnusableLawError; exit code 2)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import tomli_w

from steplaw_opt import Scale, SteplawInputError, list_laws, load_law
from steplaw_opt.priors import Law, UnusableLawError
from tests.conftest import run_cli

CARDS = list_laws(include_unusable=True)
SECTIONS = ("Source:", "Form and units:", "Verified", "Not verified:", "Validity range:")
DIARY = ("from memory", "we did not", "we read", "we treat", "not re-checked", "re-check")
# First person outside quotations ("Part I —" in a title is not a pronoun).
FIRST_PERSON = re.compile(r"\b(?:I(?= [a-z])|[Ww]e|[Oo]ur|[Uu]s|[Mm]y|me)\b")
UNUSABLE = "bjorck-2024"


def _unquoted(text: str) -> str:
    """``text`` without its quotations ("..." and “...”), which may quote a paper's own words."""
    return re.sub(r'"[^"]*"|“[^”]*”', '""', text)


def _sections(notes: str) -> dict[str, str]:
    """The notes' sections by label, each section's text up to the next label."""
    starts = []
    for label in SECTIONS:
        m = re.search(rf"^{re.escape(label)}", notes, flags=re.MULTILINE)
        assert m is not None, f"no line starting with {label!r}"
        starts.append((m.start(), label))
    assert [label for _, label in sorted(starts)] == list(SECTIONS), "sections out of order"
    bounds = [s for s, _ in sorted(starts)] + [len(notes)]
    return {label: notes[a:b] for (a, label), b in zip(sorted(starts), bounds[1:], strict=True)}


@pytest.mark.parametrize("law", CARDS, ids=lambda law: law.name)
def test_notes_read_as_a_reference_not_a_diary(law: Law):
    lowered = law.notes.lower()
    for phrase in DIARY:
        assert phrase not in lowered, (law.name, phrase)
    found = FIRST_PERSON.findall(_unquoted(law.notes))
    assert not found, (law.name, found)


@pytest.mark.parametrize("law", CARDS, ids=lambda law: law.name)
def test_notes_have_source_verified_and_not_verified_sections(law: Law):
    sections = _sections(law.notes)
    for label, text in sections.items():
        assert len(text.strip()) > len(label) + 10, (law.name, label, "empty section")
    source = sections["Source:"]
    assert law.citation.arxiv in source and law.citation.url in source, (law.name, source)


@pytest.mark.parametrize("law", CARDS, ids=lambda law: law.name)
def test_every_coefficient_is_named_in_the_verified_or_not_verified_section(law: Law):
    """Each number on the card's formulas appears where the notes say how it was checked."""
    sections = _sections(law.notes)
    checked = sections["Verified"] + sections["Not verified:"] + sections["Source:"]
    for f in (law.lr_formula, law.batch_formula):
        if f is None:
            continue
        for number in (f.coefficient, *f.terms.values()):
            spelled = {f"{number:g}", f"{abs(number):g}", f"{number:.4f}".rstrip("0")}
            spelled |= {s.replace("e+0", "e").replace("e-0", "e-") for s in spelled}
            assert any(s in checked for s in spelled), (law.name, number)


def test_the_unusable_card_is_listed_but_left_out_of_the_laws_used():
    names = [law.name for law in list_laws()]
    assert UNUSABLE not in names and names[0] == "step-law"
    assert UNUSABLE in [law.name for law in CARDS]
    law = load_law(UNUSABLE)  # loads for inspection
    assert not law.usable and law.unusable_reason and "\n" not in law.unusable_reason
    assert all(card.usable for card in list_laws())


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_law_all_omits_the_unusable_card(as_json):
    args = ["predict", "--params", "1B", "--tokens", "100B", "--law", "all"]
    r = run_cli(*args, *(["--json"] if as_json else []))
    assert r.returncode == 0, r.stderr[-2000:]
    assert UNUSABLE not in r.stdout
    if as_json:
        laws = [doc["law"] for doc in json.loads(r.stdout)["laws"]]
        assert laws == [law.name for law in list_laws()]


@pytest.mark.parametrize("extra", [[], ["--json"]], ids=["table", "json"])
def test_predict_refuses_the_unusable_card_in_one_line(extra):
    r = run_cli("predict", "--params", "1B", "--tokens", "100B", "--law", UNUSABLE, *extra)
    assert r.returncode == 2, (r.stdout[-1000:], r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert UNUSABLE in lines[0] and "unusable" in lines[0]
    assert load_law(UNUSABLE).unusable_reason.rstrip(".") in lines[0]
    assert r.stdout == ""


def test_laws_lists_the_unusable_card_marked_and_shows_it():
    r = run_cli("laws")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "(unusable)" in r.stdout and f"Unusable {UNUSABLE}:" in r.stdout
    for law in CARDS:
        assert law.name in r.stdout
    shown = run_cli("laws", "show", UNUSABLE)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "Unusable:" in shown.stdout and "Not verified:" in shown.stdout


def test_laws_show_prints_table_names_literally():
    """A card's notes name its tables ([lr], [batch]); they are text, not rich markup."""
    r = run_cli("laws", "show", "minicpm-2024")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[lr]" in r.stdout


S = Scale(N=1e9, D=1e11)


def _refusals():
    from steplaw_opt.priors import Prior, refine_law
    from steplaw_opt.samplers import PlateauSampler
    from steplaw_opt.space import LawSpace

    law = load_law(UNUSABLE)
    return {
        "predict": lambda: law.predict(S),
        "lr_at": lambda: law.lr_at(S),
        "prior": lambda: Prior.from_law(law, S),
        "law-space": lambda: LawSpace(law),
        "plateau-sampler": lambda: PlateauSampler(S, law=UNUSABLE),
        "refine": lambda: refine_law(UNUSABLE, None),  # refused before the runs are read
    }


@pytest.mark.parametrize("use", list(_refusals()), ids=str)
def test_the_python_api_refuses_the_unusable_card_as_a_prior(use):
    with pytest.raises(SteplawInputError) as info:
        _refusals()[use]()
    assert isinstance(info.value, UnusableLawError)
    message = str(info.value)
    assert UNUSABLE in message and "\n" not in message and len(message) < 500


def test_tune_refuses_the_unusable_card_before_any_run(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    r = run_cli("tune", "--params", "7B", "--tokens", "1T", "--command", "echo", "--law",
                UNUSABLE, "--no-mlflow", cwd=work)  # fmt: skip
    assert r.returncode == 2, (r.stdout[-1000:], r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and UNUSABLE in lines[0] and "Traceback" not in r.stderr
    assert list(work.iterdir()) == []


def _my_card(tmp_path: Path, **top: object) -> Path:
    card = load_law("step-law").to_dict()
    card.update(name="mine", **top)
    path = tmp_path / "mine.toml"
    path.write_text(tomli_w.dumps(card))
    return path


def test_a_user_card_marked_unusable_round_trips_and_is_refused(tmp_path):
    path = _my_card(tmp_path, usable=False, unusable_reason="coefficients not checked yet")
    law = load_law(str(path))
    assert not law.usable and law.unusable_reason == "coefficients not checked yet"
    again = Law.from_dict(law.to_dict())
    assert not again.usable and again.unusable_reason == law.unusable_reason
    with pytest.raises(UnusableLawError, match="coefficients not checked yet"):
        law.predict(S)
    r = run_cli("predict", "--params", "1B", "--tokens", "100B", "--law", str(path), cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    assert "mine" in r.stderr and "coefficients not checked yet" in r.stderr


def test_a_usable_card_says_nothing_about_usability(tmp_path):
    law = load_law(str(_my_card(tmp_path)))
    assert law.usable and law.unusable_reason == ""
    assert "usable" not in law.to_dict() and "unusable_reason" not in law.to_dict()
