"""scripts/leave_one_n_out.py: coverage arithmetic, and the held-out figures the README quotes."""

from __future__ import annotations

import math

import pytest

from tests.conftest import load_file

LOO = load_file("leave_one_n_out", "scripts/leave_one_n_out.py")


def test_coverage_counts_the_truths_inside_and_takes_the_median_ln_width():
    share, width = LOO.coverage([1.0, 2.0, 10.0], [[0.5, 2.0], [3.0, 4.0], [1.0, 100.0]])
    assert share == pytest.approx(2 / 3)
    assert width == pytest.approx(math.log(4.0))  # widths ln 4, ln 4/3, ln 100
    # the bounds belong to the interval; an even count takes the mean of the middle two
    share, width = LOO.coverage([1.0, 4.0], [[1.0, 2.0], [2.0, 4.0]])
    assert share == 1.0 and width == pytest.approx(math.log(2.0))
    assert LOO.coverage([0.99], [[1.0, 2.0]])[0] == 0.0
    with pytest.raises(ValueError):
        LOO.coverage([1.0], [])
    with pytest.raises(ValueError):
        LOO.coverage([], [])


def _row(method: str, lr: float, batch: float, mean: bool = True) -> dict:
    intervals = {
        "optimum": {
            "lr": {"68%": [0.5, 2.0], "95%": [0.25, 4.0]},
            "batch": {"68%": [50.0, 200.0], "95%": [25.0, 400.0]},
        }
    }
    if mean:
        intervals["mean"] = {
            "lr": {"68%": [0.9, 1.1], "95%": [0.8, 1.25]},
            "batch": {"68%": [90.0, 110.0], "95%": [80.0, 125.0]},
        }
    truth = {"lr": lr, "batch": batch}
    return {"method": method, "truth": {"grid": truth, "cubic": truth}, "intervals": intervals}


def test_coverage_table_on_hand_made_rows():
    rows = [
        _row("published", 1.0, 100.0),  # inside everything
        _row("published", 1.5, 300.0),  # lr: optimum 68 % and 95 %; batch: optimum 95 % only
        _row("refit", 3.0, 100.0, mean=False),  # a law with no coefficient covariance
        _row("refined", 1.0, 100.0),
    ]
    table = {(e["truth"], e["method"], e["kind"]): e for e in LOO.coverage_table(rows)}
    pub_mean = table["grid", "published", "mean"]
    pub_opt = table["grid", "published", "optimum"]
    assert pub_mean["n"] == 2
    assert (pub_mean["lr 68%"], pub_mean["lr 95%"]) == (0.5, 0.5)
    assert (pub_mean["batch 68%"], pub_mean["batch 95%"]) == (0.5, 0.5)
    assert (pub_opt["lr 68%"], pub_opt["lr 95%"]) == (1.0, 1.0)
    assert (pub_opt["batch 68%"], pub_opt["batch 95%"]) == (0.5, 1.0)
    assert pub_opt["lr 95% width"] == pytest.approx(math.log(16.0))
    assert pub_mean["batch 68% width"] == pytest.approx(math.log(110 / 90))
    assert ("grid", "refit", "mean") not in table  # not invented for a law without it
    assert table["grid", "refit", "optimum"]["lr 68%"] == 0.0
    assert table["grid", "refit", "optimum"]["lr 95%"] == 1.0
    assert table["cubic", "refined", "mean"]["lr 68%"] == 1.0


def test_the_held_out_coverage_the_readme_quotes(steplaw_data, capsys):
    rows = LOO.leave_one_n_out(steplaw_data / "dense_lr_bs_loss.csv")
    table = {(e["truth"], e["method"], e["kind"]): e for e in LOO.coverage_table(rows)}
    assert all(e["n"] == 17 for e in table.values())

    def shares(key, q):
        e = table[key]
        return round(e[f"{q} 68%"] * 17), round(e[f"{q} 95%"] * 17)

    # README "Predict": held out by model size, best grid cell as the optimum
    assert shares(("grid", "refit", "optimum"), "lr") == (14, 17)  # 82 % | 100 %
    assert shares(("grid", "refit", "optimum"), "batch") == (11, 17)  # 65 % | 100 %
    assert shares(("grid", "refit", "mean"), "lr") == (1, 7)  # 6 % | 41 %
    assert shares(("grid", "refit", "mean"), "batch") == (1, 3)  # 6 % | 18 %
    assert shares(("grid", "published", "optimum"), "lr") == (11, 17)  # 65 % | 100 %
    assert shares(("grid", "published", "optimum"), "batch") == (13, 17)  # 76 % | 100 %
    assert shares(("grid", "published", "mean"), "lr") == (1, 3)  # 6 % | 18 %
    assert shares(("cubic", "refit", "optimum"), "lr") == (17, 17)
    assert shares(("cubic", "refit", "optimum"), "batch") == (16, 17)  # 94 % | 100 %
    for method in ("published", "refined"):  # "94–100 %" at 68 % against the cubic argmin
        for q in ("lr", "batch"):
            assert shares(("cubic", method, "optimum"), q) == (17, 17)
    opt = table["grid", "refit", "optimum"]
    assert round(opt["lr 95% width"], 2) == 1.32 and round(opt["batch 95% width"], 2) == 1.41
    mean = table["grid", "refit", "mean"]
    assert round(mean["lr 95% width"], 2) == 0.20 and round(mean["batch 95% width"], 2) == 0.18
    LOO.print_coverage(LOO.coverage_table(rows))
    assert "optimum" in capsys.readouterr().out
