import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tomli_w

from steplaw_opt import Scale, SteplawInputError, list_laws, load_law
from steplaw_opt.priors import Law, MissingVariableError, round_batch_sequences

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))


@pytest.mark.parametrize(
    ("N", "D"), [(2.1e8, 4e9), (1e9, 1e11), (7e9, 1.4e12), (7e10, 1.4e13), (1e6, 1e8)]
)
def test_step_law_reproduces_the_published_formula(N, D):
    p = load_law("step-law").predict(Scale(N=N, D=D, seq_len=4096))
    lr = 1.79 * N**-0.713 * D**0.307
    batch = 0.58 * D**0.571
    assert p.lr == pytest.approx(lr, rel=1e-9)
    assert p.batch_tokens == pytest.approx(batch, rel=1e-9)
    assert p.batch_sequences == pytest.approx(batch / 4096, rel=1e-9)


def test_bootstrap_mean_reproduces_published_coefficients(steplaw_data):
    from make_steplaw_card import PUBLISHED, agrees_to_3_digits, bootstrap_summary

    fits = steplaw_data / "1004_fitted_lr_bs_scaling_model_parameters.csv"
    summary, cov = bootstrap_summary(fits)
    for key, published in PUBLISHED.items():
        assert agrees_to_3_digits(summary[key], published), (key, summary[key])
    # The shipped card's covariance is the bootstrap covariance.
    card = load_law("step-law").covariance
    assert card is not None
    np.testing.assert_allclose(card.joint(), cov, rtol=1e-9)


def test_agrees_to_3_digits_is_not_vacuous():
    from make_steplaw_card import agrees_to_3_digits

    assert agrees_to_3_digits(1.7973, 1.79)
    assert not agrees_to_3_digits(1.812, 1.79)
    assert not agrees_to_3_digits(-0.7150, -0.713)


def test_interval_matches_bootstrap_spread_of_predictions(steplaw_data):
    """x_sᵀΣx_s reproduces the spread of the 1,000 bootstrap laws' predictions at a scale."""
    fits = pd.read_csv(steplaw_data / "1004_fitted_lr_bs_scaling_model_parameters.csv")
    N, D = 1e9, 1e11
    ln_lr = fits.lr_intercept + fits.lr_coefN * math.log(N) + fits.lr_coefD * math.log(D)
    p = load_law("step-law").predict(Scale(N=N, D=D))
    lo, hi = p.lr_intervals[1].low, p.lr_intervals[1].high
    sd = (math.log(hi) - math.log(lo)) / (2 * 1.959963984540054)
    assert sd == pytest.approx(ln_lr.std(ddof=1), rel=1e-6)


def test_interval_widens_when_extrapolating():
    law = load_law("step-law")
    inside = law.predict(Scale(N=5e8, D=2e10))
    outside = law.predict(Scale(N=7e10, D=1.4e13))
    width = [math.log(p.lr_intervals[1].high / p.lr_intervals[1].low) for p in (inside, outside)]
    assert width[1] > 2 * width[0]
    assert inside.extrapolated == ()
    assert outside.extrapolated == ("N", "D")


@pytest.mark.parametrize("law", list_laws(), ids=lambda law: law.name)
def test_every_shipped_card_predicts_inside_its_own_range(law: Law):
    middle = {v: math.sqrt(lo * hi) for v, (lo, hi) in law.validity.items()}
    shape = {"d_model": 1024, "d_ff": 4096, "n_layers": 12}  # a shape, for laws that need M
    probe = Scale(**shape, D=1e9)
    N = middle.get("N", probe.N)
    if "D" in middle:
        D = middle["D"]
    elif "C" in middle:  # place D so that the law's compute sits in the middle of its range
        per_token = probe.M if law.compute == "MD" else 6 * N
        D = middle["C"] / per_token
    else:
        D = 1e11
    scale = (
        Scale(**shape, D=D, target_loss=2.5)
        if "N" not in middle
        else Scale(N=N, D=D, target_loss=2.5, **(shape if law.compute == "MD" else {}))
    )
    p = law.predict(scale)
    assert p.missing is None
    assert p.extrapolated == ()
    for q in (p.lr, p.batch_tokens):
        assert q is None or (math.isfinite(q) and q > 0)
    assert p.lr is not None or p.batch_tokens is not None


