"""Training-loop guards: an update with NaN or inf gradients is skipped, not applied."""

from __future__ import annotations

import logging

import torch
from transformers import TrainerCallback

from rl.trl_hooks import step_metrics

log = logging.getLogger(__name__)


class SkipNonFiniteUpdates(TrainerCallback):
    """Drops an optimizer step whose gradients hold NaN or inf, so one bad batch cannot
    poison the weights (after which every later rollout samples from NaN probabilities
    and generation dies on a device-side assert, as two bf16 Gemma runs on an H200 did).

    Runs after gradient clipping and before `optimizer.step()`: the gradients are dropped
    (`grad = None`, which AdamW skips: no moment update, no weight decay), the step still
    counts, and `train/nonfinite_update` (1 for a skipped step, else 0) goes into the step's
    metrics. Under data parallelism gradients are already all-reduced, so every rank skips
    the same step. `max_consecutive` skipped steps in a row stop the run with an error:
    that is a diverged model, not a bad batch. DeepSpeed keeps gradients in its own buffers,
    which this guard does not see.
    """

    def __init__(self, trainer, max_consecutive: int = 5):
        self.trainer = trainer
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.skipped = 0

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        params = [p for p in self.trainer.model.parameters() if p.grad is not None]
        if not params:
            return
        finite = bool(torch.stack([torch.isfinite(p.grad).all() for p in params]).all())
        if hasattr(self.trainer, "_metrics"):  # a GRPO trainer: the flag goes into the step's log
            step_metrics(self.trainer, "train")["train/nonfinite_update"].append(0.0 if finite else 1.0)
        if finite:
            self.consecutive = 0
            return
        for p in params:
            p.grad = None
        self.consecutive += 1
        self.skipped += 1
        log.warning("step %d: NaN/inf in the gradients; update skipped (%d so far, %d in a row)",
                    state.global_step + 1, self.skipped, self.consecutive)
        if self.consecutive >= self.max_consecutive:
            raise RuntimeError(
                f"{self.consecutive} optimizer steps in a row had NaN/inf gradients (step {state.global_step + 1}); "
                "the model has diverged. Lower grpo.learning_rate, or train in float32 (model.dtype=float32)")
