"""A reward function's NaN during training: the run stops naming the reward and the episode, or, with
`grpo.nonfinite_rewards: drop`, the value is left out of the step and counted in `rewards/<name>/nonfinite`."""

import pytest

from rl.config import load_config
from rl.trainer import build_trainer


def nan_in_training(prompts, completions, trainer_state=None, **kwargs):
    """Finite in the reward pre-flight (no trainer state there); NaN for each group's first episode in training."""
    return [float("nan") if trainer_state is not None and i % 4 == 0 else 1.0 for i in range(len(completions))]


def config(tmp_path, nonfinite):
    cfg = load_config(None, [
        "model.name=tiny", "env.name=sudoku", f"output_dir={tmp_path}", f"name={nonfinite}", "log.wandb=off",
        "rollout.max_turns=2", "rollout.max_new_tokens=8", "grpo.per_device_train_batch_size=8",
        "grpo.max_steps=1", "grpo.save_steps=100", f"grpo.nonfinite_rewards={nonfinite}"])
    cfg.rewards["tests.integration.test_nonfinite_rewards:nan_in_training"] = 1.0
    return cfg


def test_a_nan_reward_stops_training_or_is_dropped_and_counted(tmp_path):
    from rewards import NonFiniteReward

    trainer = build_trainer(config(tmp_path, "error"))
    with pytest.raises(NonFiniteReward, match=r"reward 'nan_in_training' returned nan for episode 0 of 8"):
        trainer.train()
    trainer = build_trainer(config(tmp_path, "drop"))
    trainer.train()
    [metrics] = [m for m in trainer.state.log_history if "reward" in m]
    assert metrics["rewards/nan_in_training/nonfinite"] == 2.0  # two groups of four, one NaN each
    assert metrics["rewards/nan_in_training/mean"] == 1.0  # the finite values alone
