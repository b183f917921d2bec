"""predict's interval of where the optimum is (issue 17), beside the law's mean interval."""

import json
import math

import numpy as np
import pytest
from rich.console import Console

from steplaw_opt import Scale, load_law
from steplaw_opt.cli._render import print_prediction, print_predictions
from steplaw_opt.priors import Law, list_laws
from steplaw_opt.priors._law import Z68, Z95, extrapolation_distance, extrapolation_widening
from steplaw_opt.priors._prior import Prior
from tests.conftest import run_cli

STEP = load_law("step-law")
SCALES = [
    Scale(N=5e8, D=2e10),  # inside the fitted range
    Scale(N=1e9, D=1e11),
    Scale(N=7e9, D=1.4e12),  # far beyond it
    Scale(N=1e5, D=1e6),  # far below it
]


def _ln_width(iv) -> float:
    return math.log(iv.high / iv.low)


@pytest.mark.parametrize("scale", SCALES, ids=str)
def test_the_optimum_interval_contains_the_law_mean_interval(scale):
    p = STEP.predict(scale)
    assert p.optimum is not None and p.optimum_missing is None
    for mean, opt in ((p.lr_intervals, p.optimum.lr), (p.batch_intervals, p.optimum.batch)):
        assert [i.mass for i in mean] == [i.mass for i in opt] == [0.68, 0.95]
        for m, o in zip(mean, opt, strict=True):
            assert o.low < m.low and m.high < o.high
            # both are centred (in ln) on the law's point
            assert math.log(o.low * o.high) == pytest.approx(math.log(m.low * m.high), abs=1e-9)


def test_the_optimum_interval_is_the_formula_at_7b_by_1_4t():
    scale = Scale(N=7e9, D=1.4e12)
    p = STEP.predict(scale)
    # ln distances outside N ∈ [2.1e8, 1.1e9] and D ∈ [4e9, 1e11]
    d = math.hypot(math.log(7e9 / 1.1e9), math.log(1.4e12 / 1e11))
    kappa = 1 + (d / math.log(10)) ** 2
    assert p.optimum.distance == pytest.approx(d, rel=1e-12)
    assert p.optimum.widening == pytest.approx(kappa, rel=1e-12) == pytest.approx(2.9596, abs=1e-4)
    coef = STEP.log_covariance(scale)
    for k, (value, sigma, iv) in enumerate(
        (
            (p.lr, STEP.residual_sd[0], p.optimum.lr),
            (p.batch_tokens, STEP.residual_sd[1], p.optimum.batch),
        )
    ):
        sd = math.sqrt(coef[k, k] + kappa * sigma**2 + 0.05**2)
        assert p.optimum.ln_sd[k] == pytest.approx(sd, rel=1e-12)
        for z, i in zip((Z68, Z95), iv, strict=True):
            assert i.low == pytest.approx(value * math.exp(-z * sd), rel=1e-12)
            assert i.high == pytest.approx(value * math.exp(z * sd), rel=1e-12)
    # the figures the README quotes: lr 0.00028 – 0.0030, ×/÷ 3.28 at 95 %; law's mean ×/÷ 1.23
    assert p.lr_intervals[1].low == pytest.approx(7.5e-4, rel=0.005)
    assert p.lr_intervals[1].high == pytest.approx(1.12e-3, rel=0.005)
    assert math.sqrt(p.lr_intervals[1].high / p.lr_intervals[1].low) == pytest.approx(
        1.23, abs=0.005
    )
    assert (p.optimum.lr[1].low, p.optimum.lr[1].high) == pytest.approx(
        (2.80e-4, 3.00e-3), rel=3e-3
    )
    assert math.exp(Z95 * p.optimum.ln_sd[0]) == pytest.approx(3.28, abs=0.005)


@pytest.mark.parametrize("scale", SCALES, ids=str)
def test_the_optimum_interval_is_the_samplers_prior(scale):
    """One formula: the prior's covariance (widen=1) is the optimum interval's."""
    p = STEP.predict(scale)
    prior = Prior.from_law(STEP, scale)
    np.testing.assert_allclose(p.optimum.ln_sd, prior.sd, rtol=1e-12)


def test_inside_the_range_it_is_not_widened():
    p = STEP.predict(Scale(N=5e8, D=2e10))
    assert p.optimum.distance == 0 and p.optimum.widening == 1
    # the README: ×/÷ 1.98 for the optimum against ×/÷ 1.05 for the law's mean (95 %, lr)
    assert math.exp(Z95 * p.optimum.ln_sd[0]) == pytest.approx(1.98, abs=0.005)
    assert math.sqrt(p.lr_intervals[1].high / p.lr_intervals[1].low) == pytest.approx(
        1.05, abs=0.005
    )


