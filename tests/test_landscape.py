import dataclasses

import numpy as np
import pytest

from steplaw_opt import SteplawInputError, landscape
from steplaw_opt.landscape import (
    WINDOW_POINTS,
    BowlPrior,
    fit_bowl,
    project_pd,
    window_widening,
)


def _bowl_data(rng, w_star, h, n=40, noise=2e-4, offsets=(1.0,)):
    ws, ys, gs = [], [], []
    for g, c in enumerate(offsets):
        w = rng.uniform(-0.8, 0.8, size=(n, 2))
        d = w - w_star
        y = c + np.einsum("ni,ij,nj->n", d, h, d) + rng.normal(0, noise, n)
        ws.append(w)
        ys.append(y)
        gs.append(np.full(n, g))
    return np.concatenate(ws), np.concatenate(ys), np.concatenate(gs)


def test_fit_recovers_known_bowl_and_optimum():
    rng = np.random.default_rng(0)
    h = np.array([[0.008, -0.003], [-0.003, 0.006]])
    w_star = np.array([0.3, -0.2])
    w, y, g = _bowl_data(rng, w_star, h)
    told = dataclasses.replace(BowlPrior.default(), noise_sd=2e-4)  # the data's true noise
    post = fit_bowl(w, y, g, 1, prior_mean=np.zeros(2), prior_cov=np.eye(2) * 0.1, bowl=told)
    np.testing.assert_allclose(post.hessian, h, atol=4e-4)
    np.testing.assert_allclose(post.optimum(), w_star, atol=0.03)
    draws = post.sample_optima(np.random.default_rng(1), 500)
    assert np.all(np.abs(draws.mean(axis=0) - w_star) < 0.05)
    # With the default (larger) noise the curvature is pulled toward the released grids' prior
    # (a symmetric bowl here, so that the asymmetry term's prior does not move the curvature).
    symmetric = dataclasses.replace(BowlPrior.default(), k_sd=0.0)
    shrunk = fit_bowl(w, y, g, 1, prior_mean=np.zeros(2), prior_cov=np.eye(2) * 0.1, bowl=symmetric)
    prior_h = BowlPrior.default().H0[0, 0]
    assert prior_h < shrunk.hessian[0, 0] < post.hessian[0, 0]


def test_offsets_per_scale_pool_the_same_bowl():
    rng = np.random.default_rng(2)
    h = np.array([[0.006, -0.002], [-0.002, 0.006]])
    w_star = np.array([-0.25, 0.15])
    w, y, g = _bowl_data(rng, w_star, h, n=25, offsets=(0.9, 1.2, 1.5))
    symmetric = dataclasses.replace(BowlPrior.default(), k_sd=0.0)  # as the data are
    post = fit_bowl(w, y, g, 3, prior_mean=np.zeros(2), prior_cov=np.eye(2) * 0.1, bowl=symmetric)
    np.testing.assert_allclose(post.optimum(), w_star, atol=0.04)
    assert [post.offset(i) for i in range(3)] == pytest.approx([0.9, 1.2, 1.5], abs=2e-3)


def test_no_data_gives_back_the_prior():
    prior_mean = np.array([0.2, -0.1])
    post = fit_bowl(
        np.empty((0, 2)),
        np.empty(0),
        np.empty(0, int),
        1,
        prior_mean=prior_mean,
        prior_cov=np.eye(2) * 0.05,
    )
    np.testing.assert_allclose(post.optimum(), prior_mean, atol=1e-9)
    np.testing.assert_allclose(post.hessian, BowlPrior.default().H0, atol=1e-12)


def test_far_points_are_left_out():
    rng = np.random.default_rng(3)
    h = np.array([[0.006, 0.0], [0.0, 0.006]])
    w, y, g = _bowl_data(rng, np.zeros(2), h, n=30)
    # A diverged run 20 % above the rest would wreck an unweighted quadratic fit. Where the
    # bowl already puts it beyond the cut (2.4 % > 1 % here), it is left out altogether.
    w2 = np.vstack([w, [[2.0, 0.0]]])
    y2 = np.append(y, y.min() + 0.2)
    g2 = np.append(g, 0)
    kw = dict(prior_mean=np.zeros(2), prior_cov=np.eye(2) * 0.1)
    a = fit_bowl(w, y, g, 1, **kw).optimum()
    b = fit_bowl(w2, y2, g2, 1, **kw).optimum()
    np.testing.assert_allclose(a, b, atol=1e-9)


