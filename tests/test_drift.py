"""The bowl's drift terms: a bottom that moves with scale, w*_s = w* + Γ x_s."""

import dataclasses

import numpy as np
import pytest

from steplaw_opt import SteplawInputError
from steplaw_opt.landscape import WIDE_DRIFT, BowlPrior, drift_prior_cov, features, fit_bowl
from steplaw_opt.priors import drift_covariance, load_law

H = np.array([[0.008, -0.002], [-0.002, 0.006]])
SYMMETRIC = dataclasses.replace(BowlPrior.default(), k_sd=0.0, noise_sd=2e-4)
# Group 0 is the target; groups 1–3 are proxies at smaller N and D (ln units below the target).
SCALE_X = np.array([[0.0, 0.0], [-1.0, -2.0], [-2.0, -3.0], [-1.0, -4.0]])
PRIOR = {"prior_mean": np.zeros(2), "prior_cov": np.eye(2) * 0.1}
STEP_DRIFT = drift_covariance(load_law("step-law"))
SCATTER = BowlPrior.default().with_scale_scatter().scatter_cov  # the measured scale scatter


def _proxy_runs(rng, bottom_of, groups=(1, 2, 3), n=40, noise=2e-4):
    ws, ys, gs = [], [], []
    for g in groups:
        w_star = bottom_of(g)
        w = w_star + rng.uniform(-0.7, 0.7, size=(n, 2))
        d = w - w_star
        ws.append(w)
        ys.append(1.0 + 0.1 * g + np.einsum("ni,ij,nj->n", d, H, d) + rng.normal(0, noise, n))
        gs.append(np.full(n, g))
    return np.concatenate(ws), np.concatenate(ys), np.concatenate(gs)


def test_features_append_the_drift_columns_after_the_bowl():
    w = np.array([[0.5, -0.25], [1.0, 2.0]])
    phi = features(w, np.array([1, 2]), 4, scale_x=SCALE_X)
    assert phi.shape == (2, 4 + 5 + 4)
    np.testing.assert_allclose(phi[0, -4:], [0.5 * -1, 0.5 * -2, -0.25 * -1, -0.25 * -2])
    np.testing.assert_allclose(phi[1, -4:], [1.0 * -2, 1.0 * -3, 2.0 * -2, 2.0 * -3])
    np.testing.assert_allclose(phi[:, :-4], features(w, np.array([1, 2]), 4))


def test_drift_prior_cov_maps_gamma_to_the_linear_term():
    # A bottom moved by Γx changes the linear term by −2HΓx: vec G = −2 (H ⊗ I) vec Γ.
    rng = np.random.default_rng(0)
    s_gamma = np.diag([0.01, 0.02, 0.03, 0.04])
    gammas = rng.multivariate_normal(np.zeros(4), s_gamma, size=20000).reshape(-1, 2, 2)
    gs = (-2.0 * H @ gammas).reshape(-1, 4)
    np.testing.assert_allclose(np.cov(gs.T), drift_prior_cov(H, s_gamma), atol=2e-6)


def test_scale_x_and_drift_cov_go_together_and_are_checked():
    w, y, g = _proxy_runs(np.random.default_rng(1), lambda s: np.zeros(2))
    cov = np.eye(4) * 0.005
    with pytest.raises(SteplawInputError, match="both or neither"):
        fit_bowl(w, y, g, 4, **PRIOR, scale_x=SCALE_X)
    with pytest.raises(SteplawInputError, match="4×2"):
        fit_bowl(w, y, g, 4, **PRIOR, scale_x=SCALE_X[:3], drift_cov=cov)
    bad = SCALE_X.copy()
    bad[2, 1] = np.nan
    with pytest.raises(SteplawInputError, match="finite"):
        fit_bowl(w, y, g, 4, **PRIOR, scale_x=bad, drift_cov=cov)


def test_every_group_at_the_target_scale_is_the_drift_free_fit():
    w, y, g = _proxy_runs(np.random.default_rng(2), lambda s: np.array([0.2, -0.1]))
    plain = fit_bowl(w, y, g, 4, **PRIOR)
    zero = fit_bowl(w, y, g, 4, **PRIOR, scale_x=np.zeros((4, 2)), drift_cov=np.eye(4))
    assert zero.scale_x is None and zero.drift() is None
    np.testing.assert_array_equal(plain.mean, zero.mean)
    np.testing.assert_array_equal(plain.cov, zero.cov)


