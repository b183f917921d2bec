"""TuneConfig: the run settings as one object, checked once, stored in the study and rebuilt
from it by workers."""

from __future__ import annotations

import json
import math
from pathlib import Path

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
    assert stored == {**config.to_dict(), "allowed_tokens": None}


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