def test_a_far_run_the_bowl_puts_inside_the_cut_bounds_it_at_the_cut():
    rng = np.random.default_rng(3)
    h = np.array([[0.006, 0.0], [0.0, 0.006]])
    w, y, g = _bowl_data(rng, np.zeros(2), h, n=30)
    # 20 % above the rest where the bowl says 0.5 %: it enters at the cut, with the cut's
    # weight, and moves the bottom a little away from itself, not a lot.
    w2 = np.vstack([w, [[0.9, 0.0]]])
    y2 = np.append(y, y.min() + 0.2)
    kw = dict(prior_mean=np.zeros(2), prior_cov=np.eye(2) * 0.1)
    a = fit_bowl(w, y, g, 1, **kw).optimum()
    b = fit_bowl(w2, y2, np.append(g, 0), 1, **kw).optimum()
    assert -0.02 < b[0] - a[0] < -1e-4
    assert abs(b[1] - a[1]) < 0.01


# The built-in trainer's cheapest rung (N/8 on D/8 of an N = 1e5, D = 2e6 target: law lr 0.097,
# batch 5.5 sequences), the first 16 runs of a study seeded 1 before runs beyond the cut
# bounded the bowl: one good run at lr 0.0086, batch 11, the runs near the law 6-19 % worse, and
# six at batch 28-58 8-19 % worse. Prior: the law's at that target, far outside its data.
TRAINER_RUNG_W = np.array(
    [
        [0.0, -0.091], [-2.426, 0.698], [0.693, -0.602], [0.347, -0.602], [-0.308, -1.007],
        [0.002, -1.007], [-0.011, -0.602], [0.334, -1.007], [0.648, -1.007], [-0.538, -0.602],
        [-1.355, 2.36], [-1.308, 1.989], [-0.948, 2.191], [-0.904, 1.883], [-1.221, 1.632],
        [-1.663, 2.171],
    ]
)  # fmt: skip
TRAINER_RUNG_Y = np.array(
    [
        1.1448, 1.0164, 1.1956, 1.1401, 1.1217, 1.1107, 1.1149, 1.1582, 1.2087, 1.0794,
        1.119, 1.1143, 1.1334, 1.1162, 1.2028, 1.1132,
    ]
)  # fmt: skip


@pytest.mark.parametrize("rounds", [0, landscape.CENSOR_ROUNDS])
def test_runs_beyond_the_cut_bound_the_bowl(monkeypatch: pytest.MonkeyPatch, rounds: int) -> None:
    monkeypatch.setattr(landscape, "CENSOR_ROUNDS", rounds)
    w, y = TRAINER_RUNG_W, TRAINER_RUNG_Y
    post = fit_bowl(
        w,
        y,
        np.zeros(len(y), int),
        1,
        prior_mean=np.zeros(2),
        prior_cov=np.array([[2.80, 0.005], [0.005, 2.87]]),
    )
    cut = post.window[1]
    big_batch = w[:, 1] > 1.5
    predicted_gap = post.predict(w[big_batch], 0)[0] - y.min()
    if rounds == 0:
        # Left out, the big-batch runs were fitted as within 1 % of the best, and the bottom
        # went to them (batch e^1.1 times the law's; the study's refined batch ran to 55).
        assert np.all(predicted_gap < 0.01)
        assert post.optimum()[1] > 1.0
    else:
        assert np.all(predicted_gap > 0.5 * cut)
        assert post.optimum()[1] < w[np.argmin(y), 1]  # away from them, below the best run's


def test_project_pd_clips_eigenvalues():
    a = np.array([[1.0, 0.0], [0.0, -2.0]])
    assert np.linalg.eigvalsh(project_pd(a, 0.1)).min() == pytest.approx(0.1)


def test_bad_observations_rejected():
    from steplaw_opt import SteplawInputError

    with pytest.raises(SteplawInputError):
        fit_bowl(
            np.zeros((1, 2)),
            np.array([np.nan]),
            np.zeros(1, int),
            1,
            prior_mean=np.zeros(2),
            prior_cov=np.eye(2),
        )


