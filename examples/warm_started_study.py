"""A warm-started Optuna study in ten lines: the Step Law as the prior of PlateauSampler.

The objective replays the Step Law authors' released grid (the measured loss of the nearest
run), so this runs in seconds without training anything; replace it with your training job.

    python examples/warm_started_study.py [path/to/dense_lr_bs_loss.csv]
"""

import sys

import optuna

from steplaw_opt.bench import load_grids
from steplaw_opt.samplers import PlateauSampler, refined_optimum

setting = load_grids(sys.argv[1] if len(sys.argv) > 1 else None)[8]  # N=429M, D=8B
sampler = PlateauSampler(setting.scale, seed=0)
study = optuna.create_study(sampler=sampler)
study.optimize(
    lambda t: setting.loss_at(
        t.suggest_float("lr", 2e-4, 2e-2, log=True),
        t.suggest_float("batch_size", 16, 2048, log=True),
    ),
    n_trials=5,
)
opt = refined_optimum(study, sampler=sampler, round_batch="pow2")
print(
    f"best of 5: {study.best_value:.4f} ({setting.gap(study.best_value):.3%} above the grid's "
    f"best); train with lr {opt.lr:.3g}, batch {opt.batch_sequences_rounded:.0f} sequences"
)
