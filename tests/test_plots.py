"""The study's plots are drawn from its data: a marker per trial, the failures, the ellipses,
the refined optimum; PNGs are written and non-empty (no pixel comparisons)."""

from __future__ import annotations

import math

import optuna
import pytest

from steplaw_opt.objectives import CallableObjective, TrialFailed
from steplaw_opt.plots import convergence_plot, landscape_plot, uv_plot, write_plots
from steplaw_opt.samplers import PlateauSampler, refined_optimum
from steplaw_opt.tune import tune
from tests.test_tracking import LAW, TARGET, bowl


def by_gid(fig, name):
    return [c for ax in fig.axes for c in ax.collections if c.get_gid() == name]


@pytest.fixture(scope="module")
def study():
    """A multi-scale study (in memory) in which the highest learning rates fail."""

    def sometimes(lr, batch_size, scale):
        if lr > LAW.lr_at(scale) * 1.6:
            raise TrialFailed("diverged")
        return bowl(lr, batch_size, scale)

    seen = {}
    tune(TARGET, CallableObjective(sometimes), storage=":memory:", seed=3, budget=1.5,
         callbacks=[lambda s, t: seen.update(study=s)])  # fmt: skip
    return seen["study"]


def test_landscape_has_a_marker_per_trial(study):
    plot = landscape_plot(study)
    trials = study.trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed, "the fixture should hold a failed trial"
    assert [p["number"] for p in plot.data["trials"]] == [t.number for t in trials]
    (observed,) = by_gid(plot.figure, "trials")
    assert len(observed.get_offsets()) == plot.data["n_observed"] == len(complete)
    (crosses,) = by_gid(plot.figure, "failed")
    assert len(crosses.get_offsets()) == len(failed)
    labels = [t.get_text() for ax in plot.figure.axes for t in ax.texts]
    assert all(str(t.number) in labels for t in trials)  # numbered in order
    refined = refined_optimum(study, sampler=study.sampler, n_draws=500)
    assert plot.data["refined"] == pytest.approx((refined.lr, refined.batch_tokens))
    assert plot.data["law"] == pytest.approx((LAW.lr_at(TARGET), LAW.batch_tokens_at(TARGET)))
    ellipse = plot.data["prior_ellipse"]
    assert ellipse[:, 0].min() < plot.data["law"][0] < ellipse[:, 0].max()


def test_proxy_runs_sit_at_their_law_normalised_place_at_the_target(study):
    plot = landscape_plot(study)
    t = next(t for t in study.trials if t.user_attrs["steplaw.D"] != TARGET.D and t.params)
    point = next(p for p in plot.data["trials"] if p["number"] == t.number)
    scale = TARGET.with_tokens(t.user_attrs["steplaw.D"])
    u = math.log(t.params["lr"] / LAW.lr_at(scale))
    assert point["lr"] == pytest.approx(LAW.lr_at(TARGET) * math.exp(u))