def test_curvature_scale_is_one_on_grid_like_bowls_and_found_on_steep_ones():
    from steplaw_opt.landscape import estimate_curvature_scale

    rng = np.random.default_rng(5)
    bowl = BowlPrior.default()
    w = rng.uniform(-1.0, 1.0, size=(12, 2))
    groups = np.zeros(12, int)
    for kappa in (1.0, 20.0):
        d = w - np.array([0.2, -0.1])
        y = 1.0 + kappa * np.einsum("ni,ij,nj->n", d, bowl.H0, d)
        est = estimate_curvature_scale(w, y, groups, 1, bowl)
        assert est == pytest.approx(kappa, rel=0.35)


@pytest.mark.xfail(
    strict=True,
    reason="known limitation: the curvature scale needs two steep runs at one scale; one run "
    "far steeper than the prior, censored at the cut, is fitted by tilting the bowl",
)
def test_one_run_far_steeper_than_the_prior_sets_the_curvature_scale():
    # A toy bowl (ln L = ln(3 + ln(lr/2e-3)² + …), the tune() docstring's example before) after
    # four runs: two at one scale, one of them 1 ln unit of lr below the other and 0.58 worse
    # in ln L, 72 times what the prior curvature predicts. Read as κ = 1, the censored run is
    # fitted by tilting the bowl and the bottom goes 1.1 ln units up in lr, past the optimum
    # (0.2) and the runs. Counting a single ratio fixes it but cost the shifted proxy bench
    # (`const:0.5`, budget 0.25: 60 → 43 % of the law's gap removed) and the trainer ladder at
    # budget 0.1 (44.0 → 47.1 %).
    w = np.array([[0.0, -0.001], [-1.04, -0.001], [0.738, -0.318], [0.663, -0.303]])
    y = np.log([3.0132 * 1.0, 3.0132 * np.exp(0.5727), 3.0681, 3.0132])
    groups = np.array([0, 0, 1, 2])
    bowl = BowlPrior.default()
    kappa = landscape.estimate_curvature_scale(w, y, groups, 3, bowl)
    assert kappa > 30
    post = fit_bowl(w, y, groups, 3, prior_mean=np.zeros(2), prior_cov=0.35**2 * np.eye(2))
    assert abs(post.optimum()[0] - 0.2) < 0.5


def test_steep_landscape_far_from_the_law_is_still_located():
    # Like a tiny model far outside the law's range: the optimum sits 2 ln units below the law
    # and the bowl is 30 times steeper than the released grids'.
    rng = np.random.default_rng(6)
    h = BowlPrior.default().H0 * 30
    w_star = np.array([-2.0, -1.5])
    w = rng.uniform(-3.0, 1.0, size=(15, 2))
    d = w - w_star
    y = 1.0 + np.einsum("ni,ij,nj->n", d, h, d)
    kw = dict(prior_mean=np.zeros(2), prior_cov=np.eye(2) * 4.0)
    auto = fit_bowl(w, y, np.zeros(15, int), 1, **kw)
    fixed = fit_bowl(w, y, np.zeros(15, int), 1, curvature_scale=1.0, **kw)
    assert np.linalg.norm(auto.optimum() - w_star) < 0.3
    assert np.linalg.norm(fixed.optimum() - w_star) > np.linalg.norm(auto.optimum() - w_star)


def _asymmetric_grid() -> tuple[np.ndarray, np.ndarray]:
    # Flat towards low learning rates, a cliff towards high ones (ten times steeper), the
    # minimum at u = 0.1: the shape of the released grids, exaggerated.
    us, vs = np.arange(-2.0, 1.21, 0.2), np.arange(-1.2, 1.21, 0.3)
    w = np.array([[u, v] for u in us for v in vs])
    du = w[:, 0] - 0.1
    y = np.log(2.5) + np.where(du < 0, 0.003, 0.03) * du**2 + 0.006 * w[:, 1] ** 2
    return w, y