def test_a_drift_the_proxies_agree_on_is_carried_to_the_target():
    gamma = np.array([[-0.06, 0.05], [0.04, -0.05]])  # rows u, v; columns ln N, ln D
    w_target = np.array([0.3, -0.2])
    w, y, g = _proxy_runs(np.random.default_rng(3), lambda s: w_target + gamma @ SCALE_X[s])
    cov = drift_covariance(load_law("step-law"))
    post = fit_bowl(w, y, g, 4, **PRIOR, bowl=SYMMETRIC, scale_x=SCALE_X, drift_cov=cov)
    np.testing.assert_allclose(post.drift(), gamma, atol=0.015)
    np.testing.assert_allclose(post.optimum(), w_target, atol=0.05)
    # Without the drift terms the proxies' bottoms are averaged and the target's is missed.
    plain = fit_bowl(w, y, g, 4, **PRIOR, bowl=SYMMETRIC)
    assert np.linalg.norm(plain.optimum() - w_target) > 2 * np.linalg.norm(
        post.optimum() - w_target
    )


def test_drift_free_proxies_still_transfer_with_an_honestly_wider_interval():
    w_star = np.array([-0.25, 0.15])
    w, y, g = _proxy_runs(np.random.default_rng(4), lambda s: w_star)
    cov = drift_covariance(load_law("step-law"))
    post = fit_bowl(w, y, g, 4, **PRIOR, bowl=SYMMETRIC, scale_x=SCALE_X, drift_cov=cov)
    plain = fit_bowl(w, y, g, 4, **PRIOR, bowl=SYMMETRIC)
    np.testing.assert_allclose(post.optimum(), w_star, atol=0.05)
    np.testing.assert_allclose(post.drift(), 0.0, atol=0.02)
    rng = np.random.default_rng(5)
    spread = post.sample_optima(rng, 4000).std(axis=0)
    assert np.all(spread > plain.sample_optima(rng, 4000).std(axis=0))


def test_proxies_at_one_scale_cannot_pin_the_drift_so_the_prior_bounds_the_move():
    # One proxy scale: its bottom is w* + Γx, and only the prior on Γ splits the two. The
    # target's bottom stays between the law's point and the proxy's, not beyond either.
    w_proxy = np.array([0.4, -0.3])
    w, y, g = _proxy_runs(np.random.default_rng(6), lambda s: w_proxy, groups=(2,))
    cov = drift_covariance(load_law("step-law"))
    post = fit_bowl(w, y, g, 4, **PRIOR, bowl=SYMMETRIC, scale_x=SCALE_X, drift_cov=cov)
    target = post.optimum()
    assert np.all(np.abs(target) <= np.abs(w_proxy) + 1e-9)
    assert np.all(np.sign(target) == np.sign(w_proxy))


# ------------------------------------------------------------------------ through a study
def _proxy_study(gamma: np.ndarray, w_target: np.ndarray, target):
    import itertools

    import optuna

    from steplaw_opt import Scale
    from steplaw_opt.space import LawSpace

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = LawSpace(load_law("step-law"), "sequences", target.seq_len)
    dist = {
        "lr": optuna.distributions.FloatDistribution(1e-6, 1.0, log=True),
        "batch_size": optuna.distributions.FloatDistribution(1.0, 1e6, log=True),
    }
    study = optuna.create_study()
    steps = (-0.6, -0.3, 0.0, 0.3, 0.6)
    for g, x in enumerate(SCALE_X[1:], start=1):
        proxy = Scale(N=target.N * np.exp(x[0]), D=target.D * np.exp(x[1]), seq_len=target.seq_len)
        w_star = w_target + gamma @ x
        for du, dv in itertools.product(steps, steps):
            d = np.array([du, dv])
            lr, batch = space.from_uv(*(w_star + d), proxy)
            attrs = {"steplaw.N": proxy.N, "steplaw.D": proxy.D, "steplaw.seq_len": proxy.seq_len}
            value = float(np.exp(1.0 + 0.1 * g + d @ H @ d))
            study.add_trial(
                optuna.trial.create_trial(
                    params={"lr": lr, "batch_size": batch},
                    distributions=dist,
                    value=value,
                    user_attrs=attrs,
                )
            )
    return study


