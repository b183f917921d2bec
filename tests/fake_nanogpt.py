"""A stand-in for nanoGPT's train.py (Karpathy's nanoGPT is not a dependency): the same command
line (a config file, then ``--key=value`` overrides, checked as nanoGPT's configurator checks
them: known keys, the default's type), the same training loop order and the same log lines:

    step 0: train loss 4.2000, val loss 4.2500
    iter 0: loss 4.2123, time 12.34ms, mfu -100.00%

Like train.py it saves ``ckpt.pt`` in ``out_dir`` at an evaluation after iteration 0 whose
validation loss is the best so far (or at every one, ``always_save_checkpoint``), and its
schedule divides by ``lr_decay_iters - warmup_iters`` (and asserts the ratio is in [0, 1]).

The loss is a made-up function of the peak learning rate, the batch size and the schedule
(a floor that is a bowl around lr 3e-3, batch 16; the curve falls towards it with the area
under the lr schedule, so a warmup longer than the run or an accumulation of 40 micro-batches
shows). A run is scored by the area relative to its own length, so the lowest final loss lies
near lr 1e-2 (1.66 at batch 16, against 2.19 at 3e-3 and 3.22 at 1e-3) at every run length: the
loss is steep and concave in ln lr below it, and its optimum does not move with the tokens as
the Step Law's does. It runs in milliseconds; an lr above 0.05 diverges and prints ``nan``.
"""

from __future__ import annotations

import math
import os
import sys
from ast import literal_eval

# nanoGPT train.py's defaults (the keys the configurator accepts)
CONFIG: dict[str, object] = {
    "out_dir": "out", "eval_interval": 2000, "log_interval": 1, "eval_iters": 200,
    "eval_only": False, "always_save_checkpoint": True, "init_from": "scratch",
    "wandb_log": False, "wandb_project": "owt", "wandb_run_name": "gpt2",
    "dataset": "openwebtext", "gradient_accumulation_steps": 5 * 8, "batch_size": 12,
    "block_size": 1024, "n_layer": 12, "n_head": 12, "n_embd": 768, "dropout": 0.0,
    "bias": False, "learning_rate": 6e-4, "max_iters": 600000, "weight_decay": 1e-1,
    "beta1": 0.9, "beta2": 0.95, "grad_clip": 1.0, "decay_lr": True, "warmup_iters": 2000,
    "lr_decay_iters": 600000, "min_lr": 6e-5, "backend": "nccl", "device": "cuda",
    "dtype": "bfloat16", "compile": True,
}  # fmt: skip
# config/train_shakespeare_char.py
SHAKESPEARE_CHAR: dict[str, object] = {
    "out_dir": "out-shakespeare-char", "eval_interval": 250, "eval_iters": 200,
    "log_interval": 10, "always_save_checkpoint": False, "wandb_log": False,
    "dataset": "shakespeare_char", "gradient_accumulation_steps": 1, "batch_size": 64,
    "block_size": 256, "n_layer": 6, "n_head": 6, "n_embd": 384, "dropout": 0.2,
    "learning_rate": 1e-3, "max_iters": 5000, "lr_decay_iters": 5000, "min_lr": 1e-4,
    "beta2": 0.99, "warmup_iters": 100,
}  # fmt: skip


def configure(argv: list[str]) -> dict[str, object]:
    """nanoGPT's configurator.py: config files, then ``--key=value`` overrides."""
    config = dict(CONFIG)
    for arg in argv:
        if "=" not in arg:
            assert not arg.startswith("--"), f"not an override: {arg}"
            if os.path.basename(arg) != "train_shakespeare_char.py":
                raise FileNotFoundError(arg)
            config.update(SHAKESPEARE_CHAR)
            continue
        assert arg.startswith("--"), arg
        key, val = arg.split("=")
        key = key[2:]
        if key not in config:
            raise ValueError(f"Unknown config key: {key}")
        try:
            attempt = literal_eval(val)
        except (SyntaxError, ValueError):
            attempt = val
        wanted = type(config[key]).__name__
        assert type(attempt) is type(config[key]), f"{key}: {attempt!r} is not a {wanted}"
        print(f"Overriding: {key} = {attempt}")
        config[key] = attempt
    return config


def get_lr(it: int, c: dict[str, object]) -> float:
    """nanoGPT's schedule: linear warmup, cosine to min_lr at lr_decay_iters, then min_lr."""
    lr, warmup, decay, min_lr = (
        float(c["learning_rate"]), int(c["warmup_iters"]),  # type: ignore[arg-type]
        int(c["lr_decay_iters"]), float(c["min_lr"]),  # type: ignore[arg-type]
    )  # fmt: skip
    if not c["decay_lr"]:
        return lr
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay:
        return min_lr
    ratio = (it - warmup) / (decay - warmup)  # ZeroDivisionError when they are equal
    assert 0 <= ratio <= 1
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def main() -> None:
    c = configure(sys.argv[1:])
    max_iters, accum = int(c["max_iters"]), int(c["gradient_accumulation_steps"])  # type: ignore[arg-type]
    batch, block = int(c["batch_size"]), int(c["block_size"])  # type: ignore[arg-type]
    lr = float(c["learning_rate"])  # type: ignore[arg-type]
    print(f"tokens per iteration will be: {accum * batch * block:,}")
    os.makedirs(str(c["out_dir"]), exist_ok=True)
    print("Initializing a new model from scratch")
    print("number of parameters: 0.80M")
    # the made-up landscape: a bowl in (ln lr, ln batch·accum), reached by the lr area
    floor = 1.45 + 0.12 * math.log(lr / 3e-3) ** 2 + 0.04 * math.log(batch * accum / 16) ** 2
    area, scale = 0.0, 0.4 * 3e-3 * max(1, max_iters)

    def loss_at() -> float:
        return floor + (4.17 - floor) * math.exp(-area / scale)

    best_val_loss = 1e9
    for it in range(max_iters + 1):
        diverged = lr > 0.05 and it >= 3
        if it % int(c["eval_interval"]) == 0:  # type: ignore[arg-type]
            value = math.nan if diverged else loss_at()
            print(f"step {it}: train loss {value - 0.03:.4f}, val loss {value:.4f}")
            if value < best_val_loss or c["always_save_checkpoint"]:
                best_val_loss = value
                if it > 0:
                    print(f"saving checkpoint to {c['out_dir']}")
                    with open(os.path.join(str(c["out_dir"]), "ckpt.pt"), "wb") as fh:
                        fh.write(b"model and optimizer state")
        area += get_lr(it, c)
        if it % int(c["log_interval"]) == 0:  # type: ignore[arg-type]
            noisy = math.nan if diverged else loss_at() + 0.02 * math.sin(it)
            mfu = -100.0 if it < 5 else 1.23
            print(f"iter {it}: loss {noisy:.4f}, time {12.3 + it % 3:.2f}ms, mfu {mfu:.2f}%")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
