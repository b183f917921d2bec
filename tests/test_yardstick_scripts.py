"""scripts/surface_cv.py and scripts/interval_errors.py: the arithmetic behind the yardstick
checks docs/bench.md quotes (the figures themselves come from running the scripts)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from steplaw_opt.bench import GridSetting, load_grids
from steplaw_opt.bench._runner import _Recommendation
from tests.conftest import load_file

CV = load_file("surface_cv", "scripts/surface_cv.py")
ERRORS = load_file("interval_errors", "scripts/interval_errors.py")


def test_interval_errors_measure_each_truth_against_the_half_width_on_its_side() -> None:
    rec = _Recommendation(1e-3, 100.0, (8e-4, 1.5e-3), (5e-4, 2e-3), (90.0, 120.0), (50.0, 200.0))
    rows = ERRORS._side_errors(rec, [(2e-3, 80.0)])
    (axis_lr, err_lr, h68_lr, h95_lr), (axis_b, err_b, h68_b, h95_b) = rows
    assert (axis_lr, axis_b) == (0, 1)
    # the lr truth lies above: the upper half-widths count
    assert err_lr == pytest.approx(math.log(2.0))
    assert h68_lr == pytest.approx(math.log(1.5)) and h95_lr == pytest.approx(math.log(2.0))
    # the batch truth lies below: the lower half-widths count
    assert err_b == pytest.approx(math.log(100 / 80))
    assert h68_b == pytest.approx(math.log(100 / 90)) and h95_b == pytest.approx(math.log(2.0))


@pytest.mark.slow
def test_held_out_errors_vanish_where_a_surface_holds_the_landscape_exactly(
    steplaw_data: Path,
) -> None:
    s = load_grids(steplaw_data / "dense_lr_bs_loss.csv")[3]
    x, y = np.log(s.lr) - math.log(3e-3), np.log(s.batch) - math.log(400.0)
    loss = np.exp(math.log(2.4) + 0.005 * x**2 + 0.002 * x * y + 0.004 * y**2)
    bowl = GridSetting(key=(0.0,), N=s.N, D=s.D, lr=s.lr, batch=s.batch, loss=loss)
    errors = CV.held_out_errors(bowl, 0.0005)  # 3 cells: 9 refits
    near = int(np.sum(loss / loss.min() - 1 <= 0.0005))
    assert {len(e) for e in errors.values()} == {near}
    # a noise-free quadratic: both polynomials predict every left-out cell exactly
    assert np.abs(errors["quadratic-1.5%"]).max() < 1e-9
    assert np.abs(errors["cubic-3%"]).max() < 1e-9
    # the GP smooths, but it predicts a smooth bowl to well under the run noise (0.07 %)
    assert np.sqrt(np.mean(errors["gp"] ** 2)) < 2e-4


def test_fit_surface_names_an_unknown_surface() -> None:
    from steplaw_opt import SteplawInputError
    from steplaw_opt.bench._surfaces import fit_surface

    s = GridSetting(
        key=(0.0,), N=1e8, D=1e9, lr=np.ones(3), batch=np.ones(3), loss=np.ones(3) * 2.0
    )
    with pytest.raises(SteplawInputError, match="unknown surface 'spline'"):
        fit_surface(s, "spline")
