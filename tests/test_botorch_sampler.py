"""BoTorchPlateauSampler: Optuna's contract suites, the inherited behaviour (law point first,
failures, pending trials), reproducibility, its beliefs, and the non-bowl fixture on which the
GP must beat the bowl.

The non-bowl fixture (docs/botorch.md): a curved "banana" valley in law-normalised (u, v),

    ln L = ln 2.5 + 0.03 (u − 0.2 − 0.8 (v − 0.1)²)² + 0.004 (v − 0.1)²

whose optimum (0.2, 0.1) lies 0.2 ln units above the law's lr and whose valley floor bends: the
best lr moves with batch quadratically, which no quadratic bowl can follow.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import optuna
import pytest
from optuna.samplers import BaseSampler
from optuna.testing.pytest_samplers import BasicSamplerTestCase, RelativeSamplerTestCase

pytest.importorskip("botorch")

from steplaw_opt import Scale, SteplawInputError, load_law
from steplaw_opt.samplers import BoTorchPlateauSampler, PlateauSampler
from steplaw_opt.samplers._plateau import ATTR_BELIEF, ATTR_PROPOSAL

optuna.logging.set_verbosity(optuna.logging.WARNING)
TARGET = Scale(N=4.29e8, D=4e10)
LAW = load_law("step-law")
LR0 = LAW.lr_at(TARGET)
B0 = LAW.batch_tokens_at(TARGET) / 2048
LR_BOUNDS, B_BOUNDS = (2.44e-4, 2.21e-2), (16.0, 2048.0)


def banana(u: float, v: float) -> float:
    """ln-loss gap of the non-bowl fixture: a bent valley, optimum 0 at (0.2, 0.1)."""
    return 0.03 * (u - 0.2 - 0.8 * (v - 0.1) ** 2) ** 2 + 0.004 * (v - 0.1) ** 2


def cliff(u: float, v: float) -> float:
    """ln-loss gap of the cliff fixture: a gentle bowl centred beyond a steep wall at high lr
    whose edge moves with batch; the optimum sits on the edge. PlateauSampler stays better."""
    edge = 0.25 + 0.3 * v
    return 0.006 * (u - 0.8) ** 2 + 0.006 * (v + 0.2) ** 2 + 2.0 * max(0.0, u - edge) ** 2


def bowl(u: float, v: float) -> float:
    u, v = u - 0.3, v + 0.2
    return 0.0064 * u * u - 0.0052 * u * v + 0.006 * v * v


def objective_of(gap: Callable[[float, float], float]) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", *LR_BOUNDS, log=True)
        batch = trial.suggest_float("batch_size", *B_BOUNDS, log=True)
        return 2.5 * math.exp(gap(math.log(lr / LR0), math.log(batch / B0)))

    return objective


def run(sampler: BaseSampler, gap: Callable[[float, float], float], n: int) -> optuna.Study:
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective_of(gap), n_trials=n)
    return study


def sampler(seed: int = 0, **kwargs) -> BoTorchPlateauSampler:
    return BoTorchPlateauSampler(TARGET, seed=seed, **kwargs)


# --------------------------------------------------------------------------------- contract
def _factory() -> BaseSampler:
    return BoTorchPlateauSampler(
        Scale(N=4e8, D=4e10), lr_param="x", batch_param="y", seed=1, n_bowl=0
    )


class TestBoTorchBasic(BasicSamplerTestCase):
    @pytest.fixture
    def sampler(self) -> Callable[[], BaseSampler]:
        return _factory


class TestBoTorchRelative(RelativeSamplerTestCase):
    @pytest.fixture
    def sampler(self) -> Callable[[], BaseSampler]:
        return _factory


# --------------------------------------------------------------------------------- behaviour
def test_is_a_plateau_sampler_with_the_same_arguments():
    s = BoTorchPlateauSampler(
        TARGET, law="step-law", lr_param="lr", batch_param="batch_size", seed=3
    )
    assert isinstance(s, PlateauSampler)
    assert s.prior.mean.tolist() == PlateauSampler(TARGET).prior.mean.tolist()


def test_lazy_exports():
    import steplaw_opt
    import steplaw_opt.samplers

    assert steplaw_opt.BoTorchPlateauSampler is BoTorchPlateauSampler
    assert steplaw_opt.samplers.BoTorchPlateauSampler is BoTorchPlateauSampler


@pytest.mark.parametrize(
    "kwargs",
    [{"n_bowl": -1}, {"prior_beta": -1.0}, {"clip": 0.0}, {"num_restarts": 0}, {"n_bowl": 1.5}],
)
def test_bad_arguments(kwargs):
    with pytest.raises(SteplawInputError):
        sampler(**kwargs)


def test_law_point_first_then_bowl_lattice_then_gp():
    study = run(sampler(), bowl, 11)
    kinds = [t.system_attrs[ATTR_PROPOSAL]["kind"] for t in study.trials]
    assert kinds[0] == "law"
    assert set(kinds[1:8]) == {"ei"}  # the inherited coarse lattice (n_bowl = n_coarse = 8)
    assert kinds[8:] == ["gp"] * 3
    t0 = study.trials[0]
    assert t0.params["lr"] == pytest.approx(LR0, rel=1e-9)
    gp = study.trials[-1].system_attrs[ATTR_BELIEF]["gp"]
    assert gp["acquisition"] == "LogEI" and gp["pending"] == 0
    assert gp["prior_exponent"] == pytest.approx(10.0 / 10)
    assert len(gp["lengthscale"]) == 2 and gp["noise"] > 0
    assert math.isfinite(gp["log_acquisition"])
    assert study.best_value < 2.5 * math.exp(bowl(0.0, 0.0))


def test_fixed_seed_reproduces():
    a = [tuple(t.params.values()) for t in run(sampler(seed=7, n_bowl=2), banana, 6).trials]
    b = [tuple(t.params.values()) for t in run(sampler(seed=7, n_bowl=2), banana, 6).trials]
    assert a == b


def test_leaves_torch_global_state_alone():
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    run(sampler(n_bowl=1), bowl, 4)
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads


def test_pending_trials_use_qlognei_and_are_not_repeated():
    study = run(sampler(n_bowl=0), bowl, 4)
    running = [study.ask() for _ in range(3)]
    for t in running:
        t.suggest_float("lr", *LR_BOUNDS, log=True)
        t.suggest_float("batch_size", *B_BOUNDS, log=True)
    trial = study.ask()
    lr = trial.suggest_float("lr", *LR_BOUNDS, log=True)
    batch = trial.suggest_float("batch_size", *B_BOUNDS, log=True)
    gp = study._storage.get_trial(trial._trial_id).system_attrs[ATTR_BELIEF]["gp"]
    assert gp["acquisition"] == "qLogNEI" and gp["pending"] == 3
    for t in running:
        close_lr = abs(math.log(lr / t.params["lr"])) < 0.15
        close_b = abs(math.log(batch / t.params["batch_size"])) < 0.15
        assert not (close_lr and close_b)


def test_failures_are_evidence():
    """Every run above the law's lr diverges: the GP sees them at the ceiling and the wall
    keeps later proposals away from them."""

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", *LR_BOUNDS, log=True)
        batch = trial.suggest_float("batch_size", *B_BOUNDS, log=True)
        u = math.log(lr / LR0)
        if u > 0.3:
            return float("nan")
        return 2.5 * math.exp(bowl(u, math.log(batch / B0)))

    study = optuna.create_study(sampler=sampler(n_bowl=0))
    study.optimize(objective, n_trials=12)
    failed = [t for t in study.trials if t.value is None or not math.isfinite(t.value)]
    assert failed, "the fixture should produce failures"
    assert all("error" not in t.system_attrs[ATTR_BELIEF].get("gp", {}) for t in study.trials), (
        "the GP fit fell back to the bowl"
    )
    late = study.trials[-4:]
    assert sum(math.log(t.params["lr"] / LR0) > 0.3 for t in late) <= 1


def test_training_data_clips_and_imputes_failures():
    s = sampler()
    study = run(PlateauSampler(TARGET, seed=0), bowl, 6)
    study.enqueue_trial({"lr": LR0 * 3, "batch_size": B0})
    study.optimize(lambda t: objective_of(bowl)(t) * float("nan"), n_trials=1)
    hist = s.history(study)
    posterior = s.fit(hist)
    w, f, best_f = s._training_data(hist, posterior, 0)
    assert len(w) == len(hist.w) + 1 and best_f == pytest.approx(-float(np.min(hist.y)))
    assert f[-1] == pytest.approx(best_f - 0.05)  # the failure, at the ceiling
    assert np.all(f >= best_f - 0.05 - 1e-12)


def test_proxy_scales_pool():
    """Trials at another scale (user attributes) enter with the bowl's per-scale offset."""
    study = optuna.create_study(sampler=sampler(n_bowl=0))
    proxy = {"steplaw.D": 4e9}
    for _ in range(4):
        study.enqueue_trial({}, user_attrs=proxy)
    study.optimize(objective_of(bowl), n_trials=4)
    study.optimize(objective_of(bowl), n_trials=3)
    kinds = [t.system_attrs[ATTR_PROPOSAL]["kind"] for t in study.trials]
    assert kinds.count("gp") >= 2


