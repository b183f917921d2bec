"""Tune nanoGPT's learning rate and batch size with steplaw-opt, train.py as it is.

Run it from a nanoGPT checkout (https://github.com/karpathy/nanoGPT) after
``python data/shakespeare_char/prepare.py``::

    python /path/to/steplaw-opt/examples/nanogpt/recipe.py            # the CPU-sized target
    python /path/to/steplaw-opt/examples/nanogpt/recipe.py --dry-run  # the plan only
    python /path/to/steplaw-opt/examples/nanogpt/recipe.py --print    # the shell command
    python /path/to/steplaw-opt/examples/nanogpt/recipe.py --ladder   # proxies at smaller models

Anything after the script's name is passed on to ``steplaw-opt tune`` (``--budget 0.5``,
``--storage …``). README.md in this folder says why every override in :data:`TEMPLATE` is there.
The constants here are the recipe; tests/test_nanogpt_recipe.py drives them through a real
``tune`` with a stand-in for train.py, and checks README.md shows the same command.
"""

from __future__ import annotations

import shlex
import sys

TRAIN = "python train.py"  # how the template starts nanoGPT (run from its checkout)

# The CPU example of nanoGPT's README (a 0.8M-parameter character model), made step-driven:
# steplaw-opt decides the learning rate, the batch and the length of each run, and every
# length nanoGPT measures in iterations follows from them.
TEMPLATE = (
    f"{TRAIN} config/train_shakespeare_char.py"
    " --device=cpu --compile=False --dtype=float32"
    " --n_layer=4 --n_head=4 --n_embd=128 --dropout=0.0"
    " --block_size={seq_len} --batch_size={batch_size} --gradient_accumulation_steps=1"
    " --learning_rate={lr} --max_iters={steps}"
    " --warmup_iters={warmup_steps} --lr_decay_iters={decay_steps}"
    " --eval_interval={steps} --eval_iters=50 --log_interval=10"
    " --out_dir={trial_dir} --always_save_checkpoint=False"
)

# The final loss: the validation loss nanoGPT prints at its last evaluation (at max_iters,
# because eval_interval = max_iters); `[^\s,]+` also takes "nan", so a blown-up run is
# recorded as diverged rather than as "no loss".
LOSS_PATTERN = r"step (?P<step>\d+): train loss [^\s,]+, val loss (?P<loss>[^\s,]+)"
# The intermediate losses: the training loss of every log_interval-th iteration.
PROGRESS_PATTERN = r"iter (?P<step>\d+): loss (?P<loss>[^\s,]+)"

# The target: that model (12 · n_layer · n_embd² = 0.79M non-embedding parameters) trained
# for 2,000 iterations of 12 sequences of 64 tokens, as nanoGPT's CPU example does.
TARGET = ["--params", "786k", "--tokens", "1536000", "--seq-len", "64"]
# The learning rate's search bounds: a decade either side of 3e-3, around the law's points
# (0.0038 for the first proxy runs, 0.0089 for the target) and nanoGPT's own 1e-3. The default
# bounds reach e^6 past the law on either side, capped at lr 1: runs there only diverge, and a
# failed run is no loss for the model, so a study whose first runs all lie below the optimum
# can be drawn to the cap (README.md, "The search bounds").
LR_BOUNDS = ["--lr-min", "3e-4", "--lr-max", "3e-2"]
STUDY = [
    "--study-name",
    "nanogpt-shakespeare-char-cpu",
    "--storage",
    "sqlite:///steplaw-nanogpt.db",
]


# The ladder: the same recipe with the model's size left to {model_args}, and three nanoGPT
# models it may build (N = 12 · n_layer · n_embd², counted as the Step Law counts N). The two
# below the target's N are the proxy rungs; each trains on the target's tokens per parameter,
# and its cost is (N_rung / N_target)² of a target run. The target's own entry makes a run at
# the target's size (a planned --target-runs, or your final run) build the right model.
MODEL_SIZE = " --n_layer=4 --n_head=4 --n_embd=128"
LADDER_TEMPLATE = TEMPLATE.replace(MODEL_SIZE, " {model_args}", 1)
LADDER_MODELS = [
    "--model",
    "786432=--n_layer=4 --n_head=4 --n_embd=128",
    "--model",
    "196608=--n_layer=1 --n_head=4 --n_embd=128",
    "--model",
    "98304=--n_layer=2 --n_head=4 --n_embd=64",
]
LADDER_STUDY = [
    "--study-name",
    "nanogpt-shakespeare-char-cpu-ladder",
    "--storage",
    "sqlite:///steplaw-nanogpt.db",
]


def ladder_args(template: str = LADDER_TEMPLATE, study: list[str] = LADDER_STUDY) -> list[str]:
    """The ``steplaw-opt tune`` arguments of the ladder recipe: proxies at smaller models."""
    args = tune_args(template, study)
    # the target's size exactly as its model config counts it
    args[args.index("--params") + 1] = "786432"
    return [*args, *LADDER_MODELS]


def tune_args(template: str = TEMPLATE, study: list[str] = STUDY) -> list[str]:
    """The ``steplaw-opt tune`` arguments of the recipe (``study``: where it is stored)."""
    return [
        *TARGET,
        *LR_BOUNDS,
        *study,
        "--command",
        template,
        "--loss-pattern",
        LOSS_PATTERN,
        "--progress-pattern",
        PROGRESS_PATTERN,
        "--warmup-fraction",
        "0.05",
        "--decay-fraction",
        "1.0",
    ]


def main(argv: list[str]) -> None:
    ladder = "--ladder" in argv
    argv = [a for a in argv if a != "--ladder"]
    args = ladder_args() if ladder else tune_args()
    if "--print" in argv:
        rest = [a for a in argv if a != "--print"]
        print(shlex.join(["steplaw-opt", "tune", *args, *rest]))
        return
    from steplaw_opt.cli import main as cli

    cli(["tune", *args, *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
