"""PlateauSampler from OptunaHub on a cheap stand-in for a training run.

The objective is a convex bowl in (ln lr, ln batch) whose bottom sits at 1.4× the Step Law's
learning rate and 0.7× its batch size: the law is close but not exact, as on real runs. Eight
trials, a few seconds on a CPU.

    pip install optunahub steplaw-opt
    python example.py
"""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import optunahub

# This file's own registry checkout (package/samplers/steplaw_plateau/ in optunahub-registry,
# optunahub/samplers/steplaw_plateau/ in steplaw-opt). Once the package is published,
# optunahub.load_module("samplers/steplaw_plateau") loads the same module from OptunaHub.
module = optunahub.load_local_module(
    package="samplers/steplaw_plateau", registry_root=str(Path(__file__).resolve().parents[2])
)

target = module.Scale(N=4.29e8, D=4e10)  # the run about to be trained: 429M params, 40B tokens
sampler = module.PlateauSampler(target, seed=0)  # law="step-law", batch in sequences of 2048
law = sampler.law.predict(target)
law_batch = law.batch_tokens / target.seq_len
best_lr, best_batch = 1.4 * law.lr, 0.7 * law_batch  # the stand-in landscape's true optimum


def objective(trial: optuna.Trial) -> float:
    lr = trial.suggest_float("lr", 1e-4, 3e-2, log=True)
    batch_size = trial.suggest_int("batch_size", 16, 2048, log=True)
    u, v = math.log(lr / best_lr), math.log(batch_size / best_batch)
    return 2.5 * (1 + 0.01 * u * u + 0.004 * v * v)  # a short run's final loss


optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.create_study(sampler=sampler)
study.optimize(objective, n_trials=8)
opt = module.refined_optimum(study, sampler=sampler)
print(f"law's point:     lr {law.lr:.3g}, batch {law_batch:.0f} sequences")
print(f"best trial:      lr {study.best_params['lr']:.3g}, batch {study.best_params['batch_size']}")
print(f"refined optimum: lr {opt.lr:.3g}, batch {opt.batch_sequences:.0f} sequences")
print(f"true optimum:    lr {best_lr:.3g}, batch {best_batch:.0f} sequences")
