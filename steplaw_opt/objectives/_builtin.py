"""The built-in proxy trainer as the objective (imports torch)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from steplaw_opt.objectives._base import Objective, RunContext, TrialFailed
from steplaw_opt.scale import Scale


class BuiltinTrainerObjective(Objective):
    """Trains the built-in nanoGPT-style model (:mod:`steplaw_opt.trainer`) at each run's scale.

    Every run uses the same ``seed`` (same initialisation and batch order): common random
    numbers, so two runs differ by their hyperparameters, not by luck. ``batch_size`` is in
    sequences of ``scale.seq_len``. The loss is the held-out loss (see
    :class:`steplaw_opt.trainer.TrainResult`).
    """

    name = "builtin"

    def __init__(
        self,
        *,
        corpus: str | Path | None = None,
        device: str | None = None,
        seed: int = 0,
    ) -> None:
        from steplaw_opt import trainer

        self._trainer = trainer
        self.corpus = corpus
        self.device = device
        self.seed = seed
        if corpus is not None:
            trainer.load_corpus(corpus)  # fail now, with the path named, not in trial 1

    def check_scales(self, scales: Sequence[Scale]) -> None:
        """Every planned model size must have a shape
        (:func:`~steplaw_opt.trainer.shape_for_params`: a rung of a ladder far below the
        target can be too small for a transformer)."""
        for scale in scales:
            self._trainer.shape_of(scale)

    def expected_seconds(self, scale: Scale) -> float | None:
        """6·N·D FLOPs at the trainer's rate on its device (an order of magnitude:
        :data:`~steplaw_opt._timing.BUILTIN_FLOPS`)."""
        from steplaw_opt._timing import builtin_flops

        device = self.device or self._trainer.default_device()
        return 6.0 * float(scale.N or 0) * float(scale.D or 0) / builtin_flops(device)

    def run(self, lr: float, batch_size: float, scale: Scale, context: RunContext) -> float:
        try:
            result = self._trainer.train(
                lr,
                max(1, round(batch_size)),
                scale,
                corpus=self.corpus,
                device=self.device,
                seed=self.seed,
                report=context.report,
                time_limit=context.timeout,
            )
        except self._trainer.TrainingTimeout as exc:
            raise TrialFailed(f"timeout: {exc}") from None
        context.notes.update(
            steps=result.steps,
            tokens=result.tokens,
            seconds=round(result.seconds, 2),
            train_loss=result.train_loss,
            device=result.device,
        )
        if result.diverged:
            raise TrialFailed("diverged")
        return result.loss
