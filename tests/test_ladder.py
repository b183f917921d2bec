"""A ladder across model size: proxy models smaller than the target, tokens in proportion.

The rungs' arithmetic, the config's checks and round trip, a study that runs only the rungs and
keeps them, the built-in trainer's refusal of a rung too small to build, and model configs that
reach a command as shell words (``{model_args}``)."""

from __future__ import annotations

import json
import math

import optuna
import pytest

from steplaw_opt import Scale, SteplawInputError
from steplaw_opt._records import ATTR_CONFIG
from steplaw_opt.objectives import CallableObjective, CommandObjective, GridReplayObjective
from steplaw_opt.objectives._command import command_objective_from_spec, parse_models
from steplaw_opt.tune import StudySetup, TuneConfig, ladder_scales, run_cost, tune

TARGET = Scale(N=1e9, D=2e10)


def test_rungs_keep_tokens_per_parameter_and_cost_the_square_of_the_size_ratio():
    rungs = ladder_scales(TARGET, [2.5e8, 6.25e7, 1.5625e7])
    for rung, factor in zip(rungs, (4, 16, 64), strict=True):
        assert rung.N == pytest.approx(TARGET.N / factor)
        assert rung.D / rung.N == pytest.approx(TARGET.D / TARGET.N)
        assert run_cost(rung, TARGET) == pytest.approx(1 / factor**2)


@pytest.mark.parametrize("size", [1e9, 2e9, 0.0, -1.0])
def test_a_rung_that_is_not_smaller_than_the_target_is_refused(size):
    with pytest.raises(SteplawInputError, match=r"ladder size N=.* is not smaller"):
        ladder_scales(TARGET, [2.5e8, size])


@pytest.mark.parametrize(
    ("ladder", "needle"),
    [
        ("25M", "ladder must be a list of positive model sizes N, got '25M'"),
        ([], "ladder must hold at least one model size"),
        ([2.5e8, -1], "ladder size must be a positive number, got -1.0"),
        ([2.5e8, math.nan], "ladder size must be a positive number, got nan"),
        ([2.5e8, 2.5e8], "ladder size 2.5e+08 is given twice"),
        ([2.5e8, True], "ladder size must be a positive number, got True"),
    ],
)
def test_bad_ladders_are_one_line(ladder, needle):
    with pytest.raises(SteplawInputError) as info:
        TuneConfig(ladder=ladder)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_a_ladder_and_smaller_n_together_are_refused():
    with pytest.raises(SteplawInputError, match="ladder or smaller_n, not both"):
        TuneConfig(ladder=(2.5e8,), smaller_n=True)


def test_the_config_keeps_its_ladder_largest_first_through_the_stored_document():
    config = TuneConfig(ladder=[6.25e7, 2.5e8])
    assert config.ladder == (2.5e8, 6.25e7)
    again = TuneConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again.ladder == config.ladder
    assert TuneConfig.from_dict({}).ladder is None  # a study made before ladders


@pytest.mark.parametrize("budget", [0.05, 0.1, 0.25, 0.5, 1.0])
def test_the_plan_spends_the_budget_on_the_rungs_only(budget):
    config = TuneConfig(budget=budget, ladder=(2.5e8, 6.25e7))
    plan = config.plan(TARGET)
    rungs = {(s.N, s.D) for s in ladder_scales(TARGET, config.ladder)}
    assert {(st.scale.N, st.scale.D) for st in plan.stages} <= rungs
    assert plan.compute <= budget + 1e-9
    assert plan.compute == pytest.approx(sum(st.runs * st.cost for st in plan.stages))
    assert plan.compute > budget - 1 / 16  # leftovers buy runs until the next one does not fit


def test_a_ladder_is_refused_with_an_objective_that_picks_its_own_scales(steplaw_data):
    replay = GridReplayObjective(steplaw_data / "dense_lr_bs_loss.csv")
    target = Scale(N=1073741824.0, D=5.69e10)
    config = TuneConfig(ladder=(target.N / 4,))
    with pytest.raises(SteplawInputError, match="a ladder cannot be used with it"):
        config.plan(target, replay.allowed_tokens(target), replay.allowed_scales(target))