# --------------------------------------------------------------------------------- non-bowl
@pytest.mark.slow
def test_beats_the_bowl_on_a_bent_valley():
    """On the banana fixture the GP finds the valley's bottom better than the bowl does.

    Measured over 24 seeds at 10 trials: BoTorch 0.013 % (median 0.0081 %), PlateauSampler
    0.062 % (its best trial: the design step spends runs away from the bottom to locate it).
    One seed's gap ranges from 0.0003 % to 0.04 %, so the mean of six seeds, which this test
    took before, moves by half with any change to the bowl (0.012 % on seeds 0-5; 0.022 %
    there with a curvature scale set by one run, 0.016 % on these 24). With the symmetric
    bowl prior of before (no asymmetry term) BoTorch reached 0.0041 % on six seeds: the
    asymmetry prior, right for the released grids, is wrong for this symmetric valley and the
    GP's mean inherits it."""
    gaps: dict[str, list[float]] = {"plateau": [], "botorch": []}
    for seed in range(24):
        for name, s in (
            ("plateau", PlateauSampler(TARGET, seed=seed)),
            ("botorch", sampler(seed)),
        ):
            study = run(s, banana, 10)
            gaps[name].append(study.best_value / 2.5 - 1)
    assert np.mean(gaps["botorch"]) < 0.7 * np.mean(gaps["plateau"]), gaps
    assert np.mean(gaps["botorch"]) < 2.0e-4, gaps  # within 1.5× of what it reaches


