"""TuneConfig: the run settings as one object, checked once, stored in the study and rebuilt
from it by workers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import optuna
import pytest

from steplaw_opt import Scale, SteplawInputError, load_law
from steplaw_opt._records import ATTR_CONFIG
from steplaw_opt.objectives import CallableObjective
from steplaw_opt.tune import StudySetup, TuneConfig, tune

ROOT = Path(__file__).resolve().parents[1]
TARGET = Scale(N=4.29e8, D=4e10)
LAW = load_law("step-law")


def bowl(lr: float, batch_size: float, scale: Scale) -> float:
    u = math.log(lr / LAW.lr_at(scale))
    v = math.log(batch_size * scale.seq_len / LAW.batch_tokens_at(scale))
    return (2.0 + 1e10 / float(scale.D or 1)) * math.exp(0.0064 * u * u + 0.006 * v * v)


@pytest.mark.parametrize(
    "settings, needle",
    [
        ({"batch_unit": "samples"}, "batch_unit must be 'sequences' or 'tokens', got 'samples'"),
        ({"batch_multiple": 0}, "batch_multiple must be a positive integer, got 0"),
        ({"batch_multiple": True}, "batch_multiple must be a positive integer, got True"),
        ({"heartbeat_interval": 0.5}, "whole number of seconds >= 1, got 0.5"),
        ({"sampler": "tpe"}, "unknown sampler 'tpe'"),
        ({"budget": -1.0}, "budget must be a non-negative number, got -1.0"),
        ({"budget": math.inf}, "budget must be a non-negative number, got inf"),
        ({"n_trials": 0}, "n_trials must be a positive integer, got 0"),
        ({"target_runs": 2, "budget": 1.0}, "2 target run(s) cost 2.00 but the budget is 1"),
        ({"law": "no-such-law"}, "no-such-law"),
    ],
)
def test_bad_settings_are_one_line_at_construction(settings: dict, needle: str) -> None:
    with pytest.raises(SteplawInputError) as info:
        TuneConfig(**settings)
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_round_trip_through_the_stored_document() -> None:
    config = TuneConfig(
        budget=0.5,
        n_trials=7,
        seed=3,
        batch_unit="tokens",
        lr_bounds=(1e-4, 1e-2),
        batch_bounds=(1e4, 1e7),
        batch_multiple=8,
        round_batch="pow2",
        smaller_n=True,
        drift=True,
        timeout_per_trial=30.0,
        heartbeat_interval=5,
        objective_spec={"kind": "command", "command": "train --lr {lr}"},
    )
    doc = json.loads(json.dumps(config.to_dict()))  # as the study stores it
    assert TuneConfig.from_dict(doc) == config


def test_a_card_file_is_stored_by_absolute_path(tmp_path: Path, monkeypatch) -> None:
    card = tmp_path / "mine.toml"
    card.write_text((ROOT / "priors" / "cards" / "step-law.toml").read_text())
    monkeypatch.chdir(tmp_path)
    config = TuneConfig(law="mine.toml")
    assert config.to_dict()["law"] == str(card.resolve())
    assert TuneConfig(law=LAW).to_dict()["law"] == "step-law"


def test_an_older_document_takes_the_defaults() -> None:
    assert TuneConfig.from_dict({"law": "step-law", "budget": 0.25}) == TuneConfig(budget=0.25)


def test_tune_stores_the_config_and_a_worker_rebuilds_the_same_plan() -> None:
    config = TuneConfig(budget=0.5, seed=0, batch_multiple=2)
    result = tune(TARGET, CallableObjective(bowl), config=config, storage=":memory:")
    assert result is not None
    # The result's plan is what the stored document rebuilds.
    doc = {**config.to_dict(), "allowed_tokens": None}
    rebuilt = StudySetup.build(TARGET, TuneConfig.from_dict(doc), doc["allowed_tokens"])
    assert rebuilt.plan == result.plan
    assert rebuilt.batch_dist["step"] == 2 and rebuilt.batch_dist["low"] % 2 == 0
    assert rebuilt.lr_bounds == pytest.approx(StudySetup.build(TARGET, config, None).lr_bounds)


def test_the_stored_document_is_the_configs(tmp_path: Path) -> None:
    config = TuneConfig(budget=0.25, seed=1)
    storage = f"sqlite:///{tmp_path}/c.db"
    result = tune(TARGET, CallableObjective(bowl), config=config, storage=storage)
    study = optuna.load_study(study_name=result.study_name, storage=storage)
    stored = json.loads(study.user_attrs[ATTR_CONFIG])
    assert stored == {**config.to_dict(), "allowed_tokens": None, "allowed_scales": None}


def test_keywords_and_keyword_form_give_the_same_study() -> None:
    a = tune(TARGET, CallableObjective(bowl), budget=0.25, seed=2, storage=":memory:")
    b = tune(
        TARGET,
        CallableObjective(bowl),
        config=TuneConfig(budget=0.25, seed=2),
        storage=":memory:",
    )
    assert a.refined.lr == b.refined.lr and a.refined.batch_tokens == b.refined.batch_tokens


def test_config_and_setting_keywords_together_are_refused() -> None:
    with pytest.raises(SteplawInputError, match="not both"):
        tune(
            TARGET,
            CallableObjective(bowl),
            config=TuneConfig(budget=0.5),
            budget=0.25,
            storage=":memory:",
        )


# ------------------------------------------------------------------ every field, up front
@pytest.mark.parametrize(
    "settings, needle",
    [
        ({"lr_bounds": ("a", "b")}, "lr_bounds must be two numbers with 0 < low < high, got"),
        ({"lr_bounds": (1e-3,)}, "lr_bounds must be two numbers"),
        ({"lr_bounds": "ab"}, "lr_bounds must be two numbers"),
        ({"lr_bounds": (1e-2, 1e-3)}, "lr_bounds must be two numbers"),
        ({"lr_bounds": (math.nan, 1.0)}, "lr_bounds must be two numbers"),
        ({"batch_bounds": (0, 64)}, "batch_bounds must be two numbers"),
        ({"batch_bounds": (1, None)}, "batch_bounds must be two numbers"),
        ({"round_batch": 64.5}, "round_batch must be 'none', 'pow2' or a positive integer"),
        ({"round_batch": "POW2"}, "round_batch must be"),
        ({"round_batch": True}, "round_batch must be"),
        ({"seed": "x"}, "seed must be a non-negative integer, got 'x'"),
        ({"seed": -1}, "seed must be a non-negative integer, got -1"),
        ({"n_trials": 2.5}, "n_trials must be a positive integer, got 2.5"),
        ({"n_trials": "5"}, "n_trials must be a positive integer, got '5'"),
        ({"target_runs": "1"}, "target_runs must be a non-negative integer, got '1'"),
        ({"budget": "1"}, "budget must be a non-negative number, got '1'"),
        ({"batch_multiple": 2.5}, "batch_multiple must be a positive integer, got 2.5"),
        ({"batch_multiple": np.int64(0)}, "batch_multiple must be a positive integer"),
        ({"smaller_n": "yes"}, "smaller_n must be True or False, got 'yes'"),
        ({"drift": 1}, "drift must be True or False, got 1"),
        ({"timeout_per_trial": 0}, "timeout_per_trial must be a positive number of seconds"),
        ({"timeout_per_trial": "60"}, "timeout_per_trial must be a positive number of seconds"),
        ({"heartbeat_interval": "5"}, "heartbeat_interval must be a whole number of seconds"),
        ({"sampler": ["plateau"]}, "unknown sampler ['plateau']"),
        ({"batch_unit": None}, "batch_unit must be 'sequences' or 'tokens', got None"),
        ({"objective_spec": "train {lr}"}, "objective_spec must be a dict or None"),
    ],
)
def test_every_field_is_checked_at_construction(settings: dict, needle: str) -> None:
    """A bad field is one SteplawInputError line naming it and its value (not a bare
    TypeError when the study is set up)."""
    with pytest.raises(SteplawInputError) as info:
        TuneConfig(**settings)
    message = str(info.value)
    assert needle in message and "\n" not in message, message
    assert message.split()[0].strip("'") in {*settings, "unknown"}, message


def test_bad_bounds_through_tune_are_one_line() -> None:
    with pytest.raises(SteplawInputError, match="lr_bounds must be two numbers"):
        tune(TARGET, CallableObjective(bowl), lr_bounds=("a", "b"), storage=":memory:")


def test_numpy_scalars_are_stored_as_plain_python_numbers() -> None:
    config = TuneConfig(
        budget=np.float32(0.5),
        n_trials=np.int64(7),
        target_runs=np.int32(0),
        seed=np.int64(3),
        lr_bounds=np.array([1e-4, 1e-2]),
        batch_bounds=(np.int64(2), np.int64(4096)),
        batch_multiple=np.int64(8),
        round_batch=np.int64(64),
        smaller_n=np.bool_(True),
        drift=np.bool_(True),
        timeout_per_trial=np.int64(30),
        heartbeat_interval=np.int64(5),
    )
    kinds = {
        "budget": float, "n_trials": int, "target_runs": int, "seed": int, "batch_multiple": int,
        "round_batch": int, "smaller_n": bool, "drift": bool, "timeout_per_trial": float,
        "heartbeat_interval": int,
    }  # fmt: skip
    for name, kind in kinds.items():
        assert type(getattr(config, name)) is kind, (name, type(getattr(config, name)))
    assert config.lr_bounds == (1e-4, 1e-2) and type(config.lr_bounds[0]) is float
    assert config.batch_bounds == (2.0, 4096.0) and type(config.batch_bounds[0]) is float
    text = json.dumps(config.to_dict())  # as the study stores it: no default= needed
    doc = json.loads(text)
    assert doc["n_trials"] == 7 and type(doc["n_trials"]) is int
    assert type(doc["seed"]) is int and type(doc["batch_multiple"]) is int
    assert type(doc["heartbeat_interval"]) is int and type(doc["round_batch"]) is int
    assert TuneConfig.from_dict(doc) == config
    assert config == TuneConfig(budget=0.5, n_trials=7, seed=3, lr_bounds=(1e-4, 1e-2),
                                batch_bounds=(2, 4096), batch_multiple=8, round_batch=64,
                                smaller_n=True, drift=True, timeout_per_trial=30.0,
                                heartbeat_interval=5)  # fmt: skip


def test_a_document_with_whole_floats_rebuilds_integers() -> None:
    """Studies stored by an older version hold NumPy integers as floats (8.0): they rebuild
    the integers they were."""
    doc = {**TuneConfig(n_trials=7, seed=3, batch_multiple=8).to_dict()}
    doc.update(n_trials=7.0, seed=3.0, batch_multiple=8.0)
    config = TuneConfig.from_dict(doc)
    assert (config.n_trials, config.seed, config.batch_multiple) == (7, 3, 8)
    assert type(config.batch_multiple) is int


@pytest.mark.parametrize("drift", [False, True])
def test_drift_reaches_the_sampler_of_the_study_and_of_every_worker(drift: bool) -> None:
    config = TuneConfig(budget=0.5, drift=drift)
    assert StudySetup.build(TARGET, config, None).sampler.drift is drift
    rebuilt = TuneConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert StudySetup.build(TARGET, rebuilt, None).sampler.drift is drift
    botorch = TuneConfig(budget=0.5, drift=drift, sampler="botorch")
    assert StudySetup.build(TARGET, botorch, None).sampler.drift is drift


def test_a_study_made_before_drift_existed_takes_the_default() -> None:
    doc = TuneConfig(budget=0.5, drift=False).to_dict()
    del doc["drift"]
    assert TuneConfig.from_dict(doc).drift is True
