"""A GRPO run on the tiny model that records what the sharded-training tests compare; started as a user starts
a run (`python` for one process, `accelerate launch --config_file configs/accelerate/<X>.yaml` for several).

    python tests/integration/sharded_probe.py OUT NAME [--resume] [--set KEY=VALUE ...]

The global batch is 8 episodes (two groups of 4) on any number of processes. Step 1 trains on a fixed batch:
its episodes' replies are scripted by their place in their group (`7` solves PickEnv, other digits do not), so
its loss and grad norm are the same numbers on one process as on several. Later steps generate with the model.
Step 2's loss is made NaN, which the non-finite guard must skip on every process. At each rollout, and after
training, the weights as a vLLM engine would receive them (`weights_for_sync`: gathered, LoRA merged) are saved
by the main process to OUT/NAME/probe/weights-<version>.safetensors, beside probe.json (attention, processes).
"""

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

GLOBAL_BATCH, GROUP = 8, 4
REPLIES = ["7", "3", "7", "1"]  # by place in the group: half of each group solves, so advantages are not zero
POISONED_STEP = 2


def config(out: str, name: str, overrides: list[str]):
    from rl.config import load_config

    processes = int(os.environ.get("WORLD_SIZE", "1"))
    cfg = load_config(None, [
        "model.name=tiny", "model.tool_format=first_digit", "env.name=tests.integration.pick_env:PickEnv",
        f"output_dir={out}", f"name={name}", "log.wandb=off", "grpo.max_steps=2", "grpo.save_steps=2",
        f"grpo.num_generations={GROUP}", f"grpo.per_device_train_batch_size={GLOBAL_BATCH // processes}",
        "grpo.learning_rate=1e-3", "grpo.lr_scheduler_type=constant", "rollout.max_turns=1",
        "rollout.max_new_tokens=4", "rollout.max_completion_tokens=32",
        "rollout.batch_wait_s=60",  # one batch per rollout: a reply's place in it is its place in its group
        "lora.modules_to_save=[embed_tokens]",  # Gemma's rule: a trained embedding stays tied to the LM head
        *overrides])
    cfg.rewards = {"solved": 1.0}
    return cfg


class FirstBatchScripted:
    """The run's own generation backend, except that the rollout of step 1 (weights version 0) gets the
    scripted replies."""

    def __init__(self, backend, tokenizer):
        self.backend, self.name, self.version = backend, backend.name, None
        end = tokenizer.convert_tokens_to_ids("<end_of_turn>")
        self.replies = [tokenizer.encode(text, add_special_tokens=False) + [end] for text in REPLIES]

    def update_weights(self, model, version=None):
        self.version = version
        return self.backend.update_weights(model, version)

    def generate(self, prompts, params):
        from rl.generation import Generation

        if self.version != 0:
            return self.backend.generate(prompts, params)
        if len(prompts) != GLOBAL_BATCH // int(os.environ.get("WORLD_SIZE", "1")):
            raise RuntimeError(f"the first rollout came in {len(prompts)} prompts, not one batch")
        replies = [self.replies[i % GROUP] for i in range(len(prompts))]
        return [Generation(ids, [-1.0] * len(ids), ids[-1], None) for ids in replies]


def save_weights(trainer, model, path: Path) -> None:
    """What a weight push sends (rl.vllm_weights.weights_for_sync), saved by the main process."""
    import torch
    from safetensors.torch import save_file

    from rl.vllm_weights import weights_for_sync

    if not trainer.accelerator.is_main_process:
        return
    with torch.no_grad():
        weights = {name: t.detach().to("cpu", copy=True).contiguous()
                   for name, t in weights_for_sync(model, {}, changing_only=False)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(path))


def install(trainer, probe: Path) -> None:
    """Scripted first batch, weights saved at each push, step 2's loss poisoned."""
    rollouts = trainer.rollout_func
    sync = rollouts.sync_backend

    def sync_backend(model, trainer):
        if rollouts.backend is None:
            from rl.trainer import make_backend

            rollouts.backend = FirstBatchScripted(make_backend(rollouts.cfg, model, trainer.processing_class, 0),
                                                  trainer.processing_class)
        save_weights(trainer, model, probe / f"weights-{trainer.state.global_step}.safetensors")
        return sync(model, trainer)

    rollouts.sync_backend = sync_backend
    compute_loss = trainer.compute_loss

    def poisoned(model, inputs, *args, **kwargs):
        loss = compute_loss(model, inputs, *args, **kwargs)
        return loss * float("nan") if trainer.state.global_step + 1 == POISONED_STEP else loss

    trainer.compute_loss = poisoned


def run(out: str, name: str, overrides: list[str] = (), resume: bool = False) -> Path:
    """The probe's run; returns its directory."""
    import rl.trainer
    from rl.resume import resume_from
    from rl.sharding import full_weights

    cfg = config(out, name, list(overrides))
    out = rl.trainer.run_dir(cfg)
    checkpoint = resume_from(out, resume)
    trainer = rl.trainer.build_trainer(cfg)
    probe = out / "probe"
    install(trainer, probe)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    with full_weights(trainer) as model:
        save_weights(trainer, model, probe / f"weights-{trainer.state.global_step}.safetensors")
    trainer.save_model(str(out / "final"))
    if trainer.accelerator.is_main_process:
        params = list(trainer.model_wrapped.parameters())
        facts = {"processes": trainer.accelerator.num_processes, "global_step": trainer.state.global_step,
                 "distributed_type": str(trainer.accelerator.distributed_type.value),
                 # weights held as shards: FSDP2's DTensors, ZeRO-3's partitioned parameters
                 "sharded_params": sum(hasattr(p, "to_local") or hasattr(p, "ds_id") for p in params),
                 "attention": trainer.accelerator.unwrap_model(trainer.model).config._attn_implementation}
        (probe / "probe.json").write_text(json.dumps(facts))
        print(f"run finished: {out}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("name")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    run(args.out, args.name, args.overrides, args.resume)


if __name__ == "__main__":
    main()
