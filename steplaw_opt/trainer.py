"""The built-in proxy trainer: a small GPT trained the way the Step Law runs were.

One file, read in one sitting (nanoGPT-style). It exists so that ``steplaw-opt tune`` can show
the whole loop — law prediction, proxy runs, refined optimum — on any machine, with no GPU, no
download and no training code of the user's own.

**Model.** A decoder-only transformer on bytes (vocabulary 256): token and learned position
embeddings, ``n_layers`` pre-norm blocks (RMSNorm → causal self-attention → residual, RMSNorm →
SwiGLU feed-forward → residual), a final RMSNorm and an output head TIED to the token
embedding. No biases anywhere. Attention is ``torch.nn.functional.scaled_dot_product_attention``
with ``is_causal=True``.

**N, as the Step Law counts it.** Non-embedding parameters: the block matrices only,
``n_layers · (4 d_model² + 3 d_model d_ff)`` — q, k, v, output projection and the three SwiGLU
matrices — equal to :func:`steplaw_opt.scale.non_embedding_params`. Excluded, as in the paper:
the token and position embeddings, the (tied) output head, and the RMSNorm gains (``d_model``
per norm, ``2 n_layers + 1`` norms). :attr:`TrainResult.N` is counted from the module's actual
parameters (every 2-D tensor inside the blocks), not from the formula.

**Optimisation, as in the Step Law runs.** AdamW with β = (0.9, 0.95), ε = 1e-8, decoupled weight
decay 0.1 on every matrix (block matrices and the embeddings, as nanoGPT does; not on the norm
gains), gradient norm clipped to 1.0. The learning rate warms up linearly over the first
``warmup_fraction`` (default 10 %) of the steps to the peak, then follows a cosine from the peak
down to a FIXED minimum of 1e-5 at the last step — not a fraction of the peak, the paper's
choice (:func:`lr_at`). Initialisation is nanoGPT's: N(0, 0.02), residual output projections
N(0, 0.02/√(2 n_layers)).

**Data and steps.** The batch size is in sequences of ``scale.seq_len`` tokens; the run takes
``steps = max(1, round(D / (batch_size · seq_len)))`` optimizer steps, so the tokens actually
trained (``TrainResult.tokens``) can differ slightly from ``D``. Batches are random windows of
the training part of the corpus, drawn with a generator seeded by ``seed``
(:func:`load_corpus`: by default the Python standard library's own source, as bytes).

**The reported loss.** :attr:`TrainResult.loss`, the number the tuner minimises, is the mean
cross-entropy (nats per byte) on a FIXED held-out set: the same non-overlapping windows of the
held-out 5 % of the corpus for every run, never trained on. Why not the paper's smoothed final
training loss: the Step Law runs see every token once, so their training loss IS a held-out
loss; a tiny corpus here is seen several times, and only the held-out loss stays faithful.
It is also the least noisy choice: every run is scored on identical windows (no batch-sampling
noise), and it has no smoothing lag — an EMA of a still-falling training loss is biased upward
by an amount that depends on the number of steps, i.e. on the batch size being tuned. The
smoothed training loss (EMA, bias-corrected) is reported as :attr:`TrainResult.train_loss`.

**Divergence** does not raise: a non-finite training loss, or a smoothed training loss above
``ln 256 + 1.5`` nats (far worse than guessing bytes uniformly), stops the run and returns
``diverged=True`` with ``loss = val_loss = inf``. A run that exceeds ``time_limit`` raises
:class:`TrainingTimeout` (a failed trial, not a measurement).

**Precision and determinism.** fp32 on CPU (bf16 autocast on CPU is slower for these tiny
matrices and noisier); bf16 autocast on CUDA when the device supports it. On CPU a run is
deterministic given ``seed`` (and the thread count).

Command line (a training-command template for ``steplaw-opt tune``)::

    python -m steplaw_opt.trainer --lr {lr} --batch-size {batch_size} --params 1e5 --tokens 2e6 \\
        --seq-len 128 [--d-model 64 --d-ff 175 --n-layers 2 --n-heads 2] [--corpus PATH] \\
        [--metrics-file F] [--seed S] [--threads T] [--time-limit SECONDS]

prints ``{"step": k, "loss": x}`` JSON lines (smoothed training loss) as it goes and a final
``{"loss": x, "val_loss": ..., "diverged": false, ...}`` line (also written to
``--metrics-file``). Exit codes: 0 trained; 2 bad input (one ``error: …`` line on stderr);
3 diverged (the final line has ``"diverged": true`` and ``"loss": null``); 4 time limit.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from steplaw_opt.errors import SteplawInputError
from steplaw_opt.scale import Scale, non_embedding_params

VOCAB_SIZE = 256  # byte-level tokens
MIN_LR = 1e-5  # the Step Law runs' fixed final learning rate
BETAS = (0.9, 0.95)
WEIGHT_DECAY = 0.1
GRAD_CLIP = 1.0
WARMUP_FRACTION = 0.1
HEAD_DIM = 32  # head size chosen by shape_for_params (tiny models)
DIVERGED_LOSS = math.log(VOCAB_SIZE) + 1.5  # smoothed loss this far above uniform = exploded
CORPUS_CAP_BYTES = 8 * 2**20  # the default corpus: the first 8 MiB of the stdlib's source
HOLDOUT_CHUNK = 64 * 1024  # the corpus is cut in 64 KiB chunks; every 20th is held out
HOLDOUT_EVERY = 20  # → 5 % held out, spread over the whole corpus
MIN_CORPUS_BYTES = 16 * 1024
EVAL_TOKENS = 2**17  # held-out tokens scored per run (fixed windows, the same for every run)

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_TIME_LIMIT = 4


class TrainingTimeout(TimeoutError):
    """A run was stopped by its ``time_limit``: it produced no final loss."""


# ----------------------------------------------------------------------------------- the model


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain and no bias (not counted in N)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: 4 d_model² parameters (q, k, v and output)."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_heads, c // self.n_heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class SwiGLU(nn.Module):
    """Gated feed-forward block, as in the Step Law models: 3 d_model d_ff parameters."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.gate = nn.Linear(d_model, d_ff, bias=False)
        self.up = nn.Linear(d_model, d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    """One pre-norm decoder block."""

    def __init__(self, d_model: int, d_ff: int, n_heads: int) -> None:
        super().__init__()
        self.norm1 = RMSNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.norm2 = RMSNorm(d_model)
        self.ffn = SwiGLU(d_model, d_ff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class GPT(nn.Module):
    """A byte-level decoder-only transformer with tied input and output embeddings."""

    def __init__(self, d_model: int, d_ff: int, n_layers: int, n_heads: int, seq_len: int) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.wte = nn.Embedding(VOCAB_SIZE, d_model)
        self.wpe = nn.Embedding(seq_len, d_model)
        self.blocks = nn.ModuleList(Block(d_model, d_ff, n_heads) for _ in range(n_layers))
        self.norm_f = RMSNorm(d_model)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "ffn.down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def non_embedding_params(self) -> int:
        """N as the Step Law counts it: the blocks' matrices (no norms, embeddings or head)."""
        return sum(p.numel() for p in self.blocks.parameters() if p.dim() == 2)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for ``idx`` (batch, time); with ``targets``, the mean cross-entropy instead."""
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        logits = F.linear(self.norm_f(x), self.wte.weight)  # tied output head
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().view(-1, VOCAB_SIZE), targets.reshape(-1))


# ----------------------------------------------------------------------------------- the shape


@dataclass(frozen=True)
class Shape:
    """The model's shape. ``n_heads`` must divide ``d_model``."""

    d_model: int
    d_ff: int
    n_layers: int
    n_heads: int

    @property
    def N(self) -> int:
        return non_embedding_params(self.d_model, self.d_ff, self.n_layers, gated_ffn=True)


def shape_for_params(N: float, seq_len: int = 128) -> Shape:
    """A sensible small shape whose non-embedding count is within 1 % of ``N``.

    How: with d_ff ≈ 8/3 d_model (the usual SwiGLU ratio) a block holds 12 d_model² parameters;
    aim at d_model ≈ 32 · n_layers (aspect ratio 32, a shallow-and-wide choice that is fast on a
    CPU), so ``n_layers = round((N / 12288)^(1/3))`` (at least 1) and ``d_model`` is
    ``√(N / 12 n_layers)`` rounded to a multiple of 32 (at least 32). Then ``d_ff`` is the whole
    number that brings the count closest to ``N`` — any ``N`` ≥ ~20k is matched to well under
    1 %. Heads of size 32. ``seq_len`` does not change the choice; it is accepted so callers can
    pass the whole scale.

    >>> shape_for_params(1e5)
    Shape(d_model=64, d_ff=175, n_layers=2, n_heads=2)
    """
    if not math.isfinite(N) or N <= 0:
        raise SteplawInputError(f"N must be positive and finite, got {N!r}")
    n_layers = max(1, round((N / 12288) ** (1 / 3)))
    d_model = max(32, 32 * round(math.sqrt(N / (12 * n_layers)) / 32))
    d_ff = round((N / n_layers - 4 * d_model * d_model) / (3 * d_model))
    if d_ff < 1:
        raise SteplawInputError(f"N={N:.4g} is too small for a transformer with d_model=32")
    shape = Shape(d_model, d_ff, n_layers, max(1, d_model // HEAD_DIM))
    if abs(shape.N / N - 1) > 0.01:
        raise SteplawInputError(f"no shape matches N={N:.4g} within 1 % (closest {shape.N})")
    return shape


def shape_of(scale: Scale) -> Shape:
    """The shape the trainer builds for ``scale``: its own (``d_model``, ``d_ff``, ``n_layers``)
    when it has one, else :func:`shape_for_params` of its N; one line when it cannot."""
    if not scale.gated_ffn:
        raise SteplawInputError("the built-in trainer has a gated (SwiGLU) FFN; gated_ffn=False")
    if scale.vocab_size is not None and scale.vocab_size != VOCAB_SIZE:
        raise SteplawInputError(
            f"the built-in trainer is byte-level (vocab 256), not {scale.vocab_size}"
        )
    if not scale.has_shape:
        assert scale.N is not None
        return shape_for_params(scale.N, scale.seq_len)
    assert scale.d_model is not None and scale.d_ff is not None and scale.n_layers is not None
    d_model, d_ff, n_layers = scale.d_model, scale.d_ff, scale.n_layers
    n_heads = scale.n_heads or max(1, d_model // HEAD_DIM)
    if d_model % n_heads:
        raise SteplawInputError(f"n_heads={n_heads} does not divide d_model={d_model}")
    return Shape(d_model, d_ff, n_layers, n_heads)


# ---------------------------------------------------------------------------------- the corpus

_CORPUS_CACHE: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def _stdlib_bytes(cap: int) -> bytes:
    """The standard library's .py files (no site-packages), in sorted path order, up to ``cap``."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        (p for p in root.rglob("*.py") if not {"site-packages", "dist-packages"} & set(p.parts)),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    return _concat(files, cap)


def _concat(files: list[Path], cap: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    for path in files:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        parts.append(data + b"\n")
        size += len(data) + 1
        if size >= cap:
            break
    return b"".join(parts)[:cap]


def load_corpus(corpus: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The (train, held-out) byte tensors (uint8) of a corpus, cached per process.

    ``None`` is the Python standard library's own source — every ``.py`` file under
    ``sysconfig.get_paths()["stdlib"]`` outside site-packages, in sorted path order, the first
    8 MiB — real text present on every machine with Python (its exact bytes follow the Python
    version). A path is one text file, or a folder whose files (recursively, sorted) are read
    as bytes, capped at 64 MiB. The bytes are cut into 64 KiB chunks and every 20th chunk goes
    to the held-out part (5 %, spread over the whole corpus), which training never sees; a corpus
    under 1.25 MiB holds out its last 5 % instead.
    """
    key = "<stdlib>" if corpus is None else str(Path(corpus).resolve())
    if key in _CORPUS_CACHE:
        return _CORPUS_CACHE[key]
    if corpus is None:
        data = _stdlib_bytes(CORPUS_CAP_BYTES)
    else:
        path = Path(corpus)
        if path.is_file():
            data = path.read_bytes()[: 8 * CORPUS_CAP_BYTES]
        elif path.is_dir():
            files = sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.as_posix())
            data = _concat(files, 8 * CORPUS_CAP_BYTES)
        else:
            raise SteplawInputError(f"corpus {str(corpus)!r} is neither a file nor a folder")
    if len(data) < MIN_CORPUS_BYTES:
        raise SteplawInputError(f"corpus {key!r} has {len(data)} bytes; at least 16 KiB needed")
    if len(data) >= HOLDOUT_EVERY * HOLDOUT_CHUNK:
        chunks = [data[i : i + HOLDOUT_CHUNK] for i in range(0, len(data), HOLDOUT_CHUNK)]
        last = HOLDOUT_EVERY - 1
        train = b"".join(c for i, c in enumerate(chunks) if i % HOLDOUT_EVERY != last)
        held = b"".join(c for i, c in enumerate(chunks) if i % HOLDOUT_EVERY == last)
    else:  # a small corpus: the last 5 %
        cut = len(data) - len(data) // HOLDOUT_EVERY
        train, held = data[:cut], data[cut:]
    pair = (
        torch.frombuffer(bytearray(train), dtype=torch.uint8),
        torch.frombuffer(bytearray(held), dtype=torch.uint8),
    )
    _CORPUS_CACHE[key] = pair
    return pair


def _windows(data: torch.Tensor, starts: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Windows of ``seq_len + 1`` bytes at ``starts``, as int64 token ids (batch, seq_len + 1)."""
    return data[starts[:, None] + torch.arange(seq_len + 1)].long()


# -------------------------------------------------------------------------------- the schedule


def warmup_steps(steps: int, warmup_fraction: float = WARMUP_FRACTION) -> int:
    """Linear-warmup length: ``warmup_fraction`` of the steps, at least 1."""
    return max(1, round(warmup_fraction * steps))


def lr_at(step: int, steps: int, peak: float, warmup: int, min_lr: float = MIN_LR) -> float:
    """Learning rate of optimizer step ``step`` (0-based) of ``steps``.

    Linear warmup reaching ``peak`` at step ``warmup - 1``; then a cosine from ``peak`` (step
    ``warmup``) to exactly ``min_lr`` at the last step ``steps - 1``. The floor is a fixed
    1e-5, as in the Step Law runs, capped at the peak so that a peak below 1e-5 stays flat.
    """
    floor = min(min_lr, peak)
    if step < warmup:
        return peak * (step + 1) / warmup
    span = steps - 1 - warmup
    if span <= 0:
        return floor if step >= steps - 1 and steps > warmup else peak
    progress = min(1.0, (step - warmup) / span)
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


# -------------------------------------------------------------------------------- the training


@dataclass(frozen=True)
class TrainResult:
    """What one run measured.

    ``loss`` is the held-out loss the tuner minimises (``inf`` if diverged); ``val_loss`` the
    same number (kept under both names for objectives that expect either); ``train_loss`` the
    smoothed final training loss (EMA over the last ~50 steps, bias-corrected); ``N`` counted
    from the module; ``tokens`` = steps · batch_size · seq_len actually trained.
    """

    loss: float
    val_loss: float
    train_loss: float
    diverged: bool
    steps: int
    tokens: int
    seconds: float
    N: int
    lr: float
    batch_size: int
    seq_len: int
    d_model: int
    d_ff: int
    n_layers: int
    n_heads: int
    seed: int
    device: str

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: non-finite losses become ``None``."""
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in asdict(self).items()
        }


def default_device() -> str:
    """CUDA when present, else CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@torch.no_grad()
def evaluate(
    model: GPT, held_out: torch.Tensor, seq_len: int, device: str, tokens: int = EVAL_TOKENS
) -> float:
    """Mean cross-entropy on fixed, evenly spaced, non-overlapping held-out windows."""
    n = max(1, min(tokens // seq_len, (len(held_out) - 1) // seq_len))
    starts = torch.linspace(0, len(held_out) - seq_len - 1, n).long()
    model.eval()
    total = 0.0
    for chunk in starts.split(64):
        w = _windows(held_out, chunk, seq_len).to(device)
        with _autocast(device):
            total += float(model(w[:, :-1], w[:, 1:])) * len(chunk)
    model.train()
    return total / n


def _autocast(device: str) -> torch.autocast:
    enabled = device.startswith("cuda") and torch.cuda.is_bf16_supported()
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=enabled)


def train(
    lr: float,
    batch_size: int,
    scale: Scale,
    *,
    corpus: str | Path | None = None,
    device: str | None = None,
    seed: int = 0,
    report: Callable[[int, float], None] | None = None,
    report_every: int | None = None,
    time_limit: float | None = None,
    warmup_fraction: float = WARMUP_FRACTION,
    eval_tokens: int = EVAL_TOKENS,
) -> TrainResult:
    """Train the built-in GPT at ``scale`` with peak learning rate ``lr`` and ``batch_size``.

    Args:
        lr: peak learning rate (after warmup; the cosine ends at a fixed 1e-5).
        batch_size: sequences of ``scale.seq_len`` tokens per optimizer step.
        scale: N and D, ``seq_len``, and optionally the shape; without a shape one is chosen by
            :func:`shape_for_params`. ``steps = max(1, round(D / (batch_size · seq_len)))``.
        corpus: a text file or folder; ``None`` is the Python standard library's source.
        device: ``"cpu"``, ``"cuda"``, …; ``None`` picks CUDA when present.
        seed: seeds the initialisation and the batch sampling.
        report: called as ``report(step, smoothed_training_loss)`` every ``report_every`` steps
            (default: about 25 reports per run) and at the last step.
        time_limit: seconds; exceeding it raises :class:`TrainingTimeout`.
        warmup_fraction: fraction of the steps spent in linear warmup (default 10 %).
        eval_tokens: held-out tokens scored at the end (fixed windows).

    Returns:
        :class:`TrainResult`. A diverged run returns ``diverged=True`` and ``loss=inf``.

    Raises:
        SteplawInputError: bad lr, batch size, shape or corpus.
        TrainingTimeout: the run took longer than ``time_limit``.
    """
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise SteplawInputError(f"lr must be positive and finite, got {lr!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SteplawInputError(
            f"batch_size must be a whole number ≥ 1 (sequences), got {batch_size!r}"
        )
    if not 0 <= warmup_fraction < 1:
        raise SteplawInputError(f"warmup_fraction must be in [0, 1), got {warmup_fraction!r}")
    shape = shape_of(scale)
    seq_len = scale.seq_len
    train_data, held_out = load_corpus(corpus)
    if len(train_data) <= seq_len + 1 or len(held_out) <= seq_len + 1:
        raise SteplawInputError(f"corpus too small for seq_len={seq_len}")
    device = device or default_device()
    assert scale.D is not None
    steps = max(1, round(scale.D / (batch_size * seq_len)))
    warmup = warmup_steps(steps, warmup_fraction)
    every = report_every or max(1, steps // 25)

    start = time.perf_counter()
    torch.manual_seed(seed)
    model = GPT(shape.d_model, shape.d_ff, shape.n_layers, shape.n_heads, seq_len).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": WEIGHT_DECAY},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
        betas=BETAS,
        eps=1e-8,
    )
    gen = torch.Generator().manual_seed(seed)
    high = len(train_data) - seq_len - 1

    ema, ema_weight, beta = 0.0, 0.0, 0.98  # smoothed training loss, bias-corrected
    diverged = False
    step = 0
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        w = _windows(train_data, torch.randint(0, high + 1, (batch_size,), generator=gen), seq_len)
        w = w.to(device)
        with _autocast(device):
            loss = model(w[:, :-1], w[:, 1:])
        value = float(loss.detach())
        if not math.isfinite(value):
            diverged = True
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        ema, ema_weight = beta * ema + (1 - beta) * value, beta * ema_weight + (1 - beta)
        if ema / ema_weight > DIVERGED_LOSS:
            diverged = True
            break
        if report is not None and ((step + 1) % every == 0 or step + 1 == steps):
            report(step + 1, ema / ema_weight)
        if time_limit is not None and time.perf_counter() - start > time_limit:
            raise TrainingTimeout(
                f"stopped after {step + 1} of {steps} steps: over {time_limit:g} s"
            )

    train_loss = ema / ema_weight if ema_weight else math.inf
    val_loss = math.inf if diverged else evaluate(model, held_out, seq_len, device, eval_tokens)
    if not math.isfinite(val_loss):
        diverged = True
    if diverged:
        train_loss = val_loss = math.inf
    done = step + 1
    return TrainResult(
        loss=val_loss,
        val_loss=val_loss,
        train_loss=train_loss,
        diverged=diverged,
        steps=done,
        tokens=done * batch_size * seq_len,
        seconds=time.perf_counter() - start,
        N=model.non_embedding_params(),
        lr=float(lr),
        batch_size=batch_size,
        seq_len=seq_len,
        d_model=shape.d_model,
        d_ff=shape.d_ff,
        n_layers=shape.n_layers,
        n_heads=shape.n_heads,
        seed=seed,
        device=device,
    )


# ----------------------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m steplaw_opt.trainer",
        description="Train the built-in byte-level GPT once; print JSON lines and a final loss.",
    )
    p.add_argument("--lr", type=float, required=True, help="peak learning rate")
    p.add_argument("--batch-size", type=float, required=True, help="sequences per step")
    p.add_argument("--params", default=None, help="non-embedding parameters N (1e5, 100k)")
    p.add_argument("--tokens", required=True, help="training tokens D (2e6, 20M)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--d-model", type=int)
    p.add_argument("--d-ff", type=int)
    p.add_argument("--n-layers", type=int)
    p.add_argument("--n-heads", type=int)
    p.add_argument("--corpus", default=None, help="text file or folder (default: Python stdlib)")
    p.add_argument("--metrics-file", default=None, help="also write the final JSON here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, … (default: cuda if present)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--time-limit", type=float, default=None, help="seconds (exit 4 if over)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m steplaw_opt.trainer``; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        from steplaw_opt.sizes import parse_size

        if args.batch_size != int(args.batch_size):
            raise SteplawInputError(f"--batch-size must be a whole number, got {args.batch_size:g}")
        if args.threads is not None:
            if args.threads < 1:
                raise SteplawInputError(f"--threads must be ≥ 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        scale = Scale(
            N=parse_size(args.params, "--params") if args.params is not None else None,
            D=parse_size(args.tokens, "--tokens"),
            seq_len=args.seq_len,
            d_model=args.d_model,
            d_ff=args.d_ff,
            n_layers=args.n_layers,
            n_heads=args.n_heads,
        )

        def report(step: int, loss: float) -> None:
            print(json.dumps({"step": step, "loss": round(loss, 6)}), flush=True)

        result = train(
            args.lr,
            int(args.batch_size),
            scale,
            corpus=args.corpus,
            device=args.device,
            seed=args.seed,
            report=report,
            time_limit=args.time_limit,
        )
    except SteplawInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingTimeout as exc:
        print(f"error: time limit: {exc}", file=sys.stderr)
        return EXIT_TIME_LIMIT
    line = json.dumps(result.to_dict())
    print(line, flush=True)
    if args.metrics_file:
        Path(args.metrics_file).write_text(line + "\n")
    if result.diverged:
        print(f"error: diverged at lr={args.lr:g}, batch {int(args.batch_size)}", file=sys.stderr)
        return EXIT_DIVERGED
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
