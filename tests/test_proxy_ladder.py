"""Proxy runs at cheaper settings of any N and D: an objective's allowed scales, the plan built
from them and stored in the study, and the shifted replay the proxy bench scores them on."""

from __future__ import annotations

import json
import math

import optuna
import pytest

from steplaw_opt import Scale, SteplawInputError
from steplaw_opt._records import ATTR_CONFIG
from steplaw_opt.objectives import GridReplayObjective
from steplaw_opt.objectives._base import RunContext
from steplaw_opt.tune import StudySetup, TuneConfig, tune
from steplaw_opt.tune._tune import _scales

TARGET_N, TARGET_D = 1073741824.0, 5.69e10  # the largest setting of the dense grids


@pytest.fixture(scope="module")
def settings(steplaw_data):
    from steplaw_opt.bench import load_grids

    return load_grids(steplaw_data / "dense_lr_bs_loss.csv")


def _target(settings) -> Scale:
    s = max(settings, key=lambda s: s.N * s.D)
    return Scale(N=s.N, D=s.D)


def test_cheaper_scales_are_every_setting_below_the_cost_limit(settings):
    target = _target(settings)
    same_n = GridReplayObjective(settings)
    assert same_n.allowed_scales(target) is None  # the default: smaller D at the target's N
    ladder = GridReplayObjective(settings, proxy_scales="cheaper", max_proxy_cost=1 / 16)
    scales = ladder.allowed_scales(target)
    limit = float(target.N) * float(target.D) / 16
    expected = {(s.N, s.D) for s in settings if s.N * s.D <= limit * (1 + 1e-9)}
    assert {(s.N, s.D) for s in scales} == expected and len(expected) >= 3
    assert len({s.N for s in scales}) >= 3  # a ladder across model size, not one N
    everything = GridReplayObjective(settings, proxy_scales="cheaper").allowed_scales(target)
    assert (target.N, target.D) not in {(s.N, s.D) for s in everything}
    assert len(everything) == len(settings) - 1


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"proxy_scales": "any"}, "proxy_scales must be 'same-n' or 'cheaper', got 'any'"),
        ({"max_proxy_cost": 0}, "max_proxy_cost must be in (0, 1], got 0"),
        ({"max_proxy_cost": 2.0}, "max_proxy_cost must be in (0, 1], got 2.0"),
    ],
)
def test_bad_proxy_settings_are_one_line(settings, kwargs, needle):
    with pytest.raises(SteplawInputError) as info:
        GridReplayObjective(settings, **kwargs)
    assert needle in str(info.value)


def test_a_study_on_a_ladder_runs_only_its_scales_and_stores_them(settings, tmp_path):
    target = _target(settings)
    objective = GridReplayObjective(settings, proxy_scales="cheaper", max_proxy_cost=1 / 16)
    url = f"sqlite:///{tmp_path / 'ladder.db'}"
    result = tune(target, objective, budget=0.25, storage=url, study_name="ladder", seed=0)
    assert result is not None and result.n_complete > 0
    study = optuna.load_study(study_name="ladder", storage=url)
    doc = json.loads(study.user_attrs[ATTR_CONFIG])
    allowed = {(n, d) for n, d in doc["allowed_scales"]}
    ran = {(t.user_attrs["steplaw.N"], t.user_attrs["steplaw.D"]) for t in study.trials}
    assert ran <= allowed and len({n for n, _ in ran}) >= 2
    cost = sum(n * d for n, d in (
        (t.user_attrs["steplaw.N"], t.user_attrs["steplaw.D"]) for t in study.trials
    )) / (float(target.N) * float(target.D))  # fmt: skip
    assert cost == pytest.approx(result.compute_spent) and cost <= 0.25 + 1e-9
    # a worker rebuilds the same plan from what the study stored
    rebuilt = StudySetup.build(
        target,
        TuneConfig.from_dict(doc),
        doc["allowed_tokens"],
        _scales(doc["allowed_scales"], target),
    )
    assert (
        rebuilt.plan
        == StudySetup.build(
            target, TuneConfig(budget=0.25, seed=0), None, objective.allowed_scales(target)
        ).plan
    )


def test_a_mangled_stored_ladder_is_one_line():
    with pytest.raises(SteplawInputError, match="allowed_scales must be a list of"):
        _scales([["a", 1]], Scale(N=1e9, D=1e11))
    with pytest.raises(SteplawInputError, match="allowed_scales must be a list of"):
        _scales(7, Scale(N=1e9, D=1e11))


def test_a_shifted_replay_moves_every_setting_by_its_own_offset(settings):
    from steplaw_opt.bench._proxy import ShiftedGridReplayObjective
    from steplaw_opt.bench._shift import Shift

    offsets = Shift.parse("drift-ND:0.6").offsets(settings)
    by_key = {(s.N, s.D): tuple(o) for s, o in zip(settings, offsets, strict=True)}
    shifted = ShiftedGridReplayObjective(settings, by_key)  # type: ignore[arg-type]
    plain = GridReplayObjective(settings)
    for s, (du, dv) in zip(settings[::4], offsets[::4], strict=True):
        scale = Scale(N=s.N, D=s.D)
        assert shifted.offset(scale) == (du, dv)
        for i in (s.best_index, 0, len(s.loss) - 1):
            lr, batch = float(s.lr[i]), float(s.batch[i])
            moved = shifted.run(
                lr * math.exp(du), batch * math.exp(dv), scale, RunContext(trial_number=0)
            )
            assert moved == plain.run(lr, batch, scale, RunContext(trial_number=0))
