"""GRPO through the full loop (rollouts, env_mask, rewards, TRL) makes a random tiny model learn."""

import itertools
import json

import pytest

from rl.config import load_config
from rl.trainer import train


@pytest.mark.parametrize("step_weight", [0.0, 1.0])  # episode advantages; plus step-level ones
def test_grpo_learns_to_call_the_tool_with_the_right_argument(tmp_path, step_weight):
    cfg = load_config(None, [f"grpo.step_advantage_weight={step_weight}",
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


def test_step_advantages_move_each_turns_tokens_by_its_anchor_group_advantage(tmp_path, monkeypatch):
    import torch

    from rl.credit import step_advantages
    from rl.trl_hooks import ToolGymGRPOTrainer

    seen = []
    add = ToolGymGRPOTrainer._add_step_advantages

    def recording(self, advantages, width):
        out = add(self, advantages, width)
        seen.append((advantages.clone(), out.clone(), list(self.rollout_func.batch.turns),
                     (self._rewards_per_func * self.reward_weights).nansum(dim=1).tolist()))
        return out

    losses = []
    compute_loss = ToolGymGRPOTrainer._compute_loss

    def loss_shapes(self, model, inputs):
        losses.append(tuple(inputs["advantages"].shape))
        return compute_loss(self, model, inputs)

    monkeypatch.setattr(ToolGymGRPOTrainer, "_add_step_advantages", recording)
    monkeypatch.setattr(ToolGymGRPOTrainer, "_compute_loss", loss_shapes)
    cfg = load_config(None, [
        f"output_dir={tmp_path}", "name=steps", "model.name=tiny", "model.tool_format=first_digit",
        "lora.enabled=false",
        "env.name=tests.integration.pick_env:PickEnv", "rollout.max_turns=3", "rollout.max_new_tokens=6",
        "rollout.max_completion_tokens=96", "grpo.num_generations=8", "grpo.per_device_train_batch_size=16",
        "grpo.max_steps=2", "grpo.save_steps=1000", "grpo.seed=1", "grpo.step_advantage_weight=0.5",
        "rewards.episode_return=1.0", "rewards.solved=0.0", "log.wandb=off",
    ])
    out = train(cfg)
    assert len(seen) == 2 and losses and all(len(shape) == 2 for shape in losses)  # per-token advantages
    moved = 0
    for episode_adv, token_adv, turns, rewards in seen:
        steps, _ = step_advantages(rewards, turns, 8)
        for i, row_turns in enumerate(turns):
            covered = torch.zeros(token_adv.shape[1], dtype=torch.bool)
            for (start, end, _), step in zip(row_turns, steps[i]):
                assert torch.allclose(token_adv[i, start:end], episode_adv[i] + 0.5 * step)
                covered[start:end] = True
                moved += step != 0
            assert torch.all(token_adv[i, ~covered] == episode_adv[i])  # env tokens and padding: the episode's
    assert moved  # some turns shared a state with episodes that then did better or worse
    logs = [json.loads(line) for line in (out / "metrics.jsonl").open() if '"reward"' in line]
    assert all(0 < entry["step_advantage/shared_state_turns"] <= 1 for entry in logs)


def test_scoring_only_the_model_tokens_trains_exactly_as_scoring_every_token(tmp_path, monkeypatch):
    """Same episodes, same numbers: loss, gradient norm, entropy and KL per step, with a reused batch
    (old logprobs at generation time) and a reference model (the LoRA's base), whichever positions
    the LM head projects."""
    import rl.trl_hooks

    masks = []
    score_tokens = rl.trl_hooks.score_tokens

    def recording(model, input_ids, attention_mask, logits_to_keep, score_mask, *args, **kwargs):
        masks.append(score_mask)
        return score_tokens(model, input_ids, attention_mask, logits_to_keep, score_mask, *args, **kwargs)

    monkeypatch.setattr(rl.trl_hooks, "score_tokens", recording)  # where the loss hooks call it
    logged = {}
    for only in (True, False):
        cfg = load_config(None, [
            f"output_dir={tmp_path}", f"name=only-{only}", "model.name=tiny", "model.tool_format=first_digit",
            "lora.enabled=true", "env.name=tests.integration.pick_env:PickEnv", "rollout.max_turns=3",
            "rollout.max_new_tokens=6", "rollout.max_completion_tokens=96", "grpo.num_generations=8",
            "grpo.per_device_train_batch_size=16", "grpo.max_steps=2", "grpo.num_iterations=2", "grpo.beta=0.04",
            "grpo.learning_rate=3e-3", "grpo.save_steps=1000", "grpo.seed=3", "rewards.episode_return=1.0",
            "rewards.solved=0.0", "log.wandb=off", f"grpo.score_only_model_tokens={only}",
        ])
        logged[only] = [json.loads(line) for line in (train(cfg) / "metrics.jsonl").open() if '"loss"' in line]
    # generation: reference and old logprobs; then a loss pass per step; tool results never scored
    assert len(masks) == 4 and all(0 < int(m.sum()) < m.numel() for m in masks)
    assert [s["step"] for s in logged[True]] == [s["step"] for s in logged[False]] == [1, 2]
    assert logged[True][0]["reward_std"] > 0 and logged[True][0]["grad_norm"] > 0  # a real update to compare
    for ours, theirs in zip(logged[True], logged[False]):
        for key in ("loss", "grad_norm", "entropy", "kl"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("per_generation", [4, 8])  # micro-batches per generation batch: 1 or 2 optimizer steps
def test_micro_batches_grouped_by_length_train_exactly_as_trls_shuffled_split(tmp_path, monkeypatch, per_generation):
    """Same episodes, same loss and gradient norm at every step, in both iterations over a reused batch, also when
    one generation batch feeds two optimizer steps; grouped by length, each loss pass pads its completions to less.
    (The logged entropy is a mean over micro-batches, each weighted alike, so it may differ.)"""
    from trl import GRPOTrainer

    passes = []
    compute_loss = GRPOTrainer._compute_loss

    def recording(self, model, inputs):
        passes.append(inputs["completion_mask"].sum(dim=1).tolist())
        return compute_loss(self, model, inputs)

    monkeypatch.setattr(GRPOTrainer, "_compute_loss", recording)
    logged, widths = {}, {}
    for split in ("by_length", "shuffled"):
        passes.clear()
        cfg = load_config(None, [
            f"output_dir={tmp_path}", f"name={split}", "model.name=tiny", "model.tool_format=first_digit",
            "lora.enabled=true", "env.name=tests.integration.pick_env:PickEnv", "env.kwargs={max_steps: 10}",
            "rollout.max_turns=10", "rollout.max_new_tokens=6", "rollout.max_completion_tokens=320",
            "grpo.num_generations=8", f"grpo.steps_per_generation={per_generation}",
            "grpo.per_device_train_batch_size=4", "grpo.gradient_accumulation_steps=4", "grpo.max_steps=4",
            "grpo.num_iterations=2", "grpo.learning_rate=3e-3", "grpo.save_steps=1000", "grpo.seed=3",
            "rewards.episode_return=1.0", "rewards.solved=0.0", "log.wandb=off", f"grpo.micro_batches={split}",
        ])
        logged[split] = [json.loads(line) for line in (train(cfg) / "metrics.jsonl").open() if '"loss"' in line]
        # 4 steps of 4 micro-batches; each generation batch trained on twice (num_iterations), in the same split
        assert len(passes) == 16
        for start in range(0, 16, 2 * per_generation):
            assert passes[start:start + per_generation] == passes[start + per_generation:start + 2 * per_generation]
        widths[split] = sum(len(p) * max(p) for p in passes)  # completion positions the loss passes run
        if split == "by_length":  # each step's passes longest first, none longer than the last pass's shortest
            for step in range(0, 16, 4):
                assert all(min(a) >= max(b) for a, b in itertools.pairwise(passes[step:step + 4]))
    assert widths["by_length"] < widths["shuffled"]
    assert logged["by_length"][0]["grad_norm"] > 0
    for ours, theirs in zip(logged["by_length"], logged["shuffled"], strict=True):
        for key in ("loss", "grad_norm"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), key