def test_narrow_window_keeps_the_bottom_near_an_asymmetric_minimum():
    w, y = _asymmetric_grid()
    groups = np.zeros(len(y), dtype=int)
    kwargs = {"prior_mean": np.zeros(2), "prior_cov": 4 * np.eye(2), "curvature_scale": 1.0}
    # the mechanism, at the narrow window the released grids' whole-grid fits favour, for a
    # symmetric bowl and for the default one with its asymmetry term
    for k_sd in (0.0, BowlPrior.default().k_sd):
        narrow_prior = dataclasses.replace(BowlPrior.default(), tau=0.002, cut=0.006, k_sd=k_sd)
        narrow = fit_bowl(w, y, groups, 1, bowl=narrow_prior, **kwargs).optimum()
        wide_prior = dataclasses.replace(BowlPrior.default(), tau=0.01, cut=0.05, k_sd=k_sd)
        wide = fit_bowl(w, y, groups, 1, bowl=wide_prior, **kwargs).optimum()
        assert abs(narrow[0] - 0.1) < 0.7 * abs(wide[0] - 0.1)
        assert wide[0] < narrow[0] < 0.1  # both lean to the flat side; the narrow one less


def test_the_asymmetry_term_follows_a_cliff_at_high_lr(monkeypatch: pytest.MonkeyPatch) -> None:
    w, y = _asymmetric_grid()  # the minimum at u = 0.1, ten times steeper above it
    groups = np.zeros(len(y), dtype=int)
    kwargs = {"prior_mean": np.zeros(2), "prior_cov": 4 * np.eye(2), "curvature_scale": 1.0}
    assert BowlPrior.default().k_sd > 0  # the shipped prior has the term
    for tau, cut in ((0.002, 0.006), (0.003, 0.01), (0.01, 0.05)):
        sym = dataclasses.replace(BowlPrior.default(), tau=tau, cut=cut, k_sd=0.0)
        asym = dataclasses.replace(BowlPrior.default(), tau=tau, cut=cut)
        p_sym = fit_bowl(w, y, groups, 1, bowl=sym, **kwargs)
        p_asym = fit_bowl(w, y, groups, 1, bowl=asym, **kwargs)
        assert p_sym.u_ref is None and p_asym.u_ref is not None
        # u_ref is the symmetric bowl's bottom, fitted to the same runs: the same ones as
        # p_sym's when no run beyond the cut is censored (each bowl censors its own)
        monkeypatch.setattr(landscape, "CENSOR_ROUNDS", 0)
        plain_sym = fit_bowl(w, y, groups, 1, bowl=sym, **kwargs).optimum()[0]
        plain_ref = fit_bowl(w, y, groups, 1, bowl=asym, **kwargs).u_ref
        monkeypatch.undo()
        assert plain_ref == pytest.approx(plain_sym)
        assert p_asym.mean[-1] > 0  # k > 0: steeper towards high lr
        # the symmetric bowl's bottom leans to the flat side; the term moves it back a fifth
        # of the way at least (the prior keeps k near the released grids', far below this cliff)
        err_sym, err_asym = abs(p_sym.optimum()[0] - 0.1), abs(p_asym.optimum()[0] - 0.1)
        assert err_asym < 0.8 * err_sym
        # its prediction is the fitted cubic, and its bottom is where the gradient vanishes
        u = np.linspace(-1.0, 0.6, 801)
        pts = np.column_stack([u, np.full_like(u, p_asym.optimum()[1])])
        assert u[np.argmin(p_asym.predict(pts, 0)[0])] == pytest.approx(
            p_asym.optimum()[0], abs=3e-3
        )