def test_law_needing_a_missing_quantity_says_which():
    card = {
        "name": "loss-law",
        "citation": {"authors": "X", "title": "t", "year": 2024},
        "batch": {
            "unit": "tokens",
            "form": "power",
            "coefficient": 1.21e9,
            "exponents": {"L": -6.24},
        },
        "variables": {"L": "target loss"},
    }
    law = Law.from_dict(card)
    p = law.predict(Scale(N=1e9, D=1e10))
    assert p.missing is not None and "target loss" in p.missing
    with pytest.raises(MissingVariableError):
        law.batch_tokens_at(Scale(N=1e9, D=1e10))
    assert law.predict(Scale(N=1e9, D=1e10, target_loss=2.0)).batch_tokens == pytest.approx(
        1.21e9 * 2.0**-6.24
    )


def test_sequences_unit_and_log_linear_form():
    card = {
        "name": "toy",
        "citation": {"authors": "Y", "title": "t", "year": 2020},
        "lr": {"form": "log-linear", "coefficient": 0.003239, "slopes": {"N": -0.0001395}},
        "batch": {
            "unit": "sequences",
            "seq_len": 1024,
            "form": "power",
            "coefficient": 2.0,
            "exponents": {"N": 0.5},
        },
    }
    law = Law.from_dict(card)
    p = law.predict(Scale(N=1e8, D=1e10, seq_len=2048))
    assert p.lr == pytest.approx(0.003239 - 0.0001395 * math.log(1e8))
    assert p.batch_tokens == pytest.approx(2.0 * 1e4 * 1024)
    assert p.batch_sequences == pytest.approx(2.0 * 1e4 * 1024 / 2048)


def test_card_round_trips_through_toml(tmp_path):
    law = load_law("step-law")
    path = tmp_path / "mine.toml"
    path.write_text(tomli_w.dumps(law.to_dict()))
    again = load_law(str(path))
    s = Scale(N=3e9, D=3e11)
    assert again.predict(s).lr == pytest.approx(law.predict(s).lr, rel=1e-12)
    assert again.predict(s).lr_intervals == law.predict(s).lr_intervals


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda c: c.pop("name"), "missing name"),
        (lambda c: c["lr"].update(form="cubic"), "'power' or 'log-linear'"),
        (lambda c: c["lr"]["exponents"].update(Q=1.0), "unknown variable 'Q'"),
        (lambda c: c["lr"].update(coefficient=-1.0), "coefficient must be positive"),
        (lambda c: c["batch"].update(unit="bytes"), "'tokens' or 'sequences'"),
        (lambda c: c["batch"].update(unit="sequences"), "seq_len must be a positive integer"),
        (lambda c: c["validity"].update(N=[5.0, 1.0]), "[validity].N"),
        (
            lambda c: c["covariance"].update(lr=[[1.0, 0, 0], [0, 1.0, 0], [0, 0, 0.0]]),
            "not positive definite",
        ),
        (lambda c: c["covariance"].update(batch=[[1.0]]), "2×2"),
        (lambda c: c.update(schema=7), "unknown schema"),
        (lambda c: (c.pop("lr"), c.pop("batch")), "neither"),
    ],
)
def test_bad_cards_are_rejected_with_the_card_named(tmp_path, mutate, needle):
    card = load_law("step-law").to_dict()
    mutate(card)
    path = tmp_path / "bad.toml"
    path.write_text(tomli_w.dumps(card))
    with pytest.raises(SteplawInputError) as info:
        load_law(str(path))
    assert needle in str(info.value) and "bad.toml" in str(info.value)


def test_unreadable_and_unknown_cards(tmp_path):
    bad = tmp_path / "broken.toml"
    bad.write_text("name = ")
    with pytest.raises(SteplawInputError, match="not valid TOML"):
        load_law(str(bad))
    with pytest.raises(SteplawInputError, match="unknown law 'nope'"):
        load_law("nope")


@pytest.mark.parametrize(
    ("seqs", "rounding", "expected"),
    [
        (2441.0, "none", 2441.0),
        (1.59, "none", 2.0),  # a batch is a whole number of sequences: 1.59 is not one
        (617.4127, "none", 617.0),
        (0.3, "none", 1.0),
        (2441.0, "pow2", 2048.0),
        (2800.0, "pow2", 2048.0),
        (3000.0, "pow2", 4096.0),
        (2441.0, 64, 2432.0),
        (10.0, 64, 64.0),
    ],
)
def test_batch_rounding(seqs, rounding, expected):
    assert round_batch_sequences(seqs, rounding) == expected


@pytest.mark.parametrize("rounding", [0, -8, 2.5, "big"])
def test_batch_rounding_rejects(rounding):
    with pytest.raises(SteplawInputError):
        round_batch_sequences(100.0, rounding)