def test_the_sampler_carries_the_proxies_drift_to_the_target_only_when_asked():
    from steplaw_opt import Scale
    from steplaw_opt.samplers import PlateauSampler, refined_optimum

    target = Scale(N=1e9, D=1e11, seq_len=2048)
    gamma = np.array([[-0.06, 0.05], [0.04, -0.05]])
    w_target = np.array([0.3, -0.2])
    study = _proxy_study(gamma, w_target, target)
    errors = {}
    for drift in (False, True):
        opt = refined_optimum(study, sampler=PlateauSampler(target, drift=drift))
        errors[drift] = float(np.hypot(opt.u - w_target[0], opt.v - w_target[1]))
    assert errors[True] < 0.06 < 2 * errors[True] < errors[False]


def test_the_sampler_fits_the_scale_scatter_only_when_its_bowl_prior_has_it():
    from steplaw_opt import Scale
    from steplaw_opt.samplers import PlateauSampler

    target = Scale(N=1e9, D=1e11, seq_len=2048)
    study = _proxy_study(np.zeros((2, 2)), np.array([0.2, 0.1]), target)
    posts = {}
    for name, bowl in (("default", None), ("on", BowlPrior.default().with_scale_scatter())):
        sampler = PlateauSampler(target, bowl_prior=bowl)
        posts[name] = sampler.fit(sampler.history(study))
    assert not posts["default"].scatter
    assert posts["on"].scatter and len(posts["on"].mean) == len(posts["default"].mean) + 6
    # the proxies agree (no drift, one offset): the target's bottom barely moves
    np.testing.assert_allclose(posts["on"].optimum(), posts["default"].optimum(), atol=0.02)
    unmeasured = dataclasses.replace(BowlPrior.default(), measured_scatter_sd=(0.0, 0.0))
    with pytest.raises(SteplawInputError, match="no measured_scatter_sd"):
        unmeasured.with_scale_scatter()


def test_drift_leaves_a_single_scale_study_as_it_was():
    import optuna

    from steplaw_opt import Scale
    from steplaw_opt.samplers import PlateauSampler, refined_optimum

    target = Scale(N=1e9, D=1e11, seq_len=2048)
    study = _proxy_study(np.zeros((2, 2)), np.array([0.2, 0.1]), target)
    one_scale = [
        t
        for t in study.trials
        if t.user_attrs["steplaw.D"] == study.trials[0].user_attrs["steplaw.D"]
    ]
    single = optuna.create_study()
    for t in one_scale:
        single.add_trial(t)
    proxy = Scale(
        N=one_scale[0].user_attrs["steplaw.N"], D=one_scale[0].user_attrs["steplaw.D"], seq_len=2048
    )
    plain = refined_optimum(single, sampler=PlateauSampler(proxy))
    drifting = refined_optimum(single, sampler=PlateauSampler(proxy, drift=True))
    assert (plain.lr, plain.batch_tokens) == (drifting.lr, drifting.batch_tokens)


def test_drift_must_be_a_bool():
    from steplaw_opt import Scale
    from steplaw_opt.samplers import PlateauSampler

    with pytest.raises(SteplawInputError, match="drift must be True or False, got 'yes'"):
        PlateauSampler(Scale(N=1e9, D=1e11), drift="yes")  # type: ignore[arg-type]


def test_each_scale_has_its_own_bottom_and_offset_there():
    gamma = np.array([[-0.06, 0.05], [0.04, -0.05]])
    w_target = np.array([0.3, -0.2])
    w, y, g = _proxy_runs(np.random.default_rng(3), lambda s: w_target + gamma @ SCALE_X[s])
    cov = drift_covariance(load_law("step-law"))
    post = fit_bowl(w, y, g, 4, **PRIOR, bowl=SYMMETRIC, scale_x=SCALE_X, drift_cov=cov)
    for s in (1, 2, 3):
        np.testing.assert_allclose(post.optimum_at(s), w_target + gamma @ SCALE_X[s], atol=0.06)
        assert post.offset(s) == pytest.approx(1.0 + 0.1 * s, abs=1e-3)
    np.testing.assert_array_equal(post.optimum_at(0), post.optimum())


