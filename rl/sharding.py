"""Whole weights out of sharded training (DeepSpeed ZeRO-3, FSDP2), for the rollout, and per-step memory.

Under ZeRO-3 and FSDP2 each process holds a shard of every weight; a forward pass gathers the shards
from every process. A rollout cannot work that way: each process plays its own episodes, so the
processes make different numbers of forward passes and the gathers would wait on each other for
ever. `full_weights` gathers every weight once, before the rollout, and frees the gathered copy when
the context ends: while generating (`hf`), or only while pushing the weights into a vLLM engine,
which keeps its own copy (`rl.trainer.EpisodeRollouts`). DDP and ZeRO-1/2 hold whole weights
already: nothing is gathered.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

import torch
from transformers import TrainerCallback
from trl.distributed import DistributedBackend
from trl.models import unwrap_model_for_generation


@contextmanager
def full_weights(trainer):
    """The trainer's model with every weight whole on this process, for as long as the context lasts.

    Every process must enter it (gathering is collective). ZeRO-3: DeepSpeed's `GatheredParameters`
    (through TRL's `unwrap_model_for_generation`, which also drops ZeRO-3's forward hooks, so a
    forward pass gathers nothing). FSDP2: every `fully_shard` module unsharded and kept unsharded
    after forward, then resharded. ZeRO-3 always gathers here, whatever `ds3_gather_for_generation`
    says: without it the rollout's forward passes would be collectives."""
    acc = trainer.accelerator
    version = DistributedBackend(acc).fsdp_version  # None: not FSDP
    if version not in (None, 2):
        raise ValueError(f"FSDP version {version} is not supported for rollouts (supported: FSDP2, "
                         "fsdp_version: 2 in the accelerate config; or DeepSpeed ZeRO-3)")
    with unwrap_model_for_generation(trainer.model_wrapped, acc, gather_deepspeed3_params=True,
                                     gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs) as model:
        if version == 2:
            with _unsharded(model, acc.state.fsdp_plugin.reshard_after_forward):
                yield model
        else:
            yield model


@contextmanager
def _unsharded(model: torch.nn.Module, reshard_after_forward: bool):
    from torch.distributed.fsdp import FSDPModule

    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for module in modules:
        module.unshard()  # all-gathers this module's own weights (not its fully_shard children's)
    model.set_reshard_after_forward(False)  # forward passes find them whole and leave them so
    try:
        yield
    finally:
        model.set_reshard_after_forward(bool(reshard_after_forward))
        model.set_reshard_after_forward(False, recurse=False)  # as fully_shard leaves the root
        for module in modules:
            module.reshard()


class StepMemory(TrainerCallback):
    """Each optimizer step's wall time (`perf/step_s`: rollout, scoring, every micro-batch and the optimizer
    step) and, on a GPU, its peak GPU memory (`perf/peak_gpu_mem_gib`, this process, rollout included): the
    numbers that tell DDP, ZeRO-2/3 and offload apart. (TRL's `step_time` leaves out clipping and the
    optimizer step.)"""

    def __init__(self, trainer):
        self.trainer = trainer
        self.started = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        # The rollout runs inside the trainer's step (TRL generates in _prepare_inputs), after this hook
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        from rl.trl_hooks import step_metrics

        metrics = step_metrics(self.trainer, "train")
        if torch.cuda.is_available():
            metrics["perf/peak_gpu_mem_gib"].append(torch.cuda.max_memory_allocated() / 2**30)
        metrics["perf/step_s"].append(time.perf_counter() - self.started)


def trains_in_bf16(autocast: str, model: torch.nn.Module) -> bool:
    """The trainer's `bf16` flag: bfloat16 weights, or float32 ones under `model.autocast` (mixed precision)."""
    return model.dtype == torch.bfloat16 or autocast == "bfloat16"


def check_autocast(autocast: str, args) -> None:
    """`model.autocast` runs on one process or under DDP, never sharded: DeepSpeed casts every weight to bf16 (the
    adapter too) and turns accelerate's autocast off; FSDP2's bf16 policy gathers the weights and reduces the
    gradients in bf16. Neither keeps float32 weights with bf16 products. `args`: the trainer's TrainingArguments."""
    if autocast == "none":
        return
    fsdp = bool(args.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true", "yes")
    sharded = "DeepSpeed" if args.deepspeed_plugin is not None else "FSDP" if fsdp else None
    if sharded:
        from rl.config import ConfigError

        raise ConfigError(f"model.autocast={autocast!r} is not supported under {sharded}, which would train "
                          "bfloat16 weights (accepted there: none; the precision then follows model.dtype)")