def test_the_optimum_interval_widens_with_extrapolation_distance():
    widths, distances = [], []
    for n in (1e9, 3e9, 1e10, 3e10, 1e11):  # the upper N bound is 1.1e9
        p = STEP.predict(Scale(N=n, D=5e10))
        distances.append(p.optimum.distance)
        widths.append(_ln_width(p.optimum.lr[1]) - _ln_width(p.lr_intervals[1]))
    assert distances[0] == 0 and np.all(np.diff(distances) > 0)
    assert np.all(np.diff(widths) > 0)  # wider than the law's mean interval, and more so
    assert extrapolation_widening(math.log(10)) == pytest.approx(2.0)  # a decade out: 2×


def _card(**extra) -> Law:
    data = {
        "name": "toy",
        "lr": {"coefficient": 1.0, "exponents": {"N": -0.5}},
        "batch": {"coefficient": 1.0, "exponents": {"D": 0.5}},
        "validity": {"N": [1e8, 1e9], "D": [1e9, 1e11]},
        **extra,
    }
    return Law.from_dict(data)


def test_a_card_without_residual_gets_no_optimum_interval_and_says_so():
    p = _card().predict(Scale(N=3e8, D=1e10))
    assert p.optimum is None and "no [residual]" in p.optimum_missing
    doc = p.to_dict()
    assert doc["optimum_interval"] is None and "no [residual]" in doc["optimum_interval_missing"]
    console = Console(width=80, record=True)
    print_prediction(console, _card(), p)
    text = console.export_text()
    assert "optimum" not in text.split("no optimum interval")[0].split("quantity")[1]
    assert "no optimum interval: the card has no [residual]" in " ".join(text.split())


def test_a_card_with_residual_but_no_covariance_is_residual_only():
    law = _card(residual={"lr_sd": 0.2, "batch_sd": 0.3})
    scale = Scale(N=1e10, D=1e10)  # one decade above N's range
    p = law.predict(scale)
    assert p.lr_intervals == () and p.optimum is not None and not p.optimum.coefficients
    assert p.optimum.ln_sd[0] == pytest.approx(math.sqrt(2 * 0.2**2 + 0.05**2), rel=1e-12)
    assert extrapolation_distance(law, scale) == pytest.approx(math.log(10))
    console = Console(width=80, record=True)
    print_prediction(console, law, p)
    assert "no [covariance]: residual scatter only" in " ".join(console.export_text().split())


def test_the_table_labels_both_intervals_within_80_columns():
    console = Console(width=80, record=True)
    p = STEP.predict(Scale(N=7e9, D=1.4e12))
    print_prediction(console, STEP, p)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    rows = [line for line in text.splitlines() if line.startswith("│")]
    assert sum("law's mean" in r for r in rows) == 3 and sum("optimum" in r for r in rows) == 3
    assert "0.00028 – 0.003" in text and "0.000747 – 0.00112" in text
    assert "law's mean: where the law's own mean lies" in text
    assert "optimum: where this run's optimum is" in text and "×2.96" in text


def test_all_laws_table_shows_both_factors_and_no_name_is_cut():
    laws = list_laws()
    scale = Scale(N=7e9, D=1.4e12)
    console = Console(width=80, record=True)
    print_predictions(console, laws, [law.predict(scale) for law in laws])
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    for law in laws:
        assert law.name in text
    step = next(line for line in text.splitlines() if line.startswith("│ step-law"))
    assert "1.23" in step and "3.28" in step
    assert "no [covariance] (mean) or no [residual] (optimum)" in " ".join(text.split())


def test_predict_json_has_the_optimum_interval_under_its_own_key():
    r = run_cli("predict", "--params", "7e9", "--tokens", "1.4e12", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    for key in ("lr_interval", "batch_tokens_interval", "batch_sequences_interval"):
        assert set(doc[key]) == {"68%", "95%"}  # the law's mean, as before
    opt = doc["optimum_interval"]
    assert doc["optimum_interval_missing"] is None
    for key in ("lr", "batch_tokens", "batch_sequences"):
        assert set(opt[key]) == {"68%", "95%"}
    assert opt["lr"]["95%"][0] < doc["lr_interval"]["95%"][0] < doc["lr"]
    assert opt["lr"]["95%"][1] > doc["lr_interval"]["95%"][1]
    seq = opt["batch_sequences"]["95%"]
    assert seq == pytest.approx([b / 2048 for b in opt["batch_tokens"]["95%"]], rel=1e-12)
    assert opt["widening"] == pytest.approx(2.9596, abs=1e-4)
    assert opt["includes_coefficient_covariance"] is True
    assert set(opt) >= {"meaning", "ln_sd", "residual_sd", "extrapolation_ln_distance"}


def test_predict_all_laws_json_says_which_card_cannot_give_it():
    r = run_cli("predict", "--params", "7B", "--tokens", "1.4T", "--law", "all", "--json")
    doc = json.loads(r.stdout)
    by_name = {d["law"]: d for d in doc["laws"]}
    assert by_name["step-law"]["optimum_interval"]["lr"]["95%"]
    assert doc["optimum_interval"] == by_name["step-law"]["optimum_interval"]
    porian = by_name["porian-2024"]
    assert porian["lr"] is not None and porian["optimum_interval"] is None
    assert "no [residual]" in porian["optimum_interval_missing"]
