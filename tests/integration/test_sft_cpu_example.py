"""launch/README.md's CPU SFT command (Gemma 3 270M, configs/sudoku-sft.yaml): one demonstration per
micro-batch, with the config's effective batch, which trains the same adapter as the config's micro-batch of
four. The activations kept for the backward pass grow with the micro-batch: with four 1,872-token
demonstrations the command peaked at 19.3 GB of RAM, with one at 6.7 GB."""

import argparse
import json
import shlex
from pathlib import Path

import pytest

from rl.cli import add_run_arguments, config_from_args
from rl.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def readme_sft_config():
    """The RunConfig of the README's CPU SFT command, resolved as launch/sft.py resolves it."""
    lines = (ROOT / "launch" / "README.md").read_text().splitlines()
    command = next(line for line in lines if line.startswith("python launch/sft.py --config configs/sudoku-sft"))
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    parser.add_argument("--num-episodes", type=int)
    args = parser.parse_args(shlex.split(command)[2:])
    args.overrides.append(f"sft.num_episodes={args.num_episodes}")
    return config_from_args(args)


def test_the_readme_cpu_sft_command_trains_one_demo_per_micro_batch_as_the_config_does_four(tmp_path):
    import torch
    from safetensors.torch import load_file

    from rl.sft import train_sft

    readme, config = readme_sft_config(), load_config(ROOT / "configs" / "sudoku-sft.yaml")
    assert readme.sft.per_device_train_batch_size == 1 < config.sft.per_device_train_batch_size
    effective = [c.sft.per_device_train_batch_size * c.sft.gradient_accumulation_steps for c in (readme, config)]
    assert effective[0] == effective[1]
    adapters, losses = [], []
    for name, cfg in (("readme", readme), ("config", config)):
        s = cfg.sft
        overrides = [f"sft.per_device_train_batch_size={s.per_device_train_batch_size}",
                     f"sft.gradient_accumulation_steps={s.gradient_accumulation_steps}",
                     f"sft.num_episodes={readme.sft.num_episodes}", "sft.max_steps=2", "model.name=tiny",
                     "log.wandb=off", f"output_dir={tmp_path}", f"name={name}"]
        run = train_sft(load_config(ROOT / "configs" / "sudoku-sft.yaml", overrides))
        adapters.append(load_file(run / "adapter" / "adapter_model.safetensors"))
        rows = [json.loads(line) for line in (run / "metrics.jsonl").open()]
        losses.append(next(r["train_loss"] for r in rows if "train_loss" in r))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)  # the same tokens, normalised over the same step
    assert adapters[0].keys() == adapters[1].keys()
    changed = [k for k in adapters[0] if "lora_B" in k and adapters[0][k].abs().max() > 0]
    assert changed  # the steps trained something (two: Adam's second step weighs the gradients' sizes)
    assert all(torch.allclose(adapters[0][k], adapters[1][k], atol=1e-6) for k in adapters[0])