def _refined_gaps(
    study: optuna.Study, sampler: BaseSampler, gap: Callable[[float, float], float], budgets
) -> list[float]:
    """The fixture's ln-loss gap at the refined optimum of the study's first k trials, per k."""
    from steplaw_opt.samplers import refined_optimum

    out = []
    for k in budgets:
        partial = optuna.create_study()
        partial.add_trials(study.trials[:k])
        opt = refined_optimum(partial, sampler=sampler)
        out.append(gap(math.log(opt.lr / LR0), math.log(opt.batch_sequences / B0)))
    return out


def compare(seeds: int = 6, budgets: tuple[int, ...] = (5, 10, 20)) -> None:
    """Print the mean gap (loss / the fixture's minimum − 1) of both samplers: of the refined
    optimum (what a user trains with: the fixtures are noise-free, so it is scored exactly) and
    of the best observed trial.

    ``python -m tests.test_botorch_sampler [seeds]``"""
    from scipy.optimize import minimize

    for name, gap in (("banana", banana), ("cliff", cliff)):
        starts = [(0.0, 0.0), (0.3, 0.0), (0.2, -0.5), (0.5, 0.5)]
        fmin = min(minimize(lambda x, g=gap: g(*x), x0, method="Nelder-Mead").fun for x0 in starts)
        for label, make in (("plateau", PlateauSampler), ("botorch", BoTorchPlateauSampler)):
            best, refined = [], []
            for seed in range(seeds):
                s = make(TARGET, seed=seed)
                study = run(s, gap, max(budgets))
                values = [t.value for t in study.trials]
                best.append([min(values[:k]) / (2.5 * math.exp(fmin)) - 1 for k in budgets])
                refined.append(
                    [math.exp(g - fmin) - 1 for g in _refined_gaps(study, s, gap, budgets)]
                )
            for kind, rows in (("refined", refined), ("best", best)):
                mean = 100 * np.mean(rows, axis=0)
                cells = "  ".join(f"k={k}: {m:.4f} %" for k, m in zip(budgets, mean, strict=True))
                print(f"{name:7s} {label:8s} {kind:8s} {cells}   ({seeds} seeds)")


if __name__ == "__main__":
    import sys

    compare(int(sys.argv[1]) if len(sys.argv) > 1 else 6)
