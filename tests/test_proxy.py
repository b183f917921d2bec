import pytest

from steplaw_opt import Scale, SteplawInputError
from steplaw_opt.tune import plan_proxies, run_cost

TARGET = Scale(N=1e9, D=1e11)


def test_plan_spends_the_budget_on_smaller_d_first():
    plan = plan_proxies(TARGET, 1.0)
    assert [s.scale.D for s in plan.stages] == [1e11 / 16, 1e11 / 8, 1e11 / 4]
    assert all(s.scale.N == TARGET.N for s in plan.stages)
    assert plan.compute == pytest.approx(1.0)
    assert plan.total_runs == 10
    assert plan.schedule()[0].D == 1e11 / 16


def test_plan_respects_allowed_tokens_and_the_cap():
    plan = plan_proxies(Scale(N=2e8, D=1e11), 1.0, allowed_tokens=[4e9, 1.14e10, 2e10, 1e11])
    assert {s.scale.D for s in plan.stages} == {4e9, 1.14e10, 2e10}
    assert plan.compute <= 1.0 + 1e-9
    capped = plan_proxies(TARGET, 1.0, n_trials=4)
    assert capped.total_runs == 4 and len(capped.stages) == 3


def test_small_budgets_drop_the_expensive_stages_and_zero_buys_nothing():
    plan = plan_proxies(TARGET, 0.1)
    assert [s.scale.D for s in plan.stages] == [1e11 / 16]
    with pytest.raises(SteplawInputError, match="buys no run"):
        plan_proxies(TARGET, 0.01)


def test_target_runs_and_smaller_n():
    plan = plan_proxies(TARGET, 2.0, target_runs=1, smaller_n=True)
    assert plan.stages[-1].scale == TARGET and plan.stages[-1].runs == 1
    assert any(s.scale.N == TARGET.N / 4 for s in plan.stages)
    assert run_cost(Scale(N=2.5e8, D=1e10), TARGET) == pytest.approx(0.025)


def test_a_ladder_of_allowed_scales_is_costed_by_n_times_d():
    ladder = [
        Scale(N=TARGET.N / 64, D=TARGET.D / 64),  # 1/4096 of the target's compute
        Scale(N=TARGET.N / 16, D=TARGET.D / 16),  # 1/256
        Scale(N=TARGET.N / 4, D=TARGET.D / 4),  # 1/16
        Scale(N=TARGET.N / 2, D=TARGET.D * 2),  # as dear as the target: never a proxy
        TARGET,
    ]
    plan = plan_proxies(TARGET, 0.25, allowed_scales=ladder)
    costs = [s.cost for s in plan.stages]
    assert costs == pytest.approx([1 / 4096, 1 / 256, 1 / 16])
    assert [s.scale.N for s in plan.stages] == [TARGET.N / 64, TARGET.N / 16, TARGET.N / 4]
    assert all(s.scale.seq_len == TARGET.seq_len for s in plan.stages)
    assert plan.compute <= 0.25 + 1e-12
    assert plan.compute == pytest.approx(sum(s.runs * s.cost for s in plan.stages))
    # at least an equal share each (1/12 of the budget); leftovers to the dearest that fits
    assert plan.stages[0].runs >= int(0.25 / 3 * 4096) and plan.stages[1].runs >= 21
    assert plan.stages[2].runs == 1 and plan.compute > 0.25 - 1 / 4096
    # allowed scales replace the token fractions and smaller_n
    assert plan == plan_proxies(TARGET, 0.25, allowed_scales=ladder, smaller_n=True)
    with pytest.raises(SteplawInputError, match="buys no run"):
        plan_proxies(TARGET, 0.5, allowed_scales=ladder[3:])


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"budget": -1}, "budget"),
        ({"budget": float("nan")}, "budget"),
        ({"n_trials": 0}, "n_trials"),
        ({"target_runs": 2, "budget": 1.0}, "target run"),
        ({"fractions": (1.5,)}, "fractions"),
    ],
)
def test_bad_plans(kwargs, needle):
    with pytest.raises(SteplawInputError, match=needle):
        plan_proxies(TARGET, **kwargs)


def test_a_target_or_proxy_whose_cost_overflows_is_one_line():
    # N·D = 1e300 × 1e11 is inf: every cost was NaN and the plan raised a bare ValueError
    with pytest.raises(SteplawInputError, match="1e\\+300"):
        plan_proxies(Scale(N=1e300, D=1e11), 1.0)
    # a fraction of 5e-324 costs a subnormal: budget / cost overflowed the run count
    with pytest.raises(SteplawInputError, match="not a usable proxy scale"):
        plan_proxies(Scale(N=1e9, D=1e11), 1.0, fractions=(5e-324,))
    assert plan_proxies(Scale(N=1e9, D=1e11), 1.0, fractions=(0.25,)).stages  # still plans
