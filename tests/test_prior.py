import math

import numpy as np
import pytest

from steplaw_opt import Scale, SteplawInputError, load_law
from steplaw_opt.priors import Prior, TrustRegion
from steplaw_opt.priors._law import extrapolation_distance
from steplaw_opt.priors._prior import chi2_2_quantile
from steplaw_opt.space import LawSpace


def test_prior_is_coefficient_covariance_plus_residual_inside_the_range():
    law = load_law("step-law")
    s = Scale(N=5e8, D=2e10)
    assert extrapolation_distance(law, s) == 0
    prior = Prior.from_law(law, s)
    expected = law.log_covariance(s) + np.diag(np.square(law.residual_sd)) + 0.05**2 * np.eye(2)
    np.testing.assert_allclose(prior.cov, expected, rtol=1e-12)
    np.testing.assert_array_equal(prior.mean, [0.0, 0.0])


def test_prior_widens_with_extrapolation_one_decade_doubles_residual_variance():
    law = load_law("step-law")
    inside = Prior.from_law(law, Scale(N=1e9, D=1e11))
    out = Scale(N=1.1e10, D=1e11)  # N one decade above the fitted range
    assert extrapolation_distance(law, out) == pytest.approx(math.log(10))
    prior = Prior.from_law(law, out)
    residual_var = prior.cov - law.log_covariance(out) - 0.05**2 * np.eye(2)
    np.testing.assert_allclose(np.diag(residual_var), 2 * np.square(law.residual_sd), rtol=1e-9)
    assert np.all(prior.sd > inside.sd)


def test_prior_rejects_bad_input():
    with pytest.raises(SteplawInputError, match="positive definite"):
        Prior(np.zeros(2), np.array([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(SteplawInputError, match="widening"):
        Prior.from_law(load_law("step-law"), Scale(N=1e9, D=1e11), widen=-1)


def test_chi2_quantile():
    assert chi2_2_quantile(0.99) == pytest.approx(9.2103, rel=1e-4)
    with pytest.raises(SteplawInputError):
        chi2_2_quantile(1.0)


def test_trust_region_samples_lie_inside_ellipse_and_box():
    prior = Prior(np.array([0.1, -0.2]), np.array([[0.12, -0.03], [-0.03, 0.1]]))
    box = np.array([[-0.5, -1.0], [0.4, 1.0]])
    region = TrustRegion.from_prior(prior, mass=0.99, box=box)
    pts = region.sample(np.random.default_rng(0), 500)
    assert len(pts) == 500
    assert np.all(region.contains(pts))
    assert np.all(pts[:, 0] <= 0.4 + 1e-12)
    # A point outside the ellipse but inside the box is not contained.
    assert not region.contains(np.array([[0.39, 0.95]]))[0]


def test_trust_region_never_excludes_the_best_point():
    prior = Prior(np.zeros(2), np.eye(2) * 0.1)
    region = TrustRegion.from_prior(prior)
    best = np.array([[1.5, 0.0]])
    assert not region.contains(best)[0]
    moved = region.recentred(np.array([0.2, 0.0]), np.eye(2) * 0.01, keep=best)
    assert moved.contains(best)[0]


def test_bounds_that_exclude_the_trust_region_say_so():
    prior = Prior(np.zeros(2), np.eye(2) * 0.1)
    with pytest.raises(SteplawInputError, match="exclude the whole trust region"):
        TrustRegion.from_prior(prior, box=np.array([[2.0, -1.0], [3.0, 1.0]]))


def test_nearest_box_point_is_exact_for_a_tilted_ellipse():
    region = TrustRegion(
        np.zeros(2), np.array([[1.0, 0.9], [0.9, 1.0]]), 1.0, np.array([[0.5, -5], [5, -0.4]])
    )
    w = region.nearest_in_box()
    rng = np.random.default_rng(0)
    probes = rng.uniform([0.5, -5], [5, -0.4], size=(20000, 2))
    assert region.distance2(w)[0] <= region.distance2(probes).min() + 1e-9


def test_law_space_round_trips_in_both_units():
    law = load_law("step-law")
    s = Scale(N=1e9, D=1e11, seq_len=4096)
    for unit, factor in (("sequences", 4096), ("tokens", 1)):
        space = LawSpace(law, unit)  # type: ignore[arg-type]
        lr, b = space.from_uv(0.3, -0.2, s)
        assert lr == pytest.approx(law.lr_at(s) * math.exp(0.3))
        assert b * factor == pytest.approx(law.batch_tokens_at(s) * math.exp(-0.2))
        assert space.to_uv(lr, b, s) == pytest.approx((0.3, -0.2))
    with pytest.raises(SteplawInputError, match="batch_unit"):
        LawSpace(law, "bytes")  # type: ignore[arg-type]