def test_the_asymmetric_bottom_is_closed_form_and_bounded():
    from steplaw_opt.landscape import ASYMMETRY_REACH, BowlPosterior

    # θ = (c, b_u, b_v, a_uu, a_uv, a_vv, k): a symmetric bottom at (0.3, -0.2), then a cubic
    a = np.array([[0.007, -0.002], [-0.002, 0.006]])
    w0 = np.array([0.3, -0.2])
    b = -2 * a @ w0
    theta = np.concatenate([[1.0], b, [a[0, 0], a[0, 1], a[1, 1]], [0.0]])
    post = BowlPosterior(theta, np.eye(7) * 1e-12, 1, 5e-4, u_ref=0.3)
    np.testing.assert_allclose(post.optimum(), w0, atol=1e-9)  # k = 0: the quadratic's bottom
    for k in (0.002, -0.002, 0.02):
        theta[-1] = k
        post = BowlPosterior(theta.copy(), np.eye(7) * 1e-12, 1, 5e-4, u_ref=0.1)
        w = post.optimum()
        u, v = w
        grad_u = b[0] + 2 * (a[0, 0] * u + a[0, 1] * v) + 3 * k * (u - 0.1) ** 2
        grad_v = b[1] + 2 * (a[0, 1] * u + a[1, 1] * v)
        assert abs(grad_u) < 1e-9 and abs(grad_v) < 1e-9  # a stationary point ...
        assert a[0, 0] + 3 * k * (u - 0.1) > 0  # ... and a minimum along u
    theta[-1] = 1.0  # so steep a cubic that no local minimum exists: the bottom stays bounded
    post = BowlPosterior(theta.copy(), np.eye(7) * 1e-12, 1, 5e-4, u_ref=0.1)
    assert abs(post.optimum()[0] - 0.1) <= ASYMMETRY_REACH + 1e-12


def test_window_widens_while_runs_are_few_and_far():
    bowl = BowlPrior.default()
    narrow = (bowl.tau, bowl.cut)
    dense = np.linspace(0, bowl.cut * 0.9, WINDOW_POINTS)  # a mapped plateau: no widening
    assert window_widening(dense, bowl) == narrow
    # One run more, far off, stays out; with fewer runs than WINDOW_POINTS all of them count.
    assert window_widening(np.append(dense, 0.04), bowl) == narrow
    tau, cut = window_widening(np.array([0.0, 0.01, 0.02]), bowl)  # three runs, 1-2 % apart
    assert cut == pytest.approx(0.02, rel=1e-6) and tau == pytest.approx(bowl.tau * 0.02 / bowl.cut)
    far = np.array([0.0, 0.5, 0.9])  # never beyond the wide window
    assert window_widening(far, bowl) == (bowl.wide_tau, bowl.wide_cut)
    assert window_widening(np.array([]), bowl) == narrow
    steep = bowl.scaled(10.0)  # κ scales every window alike
    assert window_widening(far, steep) == pytest.approx((10 * bowl.wide_tau, 10 * bowl.wide_cut))


