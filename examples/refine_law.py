"""Refining the Step Law for your own runs (a new architecture, optimiser or data mix).

Fits a law to grid runs in the released CSV format and refines the published card with them;
here the released dense runs at the two smallest N stand in for "your" runs.

    python examples/refine_law.py [path/to/dense_lr_bs_loss.csv]
"""

import sys

import pandas as pd

from steplaw_opt import load_law
from steplaw_opt.bench import default_grid_path
from steplaw_opt.priors import refine_law, runs_from_frame

frame = pd.read_csv(sys.argv[1] if len(sys.argv) > 1 else default_grid_path())
mine = frame[frame["N"] <= frame["N"].drop_duplicates().nsmallest(2).max()]
runs = runs_from_frame(mine, loss_col="smooth loss")
result = refine_law(load_law("step-law"), runs)
print(result.law.lr_formula, result.law.batch_formula)
print(f"contradiction test: {result.verdict} (p = {result.p_value:.3g})")
