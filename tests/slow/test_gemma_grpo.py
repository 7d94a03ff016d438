"""Two GRPO steps of the real Gemma 3 270M playing 4x4 Sudoku through multi-turn tool calls."""

import json
from pathlib import Path

import pytest

from rl.config import load_config
from rl.trainer import train

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_grpo_steps_on_gemma_270m(tmp_path):
    cfg = load_config(ROOT / "configs" / "sudoku.yaml", [
        f"output_dir={tmp_path}", "name=gemma", "grpo.max_steps=2", "grpo.save_steps=2", "log.wandb=off",
        "rollout.max_turns=3", "rollout.max_new_tokens=32", "rollout.max_completion_tokens=256",
        "grpo.num_generations=2", "grpo.per_device_train_batch_size=2",  # one group of 2 episodes a step
    ])
    assert cfg.model.name == "gemma-3-270m"
    out = train(cfg)
    steps = [json.loads(line) for line in (out / "metrics.jsonl").open() if '"reward"' in line]
    assert [s["step"] for s in steps] == [1, 2]
    assert all(s["env/model_turns"] > 1 for s in steps), "episodes must be multi-turn"
    assert sum(s["env/tool_calls"] for s in steps) > 0, "the model must make real tool calls"
    episode = json.loads((out / "episodes.jsonl").open().readline())
    assert episode["text"].count("<start_of_turn>model") > 1 and "<tool_response>" in episode["text"]
    assert (out / "checkpoint-2").is_dir() and (out / "final" / "adapter_model.safetensors").exists()
