"""The yardstick: shifted landscapes, noise-free surfaces, out-of-sample scores, calibration
arithmetic and the report. The bench's figures themselves come from `steplaw-opt bench`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from steplaw_opt import SteplawInputError
from steplaw_opt.bench import BenchConfig, GridSetting, load_grids, run_bench
from steplaw_opt.bench._report import FIGURES, check_report_dir, write_report
from steplaw_opt.bench._runner import _coverage, _Landscape, _Recommendation, _rows
from steplaw_opt.bench._shift import Shift, ShiftedReplayObjective
from steplaw_opt.bench._surfaces import gp_surface, noise_free_surfaces, polynomial_surface
from tests.conftest import run_cli

# Slower: real studies, reports and figures (`-m 'not slow'` skips them).
pytestmark = pytest.mark.slow

FAST = ("cubic-3%", "quadratic-1.5%")


@pytest.fixture(scope="module")
def settings(steplaw_data: Path) -> list[GridSetting]:
    return load_grids(steplaw_data / "dense_lr_bs_loss.csv")


# --------------------------------------------------------------------------------- shifts
def test_shift_texts_parse_and_bad_ones_are_one_line() -> None:
    assert Shift.parse("none") == Shift()
    assert Shift.parse("const") == Shift("const", 0.5)
    assert Shift.parse("drift-D:-0.3") == Shift("drift-D", -0.3)
    assert Shift.parse("const:0.5").label == "const:0.5"
    for bad, needle in [
        ("tilt:0.5", "'tilt'"),
        ("const:0.9", "±0.7"),
        ("const:x", "'const:x'"),
        ("const:nan", "nan"),
        ("none:0.2", "'none:0.2'"),
    ]:
        with pytest.raises(SteplawInputError, match=needle) as info:
            Shift.parse(bad)
        assert "\n" not in str(info.value)


def test_shift_families_give_the_documented_offsets(settings) -> None:
    const = Shift("const", 0.5).offsets(settings)
    assert np.allclose(const, 0.5)
    drift = Shift("drift-D", 0.6).offsets(settings)
    ln_d = np.log([s.D for s in settings])
    assert drift[:, 0].min() == pytest.approx(-0.6) and drift[:, 0].max() == pytest.approx(0.6)
    assert np.allclose(drift[:, 0], drift[:, 1])
    assert np.all(np.diff(drift[np.argsort(ln_d), 0]) >= -1e-12)  # grows with D
    n_drift = Shift("drift-N", 0.4).offsets(settings)
    assert n_drift[np.argmin([s.N for s in settings]), 0] == pytest.approx(-0.4)
    both = Shift("drift-ND", 0.7).offsets(settings)
    t_n, t_d = n_drift[:, 0] / 0.4, drift[:, 0] / 0.6
    assert np.allclose(both[:, 0], 0.7 * (t_n + t_d) / 2)
    assert np.allclose(both[:, 1], 0.7 * (t_d - t_n) / 2)
    assert np.allclose(Shift().offsets(settings), 0.0)


def test_a_shifted_landscape_is_the_released_one_moved_by_the_offset(settings) -> None:
    s = settings[3]
    offset = (0.5, -0.3)
    obj = ShiftedReplayObjective(s, offset)
    assert obj.lr_bounds[0] == pytest.approx(s.lr.min() * math.exp(0.5))
    assert obj.batch_bounds[1] == pytest.approx(s.batch.max() * math.exp(-0.3))

    class Fixed:  # a trial that proposes one point
        def __init__(self, lr: float, batch: float) -> None:
            self.values = {"lr": lr, "batch_size": batch}

        def suggest_float(self, name: str, low: float, high: float, log: bool) -> float:
            return self.values[name]

    for cell in (0, s.best_index, len(s.loss) - 1):
        lr, batch = float(s.lr[cell]), float(s.batch[cell])
        moved = Fixed(lr * math.exp(0.5), batch * math.exp(-0.3))
        assert obj(moved) == s.loss[cell]

    # A proposal off the cell's centre runs that cell, and the trial records where it ran.
    class Recorded(Fixed):
        def set_user_attr(self, key: str, value: object) -> None:
            self.__dict__.setdefault("user_attrs", {})[key] = value

    cell = s.best_index
    near = Recorded(float(s.lr[cell]) * math.exp(0.6), float(s.batch[cell]) * math.exp(-0.2))
    assert obj(near) == s.loss[cell]
    ran = near.user_attrs["steplaw.ran_with"]
    assert ran["lr"] == pytest.approx(float(s.lr[cell]) * math.exp(0.5))
    assert ran["batch_size"] == pytest.approx(float(s.batch[cell]) * math.exp(-0.3))
    # The argmin of every surface moves by exactly the offset.
    surfaces = noise_free_surfaces(s, FAST)
    land = _Landscape(3, s, "test", offset, surfaces, obj)
    for (lr, batch), surf in zip(land.truths(), surfaces, strict=True):
        assert math.log(lr / surf.argmin_lr) == pytest.approx(0.5)
        assert math.log(batch / surf.argmin_batch) == pytest.approx(-0.3)
        assert land.gaps(lr, batch)[f"gap_{surf.name}"] == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------------- surfaces
def _noisy_bowl(settings: list[GridSetting], noise: float, seed: int = 0) -> tuple:
    """The released lattice of one setting with a known bowl and run-to-run noise."""
    s = settings[3]
    rng = np.random.default_rng(seed)
    x0, y0 = math.log(3e-3), math.log(400.0)
    x, y = np.log(s.lr) - x0, np.log(s.batch) - y0
    # the grids' curvature: 0.5 % at one ln unit in lr, 0.4 % in batch, a little tilt
    ln_loss = math.log(2.4) + 0.005 * x**2 + 0.002 * x * y + 0.004 * y**2 + 0.0004 * x**3
    loss = np.exp(ln_loss) * (1.0 + noise * rng.standard_normal(len(x)))
    bowl = GridSetting(key=(0.0,), N=s.N, D=s.D, lr=s.lr, batch=s.batch, loss=loss)
    # the noise-free bowl's argmin, on a fine lattice
    gx, gy = np.meshgrid(np.linspace(-1, 1, 401), np.linspace(-1, 1, 401))
    f = 0.005 * gx**2 + 0.002 * gx * gy + 0.004 * gy**2 + 0.0004 * gx**3
    i = np.unravel_index(np.argmin(f), f.shape)
    return bowl, (math.exp(x0 + gx[i]), math.exp(y0 + gy[i]))


@pytest.mark.parametrize("name", ["cubic-3%", "quadratic-1.5%", "gp"])
def test_each_surface_recovers_a_known_bowl_from_noisy_cells(settings, name: str) -> None:
    errors = []
    for seed in range(3):
        bowl, (lr_star, b_star) = _noisy_bowl(settings, noise=0.0007, seed=seed)
        (surf,) = noise_free_surfaces(bowl, (name,))
        errors.append((math.log(surf.argmin_lr / lr_star), math.log(surf.argmin_batch / b_star)))
        # At the true argmin the surface is within noise/10 of its own minimum.
        assert surf.gap(lr_star, b_star) < 1e-4, (name, seed)
    errors = np.abs(np.array(errors))
    assert errors.max() < 0.35, (name, errors)  # one grid step of lr, half a batch step
    assert errors.mean() < 0.2, (name, errors)


def test_a_surface_without_noise_is_the_bowl_itself(settings) -> None:
    bowl, (lr_star, b_star) = _noisy_bowl(settings, noise=0.0)
    surf = polynomial_surface(bowl, degree=3, window=0.03)
    assert surf.residual_rms < 1e-9
    assert abs(math.log(surf.argmin_lr / lr_star)) < 0.02
    assert abs(math.log(surf.argmin_batch / b_star)) < 0.02
    # Away from the data the surface is the nearest cell's measured loss, never a wild
    # extrapolation of the polynomial.
    far = surf(bowl.lr.max() * 50, bowl.batch.max() * 50)
    assert far == pytest.approx(bowl.loss[bowl.nearest_index(bowl.lr.max(), bowl.batch.max())])


def test_the_gp_surface_estimates_the_noise(settings) -> None:
    bowl, _ = _noisy_bowl(settings, noise=0.0007)
    surf = gp_surface(bowl)
    # a smoother, not an interpolant: the cells near the minimum scatter around it by about
    # the noise
    assert 0.0003 < surf.residual_rms < 0.0012


# --------------------------------------------------------------------------------- scoring
def test_coverage_arithmetic() -> None:
    rec = _Recommendation(1e-3, 100.0, (8e-4, 1.2e-3), (5e-4, 2e-3), (90.0, 110.0), (50.0, 200.0))
    truths = [(1e-3, 100.0), (1.5e-3, 60.0), (3e-3, 300.0)]
    cov = _coverage(rec, truths)
    assert cov["cover68_lr"] == pytest.approx(1 / 3)
    assert cov["cover95_lr"] == pytest.approx(2 / 3)
    assert cov["cover68_batch"] == pytest.approx(1 / 3)
    assert cov["cover95_batch"] == pytest.approx(2 / 3)
    assert cov["width95_lr"] == pytest.approx(math.log(4.0))
    assert cov["width68_batch"] == pytest.approx(math.log(110 / 90))
    assert _coverage(_Recommendation(1e-3, 100.0), truths) == {}


def test_out_of_sample_counts_only_cells_the_method_never_ran(settings) -> None:
    s = settings[3]
    obj = ShiftedReplayObjective(s, (0.0, 0.0))
    land = _Landscape(3, s, "none", (0.0, 0.0), noise_free_surfaces(s, FAST), obj)
    best, other = s.best_index, int(np.argsort(s.loss)[5])
    points = [(float(s.lr[best]), float(s.batch[best]))]
    ran = _rows(land, "m", "published", 0, points, [1], {1: _Recommendation(*points[0])})
    assert not ran[0]["oos"] and math.isnan(ran[0]["gap_oos"])
    fresh = _Recommendation(float(s.lr[other]), float(s.batch[other]))
    new = _rows(land, "m", "published", 0, points, [1], {1: fresh})
    assert new[0]["oos"] and new[0]["gap_oos"] == pytest.approx(s.gap(float(s.loss[other])))
    assert new[0]["gap_raw"] == 0.0  # the best observed trial is the grid's best cell


# --------------------------------------------------------------------------------- report, CLI
def test_report_writes_a_page_and_two_figures(tmp_path: Path, steplaw_data: Path) -> None:
    config = BenchConfig(
        grid_path=steplaw_data / "dense_lr_bs_loss.csv",
        methods=("law", "walk", "plateau"),
        seeds=1,
        settings=(2, 9),
        budgets=(1, 3),
        shifts=("none", "const:0.5"),
        surfaces=FAST,
    )
    result = run_bench(config)
    page = write_report(tmp_path / "report", result)
    text = page.read_text()
    assert "## shift const:0.5, published law" in text and "| plateau |" in text
    for name in FIGURES:
        png = tmp_path / "report" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(
        [*FIGURES, "README.md"]
    )


def test_report_folder_is_checked_before_the_run(tmp_path: Path) -> None:
    a_file = tmp_path / "f"
    a_file.write_text("x")
    with pytest.raises(SteplawInputError, match="is a file"):
        check_report_dir(a_file)
    with pytest.raises(SteplawInputError, match="does not exist"):
        check_report_dir(tmp_path / "no" / "such")
    assert check_report_dir(tmp_path / "new") == tmp_path / "new"
    assert not (tmp_path / "new").exists()  # created only when the report is written


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--shift", "const:0.9"], "±0.7"),
        (["--shift", "spin"], "'spin'"),
        (["--quick", "--full"], "exclude each other"),
    ],
)
def test_cli_bad_yardstick_options_are_one_line(args: list[str], needle: str) -> None:
    result = run_cli("bench", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_cli_report_to_a_file_fails_before_running(tmp_path: Path) -> None:
    target = tmp_path / "report.md"
    target.write_text("mine")
    result = run_cli("bench", "--report", str(target))
    assert result.returncode == 2 and "is a file" in result.stderr
    assert target.read_text() == "mine"
