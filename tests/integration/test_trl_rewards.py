"""Reward functions get what TRL gives its own: conversational `completions` holding the model's messages
(one per model turn, tool calls included, never the env's replies), `prompts` holding the messages each
episode started from, and `completion_ids`, so TRL's built-in rewards run as they are."""

import json

from trl.rewards import get_repetition_penalty_reward, get_soft_overlong_punishment

import envs
from rl.config import load_config
from rl.trainer import build_trainer

SEEN = []
# TRL's reward factories, made the way TRL's docs show and named by `module:attribute` in the config
repetition = get_repetition_penalty_reward(ngram_size=3, max_penalty=-1.0)
overlong = get_soft_overlong_punishment(max_completion_len=30, soft_punish_cache=10)


def messages_seen(prompts, completions, model_turns, seed, **kwargs):
    SEEN.append((prompts, completions, model_turns, seed))
    return [float(len(c)) for c in completions]


def test_trl_builtin_and_text_rewards_see_only_the_models_messages(tmp_path):
    # the tiny model's calls fail to parse: the env answers
    prefix = '<tool_call>\n{"name": "place", "arguments": {"row": '
    cfg = load_config(None, [
        "model.name=tiny", "env.name=sudoku", f"output_dir={tmp_path}", "name=trl-rewards", "log.wandb=off",
        "rollout.max_turns=3", "rollout.max_new_tokens=12", f"rollout.response_prefix={json.dumps(prefix)}",
        "grpo.per_device_train_batch_size=4", "grpo.gradient_accumulation_steps=1", "grpo.max_steps=1",
        "grpo.save_steps=100"])
    cfg.rewards["trl.rewards:think_format_reward"] = 0.5
    cfg.rewards["tests.integration.test_trl_rewards:messages_seen"] = 0.0
    cfg.rewards["tests.integration.test_trl_rewards:repetition"] = 0.1
    cfg.rewards["tests.integration.test_trl_rewards:overlong"] = 0.1
    trainer = build_trainer(cfg)
    trainer.train()
    [metrics] = [m for m in trainer.state.log_history if "reward" in m]
    assert metrics["rewards/think_format_reward/mean"] == 0.0  # ran on every episode (no <think> in them)
    (checked, _, _, checked_seeds), (prompts, completions, turns, seeds) = SEEN  # the pre-flight's, the step's
    assert len(checked) == 16  # 4 puzzles x (expert, baseline, tool-less, wrong-tool)
    # the prompt each episode started from: the env's first observation (its puzzle), not the dataset row
    for seed, prompt in zip(checked_seeds + seeds, checked + prompts):
        assert prompt == [{"role": "user", "content": envs.make("sudoku").reset(seed=seed)[0]}]
    # the prefix repeats every turn, so every multi-turn completion repeats n-grams; every one is over 30 tokens
    assert metrics["rewards/repetition/mean"] < 0
    assert metrics["rewards/overlong/mean"] == -1.0
    assert [len(c) for c in completions] == turns and max(turns) >= 2
    texts = [m["content"] for c in completions for m in c]
    assert all(m["role"] == "assistant" for c in completions for m in c)
    assert all(t.startswith(prefix) for t in texts)  # each model turn, as the env read it
    assert not any("tool_response" in t or "Error" in t for t in texts)  # never the env's replies
    assert metrics["rewards/messages_seen/mean"] == sum(turns) / len(turns)


# The reward functions of TRL's OpenEnv Sudoku example (examples/scripts/openenv/sudoku.py), in the shape a
# user brings them: each reads a fact its own rollout returned, and returns 0.0 for every episode without it.
def reward_empty_cell(completions, **kwargs):
    rewards = kwargs.get("empty_cell_reward")
    return [0.0 for _ in completions] if rewards is None else [float(r) for r in rewards]


def reward_valid_moves(completions, **kwargs):
    rewards = kwargs.get("valid_move_reward")
    return [0.0 for _ in completions] if rewards is None else [float(r) for r in rewards]


def reward_correct(completions, **kwargs):
    rewards = kwargs.get("correct_reward")
    return [0.0 for _ in completions] if rewards is None else [float(r) for r in rewards]


def reward_repetition(completions, **kwargs):
    rewards = kwargs.get("repetition_reward")
    return [0.0 for _ in completions] if rewards is None else [float(r) for r in rewards]


def reward_progress(completions, **kwargs):
    rewards = kwargs.get("progress_reward")
    return [0.0 for _ in completions] if rewards is None else [float(r) for r in rewards]


def test_trls_sudoku_example_rewards_tell_expert_from_random_play():
    from rl.evaluation import chat_for, make_policy, play
    from rl.models import load_tokenizer
    from rl.preflight import check_rewards
    from rl.trl_hooks import to_trl

    cfg = load_config(None, ["model.name=tiny", "env.name=sudoku", "env.kwargs.difficulty=hard", "rollout.max_turns=12",
                             "rollout.max_completion_tokens=8192"])  # the tiny tokenizer spends many tokens a turn
    chat = chat_for(cfg, load_tokenizer(cfg.model))
    fns = [reward_empty_cell, reward_valid_moves, reward_correct, reward_repetition, reward_progress]
    assert check_rewards(cfg, chat, fns) == []  # none constant over the preflight's episodes
    seeds = list(range(8))
    scores = {}
    for name in ("expert", "random"):
        facts = {k: v for k, v in to_trl(play(cfg, chat, seeds, policy=make_policy(cfg, name)), 0).items()
                 if k not in ("prompt_ids", "completion_ids", "logprobs", "env_mask")}
        scores[name] = [sum(fn(completions=seeds, **facts)) / len(seeds) for fn in fns]
    expert, random = scores["expert"], scores["random"]
    assert expert[2] == 1.0 > random[2]  # correct: the expert solves every puzzle
    assert expert[4] == 1.0 > random[4]  # progress
    assert expert[0] == 1.0 and expert[1] == 1.0 and expert[3] == 0.0  # empty cells, valid and new, no repeats
