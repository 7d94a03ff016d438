"""Supervised warm-start on expert demonstrations, with TRL's SFTTrainer.

The demonstrations come from `rl.demos.demonstrations`: the exact token layout of a
rollout, with loss only on the expert's tokens (`completion_mask`), never on tool
results. The result is a full model in `runs/<name>/final` (LoRA is merged), which
`launch/grpo.py --model runs/<name>` starts from; with LoRA, the adapter alone is also saved in
`runs/<name>/adapter` (`--model runs/<name>/adapter` gives the same model).

A vision-language model's demonstrations carry their camera frames, which
`rl.vision.VisionSFTCollator` turns into pixels batch by batch; its run keeps only the
adapter, in `final/` (it loads with its base model and that model's image processor).
"""

from __future__ import annotations

from pathlib import Path

import torch
from datasets import load_from_disk
from trl import SFTConfig, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from rl.cli import apply_run_environment, check_resolvable
from rl.config import ConfigError, RunConfig, to_yaml
from rl.demos import demonstrations
from rl.guards import SkipNonFiniteUpdates
from rl.models import load_image_tokenizer, load_model, lora_config, save_adapters_offline
from rl.plots import save_curve
from rl.progress import JsonlLogger
from rl.resume import finished, main_process, resume_from
from rl.sharding import check_autocast, trains_in_bf16
from rl.trainer import _report_to, run_dir
from rl.trl_hooks import compact_lm_head
from rl.vision import VisionSFTCollator


def train_sft(cfg: RunConfig, resume: bool = False) -> Path:
    check_resolvable(cfg)
    apply_run_environment(cfg)
    out = run_dir(cfg)
    done = finished(out, cfg.sft.max_steps, cfg.sft.num_train_epochs) if resume else None
    if done:  # the trainer would train one more step and write final/ and adapter/ over
        if main_process():
            print(done, flush=True)
        return out
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    model, tokenizer = load_model(cfg.model)
    images = load_image_tokenizer(cfg.model, tokenizer)
    if images is not None and not cfg.lora.enabled:
        raise ConfigError(f"SFT of the vision-language model {cfg.model.name!r} needs lora.enabled=true: its run "
                          "keeps the adapter, which loads with its base model's image processor (full fine-tuning "
                          "of a VLM is not supported yet)")
    if cfg.sft.demos:
        dataset = load_from_disk(cfg.sft.demos)
    else:
        dataset = demonstrations(cfg, tokenizer)
        dataset.save_to_disk(str(out / "demos"))
    s = cfg.sft
    columns, extra = ["input_ids", "completion_mask"], {}
    if images is not None:  # pixels come from the frames in the collator; TRL's preparation would truncate ids
        dataset, columns = _vision_rows(dataset, s.max_length), ["input_ids", "labels", "frames"]
        collator = VisionSFTCollator(DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id), images)
        extra = {"data_collator": collator}
    args = SFTConfig(
        output_dir=str(out), run_name=cfg.name, learning_rate=s.learning_rate, num_train_epochs=s.num_train_epochs,
        max_steps=s.max_steps, per_device_train_batch_size=s.per_device_train_batch_size,
        gradient_accumulation_steps=s.gradient_accumulation_steps, max_length=s.max_length,
        completion_only_loss=True, logging_steps=s.logging_steps, save_steps=s.save_steps, seed=s.seed,
        report_to=_report_to(cfg), use_cpu=not torch.cuda.is_available(),
        bf16=trains_in_bf16(cfg.model.autocast, model), gradient_checkpointing=s.gradient_checkpointing,
        **({"remove_unused_columns": False, "dataset_kwargs": {"skip_prepare_dataset": True}} if extra else {}),
    )
    check_autocast(cfg.model.autocast, args)
    trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer,
                         train_dataset=dataset.select_columns(columns), peft_config=lora_config(cfg.lora, model),
                         **extra)
    save_adapters_offline(trainer.model)
    trainer.add_callback(SkipNonFiniteUpdates(trainer))
    trainer.add_callback(JsonlLogger(out / "metrics.jsonl"))
    checkpoint = resume_from(out, resume)
    with compact_lm_head(args.device):  # the LM head projects only the demonstrations' model tokens
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    final = trainer.model
    # A VLM's run keeps its adapter as the model: it loads with its base, whose image processor it needs.
    if images is None and hasattr(final, "merge_and_unload"):
        # The adapter alone too (~15 MB for Gemma 3 270M at r=16, vs ~1 GB merged): small enough to move
        # between machines; `--model runs/<name>/adapter` merges it into its base model on load.
        final.save_pretrained(str(out / "adapter"))
        tokenizer.save_pretrained(str(out / "adapter"))
        final = final.merge_and_unload()
    final.save_pretrained(str(out / "final"))
    tokenizer.save_pretrained(str(out / "final"))
    save_curve(out)
    return out


def _vision_rows(dataset, max_length: int | None):
    """Demonstrations with `labels` (-100 off the expert's tokens), refusing any longer than `max_length`:
    cutting one would leave image tokens whose frame is gone."""
    too_long = [(seed, len(ids)) for seed, ids in zip(dataset["seed"], dataset["input_ids"])
                if max_length and len(ids) > max_length]
    if too_long:
        seed, n = max(too_long, key=lambda x: x[1])
        raise ConfigError(f"{len(too_long)} vision-language demonstration(s) exceed sft.max_length={max_length} "
                          f"(longest: seed {seed}, {n} tokens); raise sft.max_length or shorten episodes "
                          "(rollout.max_turns)")
    return dataset.map(
        lambda row: {"labels": [t if m else -100 for t, m in zip(row["input_ids"], row["completion_mask"])]})