def test_a_singular_drift_prior_is_refused():
    w, y, g = _proxy_runs(np.random.default_rng(7), lambda s: np.zeros(2))
    with pytest.raises(SteplawInputError, match="drift_cov must be positive definite"):
        fit_bowl(w, y, g, 4, **PRIOR, scale_x=SCALE_X, drift_cov=np.diag([1.0, 1.0, 1.0, 0.0]))
    with pytest.raises(SteplawInputError, match="drift allowance must be positive sds"):
        drift_covariance(load_law("step-law"), allowance_sd=(0.0, 0.067))


def test_proposals_at_a_proxy_scale_aim_at_that_scales_bottom():
    from steplaw_opt import Scale
    from steplaw_opt.samplers import PlateauSampler
    from steplaw_opt.samplers._region import bottom_in_region

    target = Scale(N=1e9, D=1e11, seq_len=2048)
    gamma = np.array([[-0.06, 0.05], [0.04, -0.05]])
    study = _proxy_study(gamma, np.array([0.3, -0.2]), target)
    sampler = PlateauSampler(target, drift=True)
    hist = sampler.history(study)
    posterior = sampler.fit(hist)
    box = np.array([[-3.0, -3.0], [3.0, 3.0]])
    for group in range(len(hist.group_scales)):
        rng = np.random.default_rng(0)
        region, _ = sampler.trust_region(hist, posterior, box, rng, group)
        shift = posterior.shift(group)
        assert region.contains(posterior.optimum_at(group))[0]
        np.testing.assert_allclose(
            bottom_in_region(posterior, region, group), posterior.optimum_at(group)
        )
        if np.linalg.norm(shift) > 0.1:  # the region follows the scale's bottom
            target_region, _ = sampler.trust_region(hist, posterior, box, rng)
            moved = region.center - target_region.center
            np.testing.assert_allclose(moved, shift, atol=0.05)


# ------------------------------------------------------------- the drift prior's two widths
WIDE = dataclasses.replace(SYMMETRIC, **WIDE_DRIFT)


def _drift_errors(gamma: np.ndarray, seeds: int = 20) -> tuple[np.ndarray, np.ndarray, list]:
    """Errors of the target's bottom under the narrow and the wide drift prior, few noisy runs
    per proxy scale, and the wide fits' component weights."""
    w_target = np.array([0.2, 0.1])
    cov = drift_covariance(load_law("step-law"))
    narrow, wide, weights = [], [], []
    for seed in range(seeds):
        w, y, g = _proxy_runs(
            np.random.default_rng(seed), lambda s: w_target + gamma @ SCALE_X[s], n=10, noise=5e-4
        )
        a = fit_bowl(w, y, g, 4, **PRIOR, bowl=SYMMETRIC, scale_x=SCALE_X, drift_cov=cov)
        b = fit_bowl(w, y, g, 4, **PRIOR, bowl=WIDE, scale_x=SCALE_X, drift_cov=cov)
        narrow.append(np.linalg.norm(a.optimum() - w_target))
        wide.append(np.linalg.norm(b.optimum() - w_target))
        weights.append(b.width_weights)
    return np.array(narrow), np.array(wide), weights


def test_a_strong_trend_is_followed_better_through_the_wide_part_of_the_drift_prior():
    """A drift of 0.3 per ln unit (four narrow sds): the wide mixture follows it closer."""
    narrow, wide, weights = _drift_errors(np.array([[0.0, 0.3], [0.0, 0.25]]))
    assert np.median(wide) < 0.85 * np.median(narrow)
    assert np.mean(wide < narrow) > 0.6
    # (law width, drift width) pairs, the drift width fastest: the wide parts carry it
    assert np.median([w[1] + w[3] + w[5] for w in weights]) > 0.5


def test_a_weak_trend_is_the_same_under_either_drift_prior():
    narrow, wide, weights = _drift_errors(np.array([[-0.03, 0.02], [0.02, -0.03]]))
    np.testing.assert_allclose(np.median(wide), np.median(narrow), rtol=0.05)
    assert np.median([w[0] + w[2] + w[4] for w in weights]) > 0.5


