"""Reward functions get what TRL gives its own: conversational `completions` holding the model's messages
(one per model turn, tool calls included, never the env's replies), so TRL's built-in rewards run as they are."""

import json

from rl.config import load_config
from rl.trainer import build_trainer

SEEN = []


def messages_seen(prompts, completions, model_turns, **kwargs):
    SEEN.append((prompts, completions, model_turns))
    return [float(len(c)) for c in completions]


def test_trl_builtin_and_text_rewards_see_only_the_models_messages(tmp_path):
    prefix = '<tool_call>\n{"name": "place", "arguments": {"row": '  # the tiny model's calls fail to parse: the env answers
    cfg = load_config(None, [
        "model.name=tiny", "env.name=sudoku", f"output_dir={tmp_path}", "name=trl-rewards", "log.wandb=off",
        "rollout.max_turns=3", "rollout.max_new_tokens=12", f"rollout.response_prefix={json.dumps(prefix)}",
        "grpo.per_device_train_batch_size=4", "grpo.gradient_accumulation_steps=1", "grpo.max_steps=1",
        "grpo.save_steps=100"])
    cfg.rewards["trl.rewards:think_format_reward"] = 0.5
    cfg.rewards["tests.integration.test_trl_rewards:messages_seen"] = 0.0
    trainer = build_trainer(cfg)
    trainer.train()
    [metrics] = [m for m in trainer.state.log_history if "reward" in m]
    assert metrics["rewards/think_format_reward/mean"] == 0.0  # ran on every episode (no <think> in them)
    [(prompts, completions, turns)] = SEEN
    assert all(p[0]["role"] == "user" for p in prompts)
    assert [len(c) for c in completions] == turns and max(turns) >= 2
    texts = [m["content"] for c in completions for m in c]
    assert all(m["role"] == "assistant" for c in completions for m in c)
    assert all(t.startswith(prefix) for t in texts)  # each model turn, as the env read it
    assert not any("tool_response" in t or "Error" in t for t in texts)  # never the env's replies
    assert metrics["rewards/messages_seen/mean"] == sum(turns) / len(turns)
