"""Training-loop guards: an update with NaN or inf gradients is skipped, not applied."""

from __future__ import annotations

import logging
import math

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
    metrics. Under FSDP each process holds a shard of the gradients, so the verdict is agreed
    over all processes (any shard non-finite: every process skips). `max_consecutive` skipped
    steps in a row stop the run with an error: that is a diverged model, not a bad batch.

    DeepSpeed keeps gradients in its own buffers and has already stepped (inside `backward`) when
    this hook runs; its ZeRO optimizers skip a step whose gradient norm is NaN or inf (overflow)
    themselves. There the guard reads that verdict, logs and counts it alike, and stops the run if
    DeepSpeed applied a step whose norm was not finite (as a DeepSpeed with that check off would).
    """

    def __init__(self, trainer, max_consecutive: int = 5):
        self.trainer = trainer
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.skipped = 0

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if getattr(self.trainer, "is_deepspeed_enabled", False):
            finite = self._deepspeed_step_finite(state)
        else:
            params = [p for p in self.trainer.model.parameters() if p.grad is not None]
            finite = _all_finite([p.grad for p in params])
            if not finite:
                for p in params:
                    p.grad = None
        if finite is None:
            return
        if hasattr(self.trainer, "_metrics"):  # a GRPO trainer: the flag goes into the step's log
            step_metrics(self.trainer, "train")["train/nonfinite_update"].append(0.0 if finite else 1.0)
        if finite:
            self.consecutive = 0
            return
        self.consecutive += 1
        self.skipped += 1
        if getattr(state, "is_world_process_zero", True):  # every process skips it; one says so
            log.warning("step %d: NaN/inf in the gradients; update skipped (%d so far, %d in a row)",
                        state.global_step + 1, self.skipped, self.consecutive)
        if self.consecutive >= self.max_consecutive:
            raise RuntimeError(
                f"{self.consecutive} optimizer steps in a row had NaN/inf gradients (step {state.global_step + 1}); "
                "the model has diverged. Lower grpo.learning_rate, or train in float32 (model.dtype=float32)")

    def _deepspeed_step_finite(self, state) -> bool:
        """Whether DeepSpeed's step (already taken, in `backward`) had finite gradients; it skipped it if not."""
        acc = self.trainer.accelerator
        skipped = acc.optimizer_step_was_skipped  # DeepSpeed's overflow verdict, agreed over the processes
        norm = acc.deepspeed_engine_wrapped.get_global_grad_norm()
        if not skipped and norm is not None and not math.isfinite(norm):
            raise RuntimeError(
                f"step {state.global_step + 1}: DeepSpeed applied an update whose gradient norm is {norm}; the "
                "weights now hold NaN/inf. Its overflow check is off: set bf16.check_grad_overflow=true in the "
                "DeepSpeed config (the default in deepspeed 0.19.8)")
        return not skipped


def _all_finite(grads: list[torch.Tensor]) -> bool | None:
    """Whether every gradient is finite, on every process where they are sharded (FSDP2's DTensors: each
    process checks its own shard, and the verdicts are agreed); under DDP they are already all-reduced, the
    same everywhere. None when there are no gradients. One host sync per step."""
    if not grads:
        return None
    sharded = any(hasattr(g, "to_local") for g in grads)
    local = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
    finite = torch.stack([torch.isfinite(g).all() for g in local]).all().float().reshape(1)
    if sharded and torch.distributed.is_available() and torch.distributed.is_initialized():
        if torch.distributed.get_backend() == "nccl" and finite.device.type == "cpu":
            finite = finite.cuda()
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    return bool(finite.item())