def test_drift_widths_and_weights_are_checked():
    w, y, g = _proxy_runs(np.random.default_rng(10), lambda s: np.zeros(2))
    cov = drift_covariance(load_law("step-law"))
    bad = dataclasses.replace(WIDE, drift_weights=(1.0,))
    with pytest.raises(SteplawInputError, match="drift_widths and drift_weights"):
        fit_bowl(w, y, g, 4, **PRIOR, bowl=bad, scale_x=SCALE_X, drift_cov=cov)


def test_a_bowl_flatter_than_the_prior_widens_the_drift_prior_less():
    """The drift prior is mapped into the linear terms through the drift-free fit's curvature,
    not the prior's (here 20× steeper than the runs' bowl): Γ = −½A⁻¹G then strays fewer prior
    sds. Not a bound: with six noisy runs per scale a bowl flat in one direction still lets Γ
    go far (45 sds in one of these seeds, either way)."""
    from steplaw_opt import landscape

    steep = dataclasses.replace(SYMMETRIC, h_mean=SYMMETRIC.h_mean * 20, h_sd=SYMMETRIC.h_sd * 20)
    cov = drift_covariance(load_law("step-law"))
    sd = np.sqrt(np.diag(cov)).reshape(2, 2)
    old, new = [], []
    for seed in range(5):
        w, y, g = _proxy_runs(
            np.random.default_rng(20 + seed), lambda s: np.array([0.3, -0.2]), n=6, noise=1e-3
        )
        window = landscape._window(y, g, 4, steep)
        through_h0 = (SCALE_X, drift_prior_cov(steep.H0, cov), None)
        before = landscape._fit_mixture(
            w, y, g, 4, PRIOR["prior_mean"], PRIOR["prior_cov"], steep, None, window, through_h0
        )
        after = fit_bowl(
            w, y, g, 4, **PRIOR, bowl=steep, curvature_scale=1.0, scale_x=SCALE_X, drift_cov=cov
        )
        old.append(float(np.max(np.abs(before.drift()) / sd)))
        new.append(float(np.max(np.abs(after.drift()) / sd)))
    assert all(n <= o + 1e-9 for n, o in zip(new, old, strict=True))
    assert np.median(new) < 0.6 * np.median(old)


@pytest.mark.parametrize("slope", [0.3, 1.0, 3.0])
def test_nothing_extrapolates_outside_the_trust_region(slope):
    """Proxies whose bottoms follow a drift of up to 3 per ln unit (40 prior sds), so a straight
    extrapolation puts the target's bottom 3–27 ln units away: the refined optimum and the
    target's trust region stay inside the prior's 99 % region."""
    from steplaw_opt import Scale
    from steplaw_opt.samplers import PlateauSampler, refined_optimum

    target = Scale(N=1e9, D=1e11, seq_len=2048)
    gamma = np.array([[0.0, slope], [0.0, -slope]])
    # the proxies' bottoms near the law's point; the target's, extrapolated, far from it
    study = _proxy_study(gamma, -gamma @ SCALE_X[2], target)
    sampler = PlateauSampler(target)
    assert sampler.drift
    opt = refined_optimum(study, sampler=sampler)
    w = np.array([opt.u, opt.v])
    assert float(sampler.prior.mahalanobis2(w)[0]) <= sampler._radius2
    hist = sampler.history(study)
    box = np.array([[-np.inf, -np.inf], [np.inf, np.inf]])
    region, _ = sampler.trust_region(hist, sampler.fit(hist), box, np.random.default_rng(0))
    assert float(sampler.prior.mahalanobis2(region.center)[0]) <= sampler._radius2


def test_proxies_that_scatter_leave_the_target_near_the_law():
    # Bottoms scattered without a trend (sd 0.3, three times the released grids' own scale
    # scatter): the scatter terms (opt-in, BowlPrior.with_scale_scatter) take them, and the
    # drift does not extrapolate them.
    cov = drift_covariance(load_law("step-law"))
    pick = np.random.default_rng(0)
    drifting, pooled, no_scatter = [], [], []
    for seed in range(20):
        bottoms = {g: pick.normal(0.0, 0.3, 2) for g in (1, 2, 3)}
        w, y, g = _proxy_runs(np.random.default_rng(seed), bottoms.__getitem__, n=15, noise=5e-4)
        kw = {"bowl": SYMMETRIC, "scale_x": SCALE_X, "drift_cov": cov}
        post = fit_bowl(w, y, g, 4, **PRIOR, **kw, scatter_cov=SCATTER)
        plain = fit_bowl(w, y, g, 4, **PRIOR, bowl=SYMMETRIC)
        drifting.append(np.linalg.norm(post.optimum()))
        pooled.append(np.linalg.norm(plain.optimum()))
        no_scatter.append(np.linalg.norm(fit_bowl(w, y, g, 4, **PRIOR, **kw).optimum()))
    # measured: median 0.25 ln units from the law with the scatter terms, 0.30 pooled without
    # drift, 0.64 with the drift terms alone
    assert np.median(drifting) <= np.median(pooled)
    assert np.median(no_scatter) > 1.5 * np.median(drifting)


