"""PlateauSampler behaviour: law point first, distributions, failures, maximise, workers,
resume, per-trial scales, beliefs, and the refined optimum."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest

from steplaw_opt import Scale, SteplawInputError, load_law
from steplaw_opt.samplers import PlateauSampler, refined_optimum
from steplaw_opt.samplers._plateau import ATTR_BELIEF, ATTR_PROPOSAL

optuna.logging.set_verbosity(optuna.logging.WARNING)
TARGET = Scale(N=4.29e8, D=4e10)
LAW = load_law("step-law")
LR0 = LAW.lr_at(TARGET)
B0 = LAW.batch_tokens_at(TARGET) / 2048
W_TRUE = (0.3, -0.2)  # the synthetic optimum in (u, v)


def bowl_loss(lr: float, batch: float, w_true: tuple[float, float] = W_TRUE) -> float:
    u, v = math.log(lr / LR0) - w_true[0], math.log(batch / B0) - w_true[1]
    return 2.5 * math.exp(0.0064 * u * u - 0.0052 * u * v + 0.006 * v * v)


def objective(trial: optuna.Trial) -> float:
    lr = trial.suggest_float("lr", 2.44e-4, 2.21e-2, log=True)
    batch = trial.suggest_float("batch_size", 16, 2048, log=True)
    return bowl_loss(lr, batch)


def test_first_trial_is_the_law_point():
    study = optuna.create_study(sampler=PlateauSampler(TARGET, seed=0))
    study.optimize(objective, n_trials=1)
    t = study.trials[0]
    assert t.params["lr"] == pytest.approx(LR0, rel=1e-9)
    assert t.params["batch_size"] == pytest.approx(B0, rel=1e-9)
    assert t.system_attrs[ATTR_PROPOSAL]["kind"] == "law"


def test_law_point_is_clipped_to_the_bounds():
    study = optuna.create_study(sampler=PlateauSampler(TARGET, seed=0))
    trial = study.ask()
    lr = trial.suggest_float("lr", 1e-2, 1e-1, log=True)  # the law's lr (2.2e-3) is below
    batch = trial.suggest_int("batch_size", 16, 64)  # the law's batch (157) is above
    assert lr == pytest.approx(1e-2) and batch == 64


@pytest.mark.parametrize(
    "suggest",
    [
        lambda t: (
            t.suggest_float("lr", 1e-4, 3e-2, log=True),
            t.suggest_int("batch_size", 16, 2048, log=True),
        ),
        lambda t: (
            t.suggest_float("lr", 1e-4, 3e-2),
            t.suggest_int("batch_size", 16, 2048, step=16),
        ),
        lambda t: (
            t.suggest_float("lr", 1e-4, 3e-2, step=1e-4),
            t.suggest_float("batch_size", 16, 2048),
        ),
    ],
    ids=["log-int", "linear-stepped-int", "stepped-float"],
)
def test_int_float_and_log_distributions(suggest):
    study = optuna.create_study(sampler=PlateauSampler(TARGET, seed=1))
    study.optimize(lambda t: bowl_loss(*suggest(t)), n_trials=12)
    for t in study.trials:
        dists = t.distributions
        for name in ("lr", "batch_size"):
            assert dists[name]._contains(dists[name].to_internal_repr(t.params[name]))
        if isinstance(dists["batch_size"], optuna.distributions.IntDistribution):
            assert isinstance(t.params["batch_size"], int)
    assert study.best_value < bowl_loss(LR0, B0)


def test_finds_the_optimum_of_a_bowl_and_refines_it():
    sampler = PlateauSampler(TARGET, seed=0)
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=15)
    opt = refined_optimum(study, sampler=sampler)
    assert math.log(opt.lr / LR0) == pytest.approx(W_TRUE[0], abs=0.1)
    assert math.log(opt.batch_sequences / B0) == pytest.approx(W_TRUE[1], abs=0.1)
    assert opt.lr_interval_95[0] < opt.lr < opt.lr_interval_95[1]
    assert opt.plateau_lr[0] < opt.lr < opt.plateau_lr[1]
    assert opt.predicted_loss == pytest.approx(2.5, rel=2e-3)
    assert opt.batch_tokens == pytest.approx(opt.batch_sequences * 2048)
    assert opt.n_observations == 15


def test_the_rounded_batch_is_whole_and_its_cost_is_the_bowls(monkeypatch):
    sampler = PlateauSampler(TARGET, seed=0)
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=15)
    for rounding in ("none", "pow2", 64):
        opt = refined_optimum(study, sampler=sampler, round_batch=rounding)
        assert opt.batch_sequences_rounded == int(opt.batch_sequences_rounded) >= 1
        # the cost of moving the batch by ln(rounded / batch) along the fitted bowl's v axis
        dv = math.log(opt.batch_sequences_rounded / opt.batch_sequences)
        posterior = sampler.fit(sampler.history(study))
        assert opt.rounding_cost == pytest.approx(math.expm1(posterior.hessian[1, 1] * dv**2))
    coarse = refined_optimum(study, sampler=sampler, round_batch=4096)
    assert coarse.rounding_cost > 0.0001
    assert any(f"about {coarse.rounding_cost:.2%} in loss" in n for n in coarse.notes)
    # inside its interval, a rounding that costs more than the note's threshold says so
    import steplaw_opt.samplers._refined as refined_module

    monkeypatch.setattr(refined_module, "ROUNDING_NOTE", 1e-6)
    near = refined_optimum(study, sampler=sampler, round_batch=100)
    assert near.batch_sequences_rounded == 300
    assert any(f"costs about {near.rounding_cost:.2%} in loss" in n for n in near.notes)


def test_maximise_study_flips_the_sign():
    sampler = PlateauSampler(TARGET, seed=0)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    study.optimize(lambda t: -objective(t), n_trials=12)
    best = study.best_trial.params
    assert math.log(best["lr"] / LR0) == pytest.approx(W_TRUE[0], abs=0.25)
    assert refined_optimum(study, sampler=sampler).predicted_loss is None


def test_failures_are_walls_not_crashes():
    wall = LR0 * math.exp(0.2)  # every run above this lr diverges

    def diverging(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 2.44e-4, 2.21e-2, log=True)
        batch = trial.suggest_float("batch_size", 16, 2048, log=True)
        if lr > wall:
            raise RuntimeError("diverged")
        return bowl_loss(lr, batch)

    study = optuna.create_study(sampler=PlateauSampler(TARGET, seed=3))
    study.optimize(diverging, n_trials=15, catch=(RuntimeError,))
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    first_fail = min(t.number for t in failed) if failed else 99
    later = [t for t in study.trials if t.number > first_fail]
    # After a failure above the best lr, nothing at or above that failure's lr (same batch
    # neighbourhood) is proposed again.
    for f in failed:
        for t in later:
            if (
                t.number > f.number
                and abs(math.log(t.params["batch_size"] / f.params["batch_size"])) < 1
            ):
                assert t.params["lr"] < f.params["lr"] * math.exp(-0.1)
    assert len(failed) <= 3


def test_nan_losses_and_all_failed_histories():
    study = optuna.create_study(sampler=PlateauSampler(TARGET, seed=4))
    study.optimize(lambda t: (objective(t), float("nan"))[1], n_trials=6)
    assert all(t.state == optuna.trial.TrialState.FAIL for t in study.trials)
    points = {(t.params["lr"], t.params["batch_size"]) for t in study.trials}
    assert len(points) == 6  # still exploring, never repeating
    kinds = [t.system_attrs[ATTR_PROPOSAL]["kind"] for t in study.trials]
    assert kinds[0] == "law" and "prior" in kinds


def test_never_proposes_what_another_worker_is_running():
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, sampler=PlateauSampler(TARGET, seed=5))
    study.optimize(objective, n_trials=3)
    running = study.ask()  # worker A holds this trial
    a = (
        running.suggest_float("lr", 2.44e-4, 2.21e-2, log=True),
        running.suggest_float("batch_size", 16, 2048, log=True),
    )
    other = optuna.load_study(
        study_name=study.study_name, storage=storage, sampler=PlateauSampler(TARGET, seed=6)
    )
    t = other.ask()  # worker B, its own sampler instance
    b = (
        t.suggest_float("lr", 2.44e-4, 2.21e-2, log=True),
        t.suggest_float("batch_size", 16, 2048, log=True),
    )
    gap = max(abs(math.log(a[0] / b[0])), abs(math.log(a[1] / b[1])))
    assert gap >= 0.3 - 1e-9  # the coarse resolution in the first trials


def test_resumes_from_storage_without_repeating(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=url, study_name="s", sampler=PlateauSampler(TARGET, seed=7))
    study.optimize(objective, n_trials=4)
    resumed = optuna.load_study(storage=url, study_name="s", sampler=PlateauSampler(TARGET, seed=7))
    resumed.optimize(objective, n_trials=4)
    trials = resumed.trials
    assert len(trials) == 8
    assert [t.system_attrs[ATTR_PROPOSAL]["kind"] for t in trials].count("law") == 1
    pts = np.log([[t.params["lr"], t.params["batch_size"]] for t in trials])
    d = np.abs(pts[:, None] - pts[None]).max(-1) + np.eye(8) * 9
    assert d.min() >= 0.15 - 1e-9


def test_reproducible_with_a_seed():
    runs = []
    for _ in range(2):
        study = optuna.create_study(sampler=PlateauSampler(TARGET, seed=11))
        study.optimize(objective, n_trials=6)
        runs.append([tuple(t.params.values()) for t in study.trials])
    assert runs[0] == runs[1]


def test_trial_scale_from_user_attrs_pools_proxy_runs():
    proxy_d = 4e9

    def proxied(trial: optuna.Trial) -> float:
        if trial.number % 2 == 0:
            trial.set_user_attr("steplaw.D", proxy_d)
        return objective(trial)

    sampler = PlateauSampler(TARGET, seed=8)
    study = optuna.create_study(sampler=sampler)
    study.optimize(proxied, n_trials=2)
    proxy = study.trials[0]
    assert proxy.params["lr"] == pytest.approx(LAW.lr_at(TARGET.with_tokens(proxy_d)), rel=1e-9)
    hist = sampler.history(study)
    assert len(hist.group_scales) == 2


def test_first_run_at_a_new_scale_goes_to_the_pooled_optimum():
    # Eight proxy runs at D/16 map the bowl; the first target run has no incumbent at its own
    # scale, so it goes where the pooled model puts the optimum — not to an exploratory point —
    # and a (u, v) already run at the proxy scale is not a repeat at the target.
    proxy_d = TARGET.D / 16

    def proxied(trial: optuna.Trial) -> float:
        if trial.number < 8:
            trial.set_user_attr("steplaw.D", proxy_d)
        scale = TARGET.with_tokens(proxy_d) if trial.number < 8 else TARGET
        lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
        batch = trial.suggest_float("batch_size", 4, 8192, log=True)
        u = math.log(lr / LAW.lr_at(scale)) - W_TRUE[0]
        v = math.log(batch * 2048 / LAW.batch_tokens_at(scale)) - W_TRUE[1]
        return 2.5 * math.exp(0.0064 * u * u - 0.0052 * u * v + 0.006 * v * v)

    sampler = PlateauSampler(TARGET, seed=3)
    study = optuna.create_study(sampler=sampler)
    study.optimize(proxied, n_trials=8)
    assert study.trials[0].system_attrs[ATTR_PROPOSAL]["kind"] == "law"
    before = sampler.fit(sampler.history(study)).optimum()
    study.optimize(proxied, n_trials=1)
    first = study.trials[-1].system_attrs[ATTR_PROPOSAL]
    assert first["kind"] == "optimum"
    assert (first["u"], first["v"]) == pytest.approx(tuple(before), abs=1e-9)
    # The pooled optimum moved towards the proxies' (0.3, -0.2), away from the law's point.
    assert first["u"] > 0.1 and first["v"] < -0.05
    study.optimize(proxied, n_trials=1)
    second = study.trials[-1].system_attrs[ATTR_PROPOSAL]
    assert second["kind"] != "optimum"


def test_the_first_run_at_a_new_scale_does_not_go_behind_a_wall():
    # Proxy runs whose loss keeps falling towards high lr, then fail there (a divergence edge):
    # the pooled bowl's bottom lies beyond the failures, and the target's opening run went
    # there, into the wall, before being clipped to the bound (the nanoGPT recipe's lr 1.0).
    proxy_d = TARGET.D / 16
    edge = math.log(LAW.lr_at(TARGET.with_tokens(proxy_d))) + 1.0

    def cliff(trial: optuna.Trial) -> float:
        if trial.number < 8:
            trial.set_user_attr("steplaw.D", proxy_d)
        lr = trial.suggest_float("lr", 1e-5, 1.0, log=True)
        batch = trial.suggest_float("batch_size", 4, 8192, log=True)
        if trial.number < 8 and math.log(lr) > edge:
            raise RuntimeError("diverged")
        return 2.5 * math.exp(-0.01 * math.log(lr / 1e-5) + 0.006 * math.log(batch / 64) ** 2)

    sampler = PlateauSampler(TARGET, seed=0)
    study = optuna.create_study(sampler=sampler)
    study.optimize(cliff, n_trials=8, catch=(RuntimeError,))
    hist = sampler.history(study)
    assert len(hist.failed), "the fixture must fail above its edge"
    study.optimize(cliff, n_trials=1, catch=(RuntimeError,))
    opening = study.trials[-1].system_attrs[ATTR_PROPOSAL]
    w = np.array([[opening["u"], opening["v"]]])
    assert not sampler._walled(w, sampler.history(study, exclude=study.trials[-1].number))[0]


def test_a_point_run_at_another_scale_is_not_a_repeat():
    def proxied(trial: optuna.Trial) -> float:
        if trial.number == 0:
            trial.set_user_attr("steplaw.D", TARGET.D / 8)
        return objective(trial)

    study = optuna.create_study(sampler=PlateauSampler(TARGET, seed=4))
    study.optimize(proxied, n_trials=2)
    kinds = [t.system_attrs[ATTR_PROPOSAL]["kind"] for t in study.trials]
    # Both open their own scale: the law's point at the proxy, the pooled optimum (the law's
    # point moved by one run) at the target.
    assert kinds == ["law", "optimum"]


def test_beliefs_are_written_to_trials():
    study = optuna.create_study(sampler=PlateauSampler(TARGET, seed=9))
    study.optimize(objective, n_trials=4)
    belief = study.trials[-1].system_attrs[ATTR_BELIEF]
    assert {"prior_mean", "prior_sd", "posterior_optimum", "trust_center"} <= set(belief)


def test_other_parameters_go_to_the_independent_sampler():
    def with_extra(trial: optuna.Trial) -> float:
        trial.suggest_categorical("optimizer", ["adamw", "lion"])
        trial.suggest_float("warmup", 0.0, 0.1)
        return objective(trial)

    study = optuna.create_study(sampler=PlateauSampler(TARGET, seed=10))
    study.optimize(with_extra, n_trials=5)
    assert {t.params["optimizer"] for t in study.trials} <= {"adamw", "lion"}


def test_refined_optimum_without_trials_is_the_law_with_quantised_batch():
    sampler = PlateauSampler(TARGET, seed=0)
    study = optuna.create_study(sampler=sampler)
    opt = refined_optimum(study, sampler=sampler, round_batch="pow2")
    assert opt.lr == pytest.approx(LR0) and opt.n_observations == 0
    assert opt.batch_sequences == pytest.approx(B0)  # 320.5 sequences
    assert opt.batch_sequences_rounded == 256.0  # nearest power of two in log space
    with pytest.raises(SteplawInputError, match="PlateauSampler"):
        refined_optimum(optuna.create_study())


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"lr_param": "x", "batch_param": "x"}, "both 'x'"),
        ({"acquisition": "ucb"}, "acquisition"),
        ({"resolution": -1}, "resolution"),
        ({"n_coarse": -2}, "n_coarse"),
        ({"batch_unit": "bytes"}, "batch_unit"),
        ({"law": "nope"}, "unknown law"),
    ],
)
def test_bad_arguments(kwargs, needle):
    with pytest.raises(SteplawInputError, match=needle):
        PlateauSampler(TARGET, **kwargs)


def test_multi_objective_is_refused():
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=PlateauSampler(TARGET))
    with pytest.raises(ValueError):
        study.optimize(lambda t: (objective(t), 1.0), n_trials=1)


def test_no_repeat_after_the_batch_is_rounded_to_an_integer():
    # Small integer batches: a candidate 0.2 (ln) from a run can round onto the same batch.
    # The repeat check sees the values that would really run.
    def small(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 2.44e-4, 2.21e-2, log=True)
        batch = trial.suggest_int("batch_size", 2, 24, log=True)
        return bowl_loss(lr, batch * 60.0)

    study = optuna.create_study(sampler=PlateauSampler(TARGET, seed=5))
    study.optimize(small, n_trials=30)
    pts = [(math.log(t.params["lr"]), math.log(t.params["batch_size"])) for t in study.trials]
    close = [
        (i, j)
        for i in range(len(pts))
        for j in range(i)
        if abs(pts[i][0] - pts[j][0]) < 0.15 and abs(pts[i][1] - pts[j][1]) < 0.15
    ]
    assert close == []


def test_the_mapping_lattice_trusts_the_law_width_and_the_mixture_decides_after():
    import dataclasses

    from steplaw_opt.landscape import BowlPrior

    far = (0.9, 0.7)  # a law that is far off: the mixture's wider widths matter

    def far_objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 2.44e-4, 2.21e-2, log=True)
        batch = trial.suggest_float("batch_size", 16, 2048, log=True)
        return bowl_loss(lr, batch, far)

    single = dataclasses.replace(BowlPrior.default(), law_widths=(1.0,), law_weights=(1.0,))
    runs = {}
    for name, bowl in (("mixture", BowlPrior.default()), ("single", single)):
        sampler = PlateauSampler(TARGET, seed=4, bowl_prior=bowl)
        study = optuna.create_study(sampler=sampler)
        study.optimize(far_objective, n_trials=14)
        runs[name] = (study, sampler)
    params = {n: [tuple(t.params.values()) for t in s.trials] for n, (s, _) in runs.items()}
    assert len(BowlPrior.default().law_widths) > 1
    # The first n_coarse proposals (the lattice around the law) are the same with either prior.
    n_coarse = sampler._n_coarse
    assert params["mixture"][:n_coarse] == params["single"][:n_coarse]
    # After the lattice (and for the refined optimum) the mixture decides: runs this far from
    # the law take the weight off the law's own width.
    study, sampler = runs["mixture"]
    posterior = sampler.fit(sampler.history(study))
    assert posterior.width_weights[0] < 0.5 and len(posterior.width_weights) == 3
    assert sampler.fit(sampler.history(study), law_width_only=True).width_weights == (1.0,)


@pytest.mark.parametrize(
    ("name", "hint"),
    [("bs", "batch_param='bs'"), ("learning_rate", "lr_param='learning_rate'"), ("dropout", None)],
)
def test_a_parameter_name_the_sampler_does_not_tune_is_warned_about_once(name, hint):
    sampler = PlateauSampler(TARGET, seed=0)
    study = optuna.create_study(sampler=sampler)

    def objective(trial: optuna.Trial) -> float:
        return trial.suggest_float(name, 0.01, 100.0, log=True)

    with pytest.warns(
        UserWarning, match=f"parameter '{name}' is sampled by the independent"
    ) as rec:
        study.optimize(objective, n_trials=3)
    ours = [w for w in rec if "independent sampler" in str(w.message)]
    assert len(ours) == 1  # once, not every trial
    if hint:
        assert hint in str(ours[0].message)


def test_no_warning_when_the_names_match():
    import warnings

    sampler = PlateauSampler(TARGET, seed=0)
    study = optuna.create_study(sampler=sampler)

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-4, 3e-2, log=True)
        batch = trial.suggest_int("batch_size", 16, 2048, log=True)
        trial.suggest_float("dropout", 0.0, 0.3)
        return 2.5 + lr + batch * 1e-6

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        study.optimize(objective, n_trials=3)


def test_a_recommendation_on_a_search_bound_says_so():
    lr0 = LAW.lr_at(TARGET)
    far = (1.5, 0.0)  # the optimum 4.5x above the law's lr, beyond the upper bound below

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", lr0 / 3, lr0 * 1.5, log=True)
        batch = trial.suggest_int("batch_size", 16, 2048, log=True)
        return bowl_loss(lr, batch, far)

    sampler = PlateauSampler(TARGET, seed=0)
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=12)
    opt = refined_optimum(study, sampler=sampler)
    assert opt.lr == pytest.approx(lr0 * 1.5, rel=0.06)
    assert any("learning rate sits on its upper search bound" in n for n in opt.notes), opt.notes
    assert not any("batch sits" in n for n in opt.notes)
    # a recommendation inside the bounds has nothing to say about them
    inside = optuna.create_study(sampler=PlateauSampler(TARGET, seed=0))
    inside.optimize(
        lambda t: bowl_loss(
            t.suggest_float("lr", 1e-4, 3e-2, log=True),
            t.suggest_int("batch_size", 16, 2048, log=True),
        ),
        n_trials=8,
    )
    assert refined_optimum(inside, sampler=inside.sampler).notes == ()


def test_the_design_step_never_probes_far_up_a_wall(monkeypatch):
    # Even when the design gain favours the farthest candidate, the probe stays within the
    # narrow cut of the best run (as predicted by the bowl).
    from steplaw_opt.landscape import BowlPosterior

    def far_is_best(self, w, group, noise_sd, weight):
        return np.linalg.norm(w - self.optimum(), axis=1)

    monkeypatch.setattr(BowlPosterior, "design_gain", far_is_best)
    sampler = PlateauSampler(TARGET, seed=1)
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=9)
    design = [t for t in study.trials if t.system_attrs[ATTR_PROPOSAL]["kind"] == "design"]
    assert design
    for t in design:
        partial = optuna.create_study()
        partial.add_trials([s for s in study.trials if s.number < t.number])
        hist = sampler.history(partial)
        post = sampler.fit(hist)
        p = t.system_attrs[ATTR_PROPOSAL]
        mean, _ = post.predict(np.array([[p["u"], p["v"]]]), 0)
        assert mean[0] - hist.y.min() <= sampler._bowl.cut + 1e-9


def test_a_run_made_at_other_values_than_proposed_is_placed_where_it_ran():
    # A trainer that rounds the batch to a multiple of 64 and records the batch it ran with:
    # the model places each run where its loss was measured, and still finds the optimum.
    def rounding_objective(trial: optuna.Trial, record: bool) -> float:
        lr = trial.suggest_float("lr", 2.44e-4, 2.21e-2, log=True)
        batch = trial.suggest_float("batch_size", 16, 2048, log=True)
        ran = max(64.0, 64.0 * round(batch / 64.0))
        if record:
            trial.set_user_attr("steplaw.ran_with", {"batch_size": ran})
        return bowl_loss(lr, ran)

    for record in (True, False):
        sampler = PlateauSampler(TARGET, seed=0)
        study = optuna.create_study(sampler=sampler)
        study.optimize(lambda t, r=record: rounding_objective(t, r), n_trials=15)
        placed = np.exp(sampler.history(study).w[:, 1]) * B0
        proposed = [t.params["batch_size"] for t in study.trials]
        ran = [t.user_attrs.get("steplaw.ran_with", {}).get("batch_size") for t in study.trials]
        assert placed == pytest.approx(ran if record else proposed)
        if record:
            opt = refined_optimum(study, sampler=sampler)
            assert math.log(opt.batch_sequences / B0) == pytest.approx(W_TRUE[1], abs=0.1)


@pytest.mark.parametrize("bad", [{"batch_size": -3}, {"batch_size": "64"}, {"batch_size": True}, 7])
def test_a_recorded_value_that_is_not_a_positive_number_is_ignored(bad):
    from steplaw_opt._records import ran_with

    trial = optuna.trial.create_trial(
        params={"lr": 1e-3, "batch_size": 100.0},
        distributions={
            "lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
            "batch_size": optuna.distributions.FloatDistribution(16, 2048, log=True),
        },
        value=2.5,
        user_attrs={"steplaw.ran_with": bad},
    )
    assert ran_with(trial, "lr", "batch_size") == (1e-3, 100.0)


def test_the_intervals_add_the_bowls_misfit_and_use_the_measured_noise():
    import dataclasses

    from steplaw_opt.landscape import BowlPrior

    shipped = BowlPrior.default()
    assert shipped.measured_noise_sd is not None and shipped.measured_noise_sd < shipped.noise_sd
    assert all(m > 0 for m in shipped.misfit_sd)

    def widths(bowl: BowlPrior) -> tuple[float, float]:
        sampler = PlateauSampler(TARGET, seed=0, bowl_prior=bowl)
        study = optuna.create_study(sampler=sampler)
        study.optimize(objective, n_trials=12)
        opt = refined_optimum(study, sampler=sampler)
        return (
            math.log(opt.lr_interval_95[1] / opt.lr_interval_95[0]),
            math.log(opt.batch_tokens_interval_95[1] / opt.batch_tokens_interval_95[0]),
        )

    bare = dataclasses.replace(shipped, misfit_sd=(0.0, 0.0))
    headroom = dataclasses.replace(bare, measured_noise_sd=None)  # intervals at the fit's noise
    with_misfit, measured, at_headroom = widths(shipped), widths(bare), widths(headroom)
    for axis in (0, 1):
        assert measured[axis] < at_headroom[axis]
        # the misfit adds in quadrature: at least its own 95 % width, more than the bare one
        assert with_misfit[axis] > max(measured[axis], 2 * 1.9 * shipped.misfit_sd[axis])


def test_a_proposal_whose_run_was_made_elsewhere_is_not_proposed_again():
    # A trainer that cannot move off one lr grid point: where the runs were made repeats, but
    # the sampler must not propose the same values again either (it would run them again).
    def pinned(trial: optuna.Trial) -> float:
        trial.suggest_float("lr", 2.44e-4, 2.21e-2, log=True)
        batch = trial.suggest_float("batch_size", 16, 2048, log=True)
        trial.set_user_attr("steplaw.ran_with", {"lr": LR0})
        return bowl_loss(LR0, batch)

    sampler = PlateauSampler(TARGET, seed=0)
    study = optuna.create_study(sampler=sampler)
    study.optimize(pinned, n_trials=12)
    w = np.array(
        [
            (math.log(t.params["lr"] / LR0), math.log(t.params["batch_size"] / B0))
            for t in study.trials
        ]
    )
    close = (np.abs(w[:, None, 0] - w[None, :, 0]) < 0.3) & (
        np.abs(w[:, None, 1] - w[None, :, 1]) < 0.3
    )
    np.fill_diagonal(close, False)
    assert not close.any(), "a proposal repeats an earlier one"