def _lattice_runs(w_star: np.ndarray, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Twelve runs on the sampler's √2 mapping lattice around the law's point, with noise."""
    rng = np.random.default_rng(seed)
    w = np.array([[a, b] for a in (-0.35, 0.0, 0.35, 0.7) for b in (-0.35, 0.0, 0.35)])
    d = w - w_star
    h = BowlPrior.default().H0
    return w, np.log(2.5) + np.einsum("ni,ij,nj->n", d, h, d) + rng.normal(0, 7e-4, len(w))


def test_the_law_error_mixture_follows_the_evidence():
    prior = {"prior_mean": np.zeros(2), "prior_cov": 0.35**2 * np.eye(2), "curvature_scale": 1.0}
    # a symmetric bowl: the lattice runs come from one
    symmetric = dataclasses.replace(BowlPrior.default(), k_sd=0.0)
    single = dataclasses.replace(symmetric, law_widths=(1.0,), law_weights=(1.0,))
    mixed = dataclasses.replace(symmetric, law_widths=(1.0, 2.0, 4.0), law_weights=(0.5, 0.3, 0.2))
    groups = np.zeros(12, dtype=int)
    # The law is right: the narrow prior explains the runs best and gains weight.
    w, y = _lattice_runs(np.zeros(2))
    right = fit_bowl(w, y, groups, 1, bowl=mixed, **prior)
    assert right.width_weights[0] > 0.6 and sum(right.width_weights) == pytest.approx(1.0)
    # The law is 2–3 prior sds off: the narrow prior loses weight, and the optimum lands
    # nearer the truth than under the law's width alone, which keeps pulling it back.
    for truth in (np.array([0.7, 0.7]), np.array([-0.6, -0.5])):
        w, y = _lattice_runs(truth)
        wrong = fit_bowl(w, y, groups, 1, bowl=mixed, **prior)
        pulled = fit_bowl(w, y, groups, 1, bowl=single, **prior)
        assert wrong.width_weights[0] < 0.5
        err_mixed = np.linalg.norm(wrong.optimum() - truth)
        assert err_mixed < 0.8 * np.linalg.norm(pulled.optimum() - truth)
    with pytest.raises(SteplawInputError, match="law_widths"):
        fit_bowl(w, y, groups, 1, bowl=dataclasses.replace(mixed, law_weights=(1.0,)), **prior)


def test_design_gain_is_the_drop_in_expected_recommendation_loss():
    # A fitted posterior, then one more run at w: its gain must equal the fall of
    # tr(A J Σ Jᵀ) when the run enters the precision with weight ω (Sherman–Morrison by hand).
    from steplaw_opt.landscape import features

    rng = np.random.default_rng(5)
    h = np.array([[0.007, -0.002], [-0.002, 0.006]])
    w, y, g = _bowl_data(rng, np.array([0.2, -0.1]), h, n=8, noise=7e-4)
    post = fit_bowl(w, y, g, 1, prior_mean=np.zeros(2), prior_cov=0.35**2 * np.eye(2))
    noise = BowlPrior.default().noise_sd
    cand = np.array([[0.0, 0.0], [0.9, 0.0], [-0.9, 0.6], [0.2, -0.1]])
    weight = np.array([1.0, 0.5, 0.25, 1.0])
    gain = post.design_gain(cand, 0, noise, weight)
    j, a = post.optimum_jacobian(), post.hessian
    before = np.trace(a @ j @ post.cov @ j.T)
    for i, (point, om) in enumerate(zip(cand, weight, strict=True)):
        phi = features(point[None], np.zeros(1, int), 1, post.u_ref)[0]
        prec = np.linalg.inv(post.cov) + np.outer(phi, phi) * om / noise**2
        after = np.trace(a @ j @ np.linalg.inv(prec) @ j.T)
        assert gain[i] == pytest.approx(before - after, rel=1e-4)
    # a run at the current bottom tells little about where the bottom is; one out on the
    # slopes tells more, until its weight fades
    assert gain[3] < gain[1]
    assert post.design_gain(cand[[1]], 0, noise, np.array([1e-6]))[0] < 1e-3 * gain[1]


def test_the_asymmetry_term_keeps_the_bowl_rising_far_out():
    # A bare cubic with k > 0 falls without bound on the flat side; the term's tangent
    # continuation keeps the bowl rising there, so no acquisition is drawn to a bound.
    from steplaw_opt.landscape import ASYMMETRY_REACH, asymmetry

    t = np.array([-0.5, ASYMMETRY_REACH])
    np.testing.assert_allclose(asymmetry(t), t**3)
    r = ASYMMETRY_REACH
    assert asymmetry(np.array([-6.0]))[0] == pytest.approx(-(r**3 + 3 * r**2 * (6.0 - r)))
    post = fit_bowl(
        np.zeros((1, 2)), np.array([1.0]), np.zeros(1, int), 1,
        prior_mean=np.zeros(2), prior_cov=3.0**2 * np.eye(2),
    )  # fmt: skip
    assert post.u_ref is not None
    u = np.linspace(-8, 8, 33)
    pred = post.predict(np.column_stack([u, np.zeros_like(u)]), 0)[0]
    far = np.abs(u) > 2
    assert np.all(pred[far] > pred[np.argmin(np.abs(u))])  # the bottom is near, not far out


def test_no_asymmetry_on_a_landscape_far_steeper_than_the_released_grids():
    from steplaw_opt.landscape import ASYMMETRY_MAX_STEEPENING

    rng = np.random.default_rng(3)
    h = np.array([[0.007, -0.002], [-0.002, 0.006]])
    w, y, g = _bowl_data(rng, np.array([0.2, -0.1]), h, n=12)
    kw = {"prior_mean": np.zeros(2), "prior_cov": np.eye(2) * 0.1}
    assert fit_bowl(w, y, g, 1, curvature_scale=1.0, **kw).u_ref is not None
    steep = fit_bowl(w, y, g, 1, curvature_scale=ASYMMETRY_MAX_STEEPENING * 2, **kw)
    assert steep.u_ref is None and len(steep.mean) == 6