def _with_and_without_scatter(w, y, g):
    kw = {"bowl": SYMMETRIC, "scale_x": SCALE_X, "drift_cov": STEP_DRIFT}
    with_scatter = fit_bowl(w, y, g, 4, **PRIOR, **kw, scatter_cov=SCATTER)
    return with_scatter, fit_bowl(w, y, g, 4, **PRIOR, **kw)


def test_the_scatter_terms_leave_agreeing_proxies_their_move():
    # The same offset at every proxy scale: the evidence puts the scatter's weight on its
    # narrow part, and the target moves as far as without the scatter terms.
    w_star = np.array([-0.25, 0.15])
    w, y, g = _proxy_runs(np.random.default_rng(4), lambda s: w_star)
    with_scatter, without = _with_and_without_scatter(w, y, g)
    np.testing.assert_allclose(with_scatter.optimum(), without.optimum(), atol=0.01)
    np.testing.assert_allclose(with_scatter.optimum(), w_star, atol=0.03)
    assert with_scatter.scatter and len(with_scatter.mean) == len(without.mean) + 6


def test_a_scale_off_the_trend_is_read_as_its_own_scatter():
    # Two proxy scales agree on the offset; the third sits 0.35 off it. With the scatter terms
    # its own offset takes most of that (and shift() reports it), and the target follows the
    # two that agree.
    w_star = np.array([0.2, -0.1])
    odd = w_star + np.array([0.35, 0.0])
    w, y, g = _proxy_runs(np.random.default_rng(8), lambda s: odd if s == 3 else w_star)
    post, without = _with_and_without_scatter(w, y, g)
    assert post.scatter_of(3)[0] > 0.15
    assert np.all(post.scatter_of(0) == 0)  # the target's bottom is w* itself
    np.testing.assert_allclose(post.optimum_at(3), odd, atol=0.05)
    assert np.linalg.norm(post.optimum() - w_star) < np.linalg.norm(without.optimum() - w_star)


def test_scatter_cov_is_checked_and_needs_the_drift_terms():
    w, y, g = _proxy_runs(np.random.default_rng(1), lambda s: np.zeros(2))
    cov = drift_covariance(load_law("step-law"))
    with pytest.raises(SteplawInputError, match="needs the drift terms"):
        fit_bowl(w, y, g, 4, **PRIOR, scatter_cov=np.eye(2) * 0.01)
    with pytest.raises(SteplawInputError, match="positive definite 2×2"):
        fit_bowl(w, y, g, 4, **PRIOR, scale_x=SCALE_X, drift_cov=cov, scatter_cov=-np.eye(2))
    with pytest.raises(SteplawInputError, match="scatter_widths"):
        fit_bowl(
            w, y, g, 4, **PRIOR, scale_x=SCALE_X, drift_cov=cov,
            bowl=dataclasses.replace(SYMMETRIC, scatter_widths=(1.0, -1.0)),
        )  # fmt: skip


def test_features_append_one_scatter_pair_per_scale_off_the_target():
    w = np.array([[0.5, -0.25], [1.0, 2.0], [0.1, 0.2]])
    phi = features(w, np.array([1, 3, 0]), 4, scale_x=SCALE_X, scatter=True)
    assert phi.shape == (3, 4 + 5 + 4 + 6)  # groups 1, 2, 3 scatter; the target (0) does not
    np.testing.assert_allclose(phi[0, -6:], [0.5, -0.25, 0, 0, 0, 0])
    np.testing.assert_allclose(phi[1, -6:], [0, 0, 0, 0, 1.0, 2.0])
    np.testing.assert_allclose(phi[2, -6:], 0.0)
