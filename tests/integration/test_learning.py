"""GRPO through the full loop (rollouts, env_mask, rewards, TRL) makes a random tiny model learn."""

import json

from rl.config import load_config
from rl.trainer import train


def test_grpo_learns_to_call_the_tool_with_the_right_argument(tmp_path):
    cfg = load_config(None, [
        f"output_dir={tmp_path}", "name=learn",
        "model.name=tiny", "model.tool_format=first_digit", "lora.enabled=false",
        "env.name=tests.integration.pick_env:PickEnv",
        "rollout.max_turns=3", "rollout.max_new_tokens=6", "rollout.max_completion_tokens=96",
        "grpo.learning_rate=3e-3", "grpo.num_generations=8", "grpo.per_device_train_batch_size=16",
        "grpo.max_steps=40", "grpo.save_steps=1000", "grpo.seed=1", "grpo.loss_type=dapo",
        "rewards.episode_return=1.0", "rewards.solved=0.0", "log.wandb=off",
    ])
    out = train(cfg)
    logs = [json.loads(line) for line in (out / "metrics.jsonl").open() if '"reward"' in line]
    rewards = [entry["reward"] for entry in logs]
    assert len(rewards) == 40
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert first < 0.3, f"the untrained model should rarely pick 7 first: {rewards[:5]}"
    assert last > first + 0.3, f"mean reward did not rise: first 5 steps {first:.2f}, last 5 {last:.2f}"
    assert any(entry["env/model_turns"] > 1 for entry in logs[:5])  # episodes were multi-turn