def _bowl(lr: float, batch_size: float, scale: Scale) -> float:
    return 3.0 + math.log(lr / 2e-3) ** 2 + 0.1 * math.log(batch_size / 256) ** 2


def test_a_study_on_a_ladder_runs_only_its_rungs_and_a_resume_keeps_them(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    seen: list[tuple[float, float]] = []

    def bowl(lr: float, batch_size: float, scale: Scale) -> float:
        seen.append((float(scale.N or 0), float(scale.D or 0)))
        return _bowl(lr, batch_size, scale)

    ladder = (TARGET.N / 4, TARGET.N / 16)
    result = tune(TARGET, CallableObjective(bowl), budget=0.25, ladder=ladder, storage=url, seed=0)
    rungs = {(s.N, s.D) for s in ladder_scales(TARGET, ladder)}
    assert seen and set(seen) <= rungs and len(set(seen)) == 2
    assert result.compute_spent <= 0.25 + 1e-9
    study = optuna.load_study(study_name=result.study_name, storage=url)
    assert json.loads(study.user_attrs[ATTR_CONFIG])["ladder"] == list(ladder)
    with pytest.raises(SteplawInputError, match="was made with ladder="):
        tune(
            TARGET,
            CallableObjective(bowl),
            budget=0.25,
            ladder=(TARGET.N / 4,),
            storage=url,
            seed=0,
        )


def test_the_builtin_trainer_refuses_a_rung_too_small_to_build_before_any_run(tmp_path):
    pytest.importorskip("torch")
    from steplaw_opt.objectives import BuiltinTrainerObjective

    target = Scale(N=1e5, D=1e6, seq_len=128)
    with pytest.raises(SteplawInputError, match="too small for a transformer"):
        tune(
            target,
            BuiltinTrainerObjective(),
            budget=0.1,
            ladder=(target.N / 1000,),
            storage=f"sqlite:///{tmp_path}/s.db",
        )
    assert not (tmp_path / "s.db").exists()  # refused before the study was made


def test_the_setup_a_worker_rebuilds_has_the_same_rungs():
    config = TuneConfig(budget=0.5, ladder=(2.5e8, 6.25e7))
    again = TuneConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    first = StudySetup.build(TARGET, config, None)
    second = StudySetup.build(TARGET, again, None)
    assert [(s.N, s.D) for s in first.schedule] == [(s.N, s.D) for s in second.schedule]


# ------------------------------------------------------------------------- model configs
MODELS = {
    2.5e8: "--n_layer=12 --n_embd=1024",
    6.25e7: "--n_layer=6 --n_embd=768 --run-name 'small; rm -rf ~'",
}
TEMPLATE = "python train.py {model_args} --lr {lr} --tokens {tokens}"


def test_model_args_reach_the_command_as_its_own_words_each_quoted():
    objective = CommandObjective(TEMPLATE, models=MODELS)
    small = ladder_scales(TARGET, [6.25e7])[0]
    command = objective.render(1e-3, 8, small, 0, "/tmp/m.json")
    assert command.startswith(
        "python train.py --n_layer=6 --n_embd=768 --run-name 'small; rm -rf ~' --lr 0.001"
    )
    import shlex

    words = shlex.split(command)
    assert words[2:6] == ["--n_layer=6", "--n_embd=768", "--run-name", "small; rm -rf ~"]


def test_a_planned_size_without_a_model_config_is_refused_before_any_run(tmp_path):
    objective = CommandObjective(TEMPLATE, models=MODELS)
    with pytest.raises(SteplawInputError, match=r"no model config for N=1\.562e\+07"):
        tune(
            TARGET,
            objective,
            budget=0.1,
            ladder=(2.5e8, 1.5625e7),
            storage=f"sqlite:///{tmp_path}/s.db",
        )
    assert not (tmp_path / "s.db").exists()


@pytest.mark.parametrize(
    ("template", "models", "needle"),
    [
        (TEMPLATE, None, "uses {model_args} but no model configs were given"),
        ("python t.py --lr {lr}", MODELS, "has neither {model_args} nor {params}"),
        ("python t.py '{model_args}' {lr}", MODELS, "{model_args} stands inside quotes"),
        (TEMPLATE, {2.5e8: "--name 'open"}, "do not split into words"),
        (TEMPLATE, {-1: "--x"}, "model size must be a positive number, got -1"),
        (TEMPLATE, {2.5e8: "a", 2.5e8 * (1 + 1e-9): "b"}, "is given twice"),
    ],
)
def test_bad_model_configs_are_one_line(template, models, needle):
    with pytest.raises(SteplawInputError) as info:
        CommandObjective(template, models=models)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_model_configs_are_stored_for_workers_and_part_of_what_the_study_tunes():
    objective = CommandObjective(TEMPLATE, models=MODELS)
    again = command_objective_from_spec(json.loads(json.dumps(objective.to_spec())))
    assert again.models == objective.models == parse_models(MODELS)
    other = CommandObjective(TEMPLATE, models={**MODELS, 2.5e8: "--n_layer=10"})
    assert other.identity_key() != objective.identity_key()
    # a template that takes the size only through {params} is identified by itself, as before
    plain = CommandObjective("python t.py --params {params} --lr {lr}", models=MODELS)
    assert plain.identity_key() == "python t.py --params {params} --lr {lr}"


# ------------------------------------------------------------ cheap rungs, plans in one pass
def test_a_rung_far_below_the_target_is_refused_in_one_line():
    with pytest.raises(SteplawInputError) as info:
        ladder_scales(TARGET, [2.5e8, 1e3])
    assert "ladder size N=1000 is less than 1/1000 of the target's N=1e+09" in str(info.value)
    assert "\n" not in str(info.value)
    assert ladder_scales(TARGET, [TARGET.N / 1000])  # the floor itself is allowed


@pytest.mark.parametrize("costs", [[1e-24], [1e-18, 1e-6], [1e-12, 1e-9, 0.3]])
def test_allocating_very_cheap_stages_is_arithmetic_not_one_run_per_pass(costs):
    from steplaw_opt.tune._plan import _allocate

    runs = _allocate(costs, 1.0)  # returns at once: a run-per-pass loop would take ~1e24 passes
    assert sum(r * c for r, c in zip(runs, costs, strict=True)) <= 1.0 + 1e-9
    assert all(r >= 1 for r in runs)
    assert 1.0 - sum(r * c for r, c in zip(runs, costs, strict=True)) < min(costs) * 2 + 1e-9


def test_capping_a_huge_plan_is_one_step_and_keeps_the_cheapest_stages_giving_way():
    from steplaw_opt.tune._plan import ProxyStage, _cap

    a, b = ladder_scales(TARGET, [2.5e8, 1e6])
    stages = [ProxyStage(b, 10**15, 1e-6), ProxyStage(a, 3, 1 / 16)]
    capped = _cap(stages, 5)
    assert [(st.scale, st.runs) for st in capped] == [(b, 2), (a, 3)]
    assert [(st.scale, st.runs) for st in _cap(stages, 2)] == [(b, 1), (a, 1)]
    assert [(st.scale, st.runs) for st in _cap(stages, 1)] == [(a, 1)]


def test_a_plan_of_many_cheap_runs_is_refused_or_capped_without_hanging():
    config = TuneConfig(budget=1.0, ladder=(TARGET.N / 1000,))
    with pytest.raises(SteplawInputError, match="plans 1,000,000 runs"):
        config.plan(TARGET)
    capped = TuneConfig(budget=1.0, n_trials=20, ladder=(TARGET.N / 1000,)).plan(TARGET)
    assert capped.total_runs == 20


def test_a_study_made_before_ladders_is_not_resumed_with_one(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    result = tune(TARGET, CallableObjective(_bowl), budget=0.1, storage=url, seed=0)
    study = optuna.load_study(study_name=result.study_name, storage=url)
    doc = json.loads(study.user_attrs[ATTR_CONFIG])
    del doc["ladder"]  # as a study made before ladders stored it
    study.set_user_attr(ATTR_CONFIG, json.dumps(doc))
    with pytest.raises(SteplawInputError, match=r"was made with ladder=None, not \[250000000"):
        tune(
            TARGET,
            CallableObjective(_bowl),
            budget=0.1,
            ladder=(TARGET.N / 4,),
            storage=url,
            study_name=result.study_name,
        )
    again = tune(  # and without a ladder it resumes as before
        TARGET, CallableObjective(_bowl), budget=0.1, storage=url, study_name=result.study_name
    )
    assert again.study_name == result.study_name


@pytest.mark.parametrize(
    ("ladder", "needle"),
    [
        (2.5e8, "ladder must be a list of positive model sizes N, got 250000000.0"),
        ("250M", "ladder must be a list of positive model sizes N, got '250M'"),
    ],
)
def test_tune_refuses_a_ladder_that_is_not_a_list_in_one_line(ladder, needle, tmp_path):
    with pytest.raises(SteplawInputError) as info:
        tune(TARGET, CallableObjective(_bowl), ladder=ladder, storage=f"sqlite:///{tmp_path}/s.db")
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "s.db").exists()


@pytest.mark.parametrize("size", ["25M", None, True, math.inf, 0, 10**400])
def test_model_sizes_that_are_not_positive_numbers_are_one_line(size):
    with pytest.raises(SteplawInputError) as info:
        CommandObjective(TEMPLATE, models={2.5e8: "--n_layer=12", size: "--n_layer=2"})
    assert "model size must be a positive number, got" in str(info.value)
    assert "\n" not in str(info.value)


def test_a_model_size_may_be_any_real_number_type():
    from decimal import Decimal

    import numpy as np

    objective = CommandObjective(
        TEMPLATE, models={Decimal("2.5e8"): "--n_layer=12", np.float64(6.25e7): "--n_layer=6"}
    )
    assert list(objective.models) == [2.5e8, 6.25e7]


@pytest.mark.parametrize("template", [TEMPLATE, TEMPLATE + " --tag " + "a" * 250])
def test_a_resume_with_other_model_configs_names_them(template):
    from steplaw_opt.tune._tune import check_settings, objective_identity

    mine = objective_identity(CommandObjective(template, models=MODELS), None)
    theirs = objective_identity(
        CommandObjective(template, models={**MODELS, 2.5e8: "--n_layer=10"}), None
    )
    with pytest.raises(SteplawInputError) as info:
        check_settings("s", {}, {}, theirs, mine)
    message = str(info.value)
    assert "with models 2.5e+08=--n_layer=10" in message
    assert "with models 2.5e+08=--n_layer=12 --n_embd=1024" in message


def test_a_worker_given_an_objective_that_cannot_run_a_rung_is_refused_before_any_run(tmp_path):
    from steplaw_opt.tune import run_worker

    url = f"sqlite:///{tmp_path}/s.db"
    objective = CommandObjective(TEMPLATE, models=MODELS)
    ladder = (2.5e8, 6.25e7)
    tune(
        TARGET,
        objective,
        budget=0.1,
        ladder=ladder,
        storage=url,
        study_name="ladder",
        create_only=True,
        seed=0,
    )
    fewer = CommandObjective(TEMPLATE, models={2.5e8: MODELS[2.5e8]})
    with pytest.raises(SteplawInputError, match=r"no model config for N=6.25e\+07"):
        run_worker("ladder", url, objective=fewer)
    study = optuna.load_study(study_name="ladder", storage=url)
    assert study.trials == []