def test_convergence_series_follows_the_trials(study):
    plot = convergence_plot(study)
    finished = [t for t in study.trials if t.state.is_finished()]
    assert plot.data["trial"] == [t.number for t in finished]
    assert plot.data["compute"] == sorted(plot.data["compute"])
    rec, lo, hi = (plot.data[k] for k in ("recommended", "recommended_lo", "recommended_hi"))
    # each recommendation's expected gap, by the model of its time, is a band, never zero
    assert all(0 < a <= m <= b for a, m, b in zip(lo, rec, hi, strict=True))
    assert rec[-1] < rec[0]  # the runs narrow what the recommendation may cost
    observed = [g for g in plot.data["observed"] if math.isfinite(g)]
    complete = [t for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(observed) == len(complete) and min(observed) == 0.0 and min(observed) >= 0


def test_uv_plot_only_for_several_scales(study):
    plot = uv_plot(study)
    assert plot is not None
    counts = plot.data["per_scale"]
    assert len(counts) == 3 and sum(counts.values()) == len(study.trials)
    single = optuna.create_study(sampler=PlateauSampler(TARGET, seed=0))
    single.optimize(
        lambda t: bowl(
            t.suggest_float("lr", 1e-4, 3e-2, log=True),
            t.suggest_int("batch_size", 16, 2048, log=True),
            TARGET,
        ),
        n_trials=3,
    )
    assert uv_plot(single) is None
    assert len(by_gid(landscape_plot(single).figure, "trials")[0].get_offsets()) == 3


def test_write_plots_writes_non_empty_pngs(study, tmp_path):
    paths = write_plots(study, tmp_path / "plots")
    assert sorted(p.name for p in paths) == ["convergence.png", "landscape.png", "uv.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000


def test_a_study_with_no_finished_trial_still_draws(tmp_path):
    empty = optuna.create_study(sampler=PlateauSampler(TARGET, seed=0))
    plot = landscape_plot(empty)
    assert plot.data["trials"] == [] and plot.data["n_observed"] == 0


def test_landscape_is_legible(study):
    """Zoomed to the runs and regions, prior and trust region drawn apart, numbers clear."""
    plot = landscape_plot(study)
    fig = plot.figure
    ax = fig.axes[0]
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    for p in plot.data["trials"]:
        assert x0 <= p["lr"] <= x1 and y0 <= p["batch_tokens"] <= y1
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    prior, trust = lines["law's prior (99 %)"], lines["trust region"]
    assert prior.get_color() != trust.get_color()
    assert prior._dash_pattern != trust._dash_pattern  # dotted against dashed
    fig.canvas.draw()
    boxes = [t.get_window_extent() for t in ax.texts if t.get_text().isdigit()]
    overlaps = sum(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    assert len(boxes) == len(study.trials) and overlaps <= 1


def test_landscape_tick_labels_do_not_run_into_each_other(study):
    plot = landscape_plot(study)
    fig = plot.figure
    ax = fig.axes[0]
    fig.canvas.draw()
    for axis in (ax.xaxis, ax.yaxis):
        view = sorted(axis.get_view_interval())
        labels = [
            t
            for minor in (False, True)
            for t, x in zip(
                axis.get_ticklabels(minor=minor),
                axis.get_minorticklocs() if minor else axis.get_majorticklocs(),
                strict=True,
            )
            if t.get_text() and view[0] <= x <= view[1]
        ]
        boxes = [t.get_window_extent() for t in labels]
        assert boxes, "an axis without a single label"
        assert not [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :] if a.overlaps(b)]


def test_the_runs_are_drawn_above_the_refined_optimum(study):
    fig = landscape_plot(study).figure
    ax = fig.axes[0]
    (trials,) = by_gid(fig, "trials")
    star = [line for line in ax.get_lines() if line.get_marker() == "*"]
    assert star and trials.get_zorder() > max(line.get_zorder() for line in star)


def _log_axis(lo: float, hi: float):
    """A drawn figure's axes with a log x axis from ``lo`` to ``hi``, minor labels sparse."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from steplaw_opt.plots._study import _sparse_minor_labels

    fig = Figure(figsize=(7.6, 5.8))
    ax = fig.add_subplot()
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    _sparse_minor_labels(ax)
    fig.canvas.draw()
    return ax


@pytest.mark.parametrize(("lo", "hi"), [(2.5e-3, 8e-3), (1.2e-3, 9e-3), (3e5, 4e6)])
def test_minor_tick_labels_on_a_narrow_log_axis_are_sparse_and_clear(lo, hi):
    ax = _log_axis(lo, hi)
    locs = ax.xaxis.get_minorticklocs()
    texts = [
        t
        for t, x in zip(ax.xaxis.get_ticklabels(minor=True), locs, strict=True)
        if t.get_text() and lo <= x <= hi
    ]
    assert texts and all(t.get_text()[1] in "25" for t in texts)  # "$2\times…", "$5\times…"
    boxes = [t.get_window_extent() for t in texts]
    assert not [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :] if a.overlaps(b)]


def test_a_log_axis_over_decades_keeps_only_the_decades_labels():
    ax = _log_axis(1e-4, 0.5)
    assert not [t.get_text() for t in ax.xaxis.get_ticklabels(minor=True) if t.get_text()]
