"""Trajectories in the shape TRL's rollout_func returns, and the episode rewards kept from TRL's scores."""

import math

from rl.rollout import Trajectory
from rl.trl_hooks import to_trl, weighted_rewards


def traj(completion, mask, **info):
    return Trajectory([1, 2], completion, [-0.5] * len(completion), mask,
                      {"env_error": "", "generation_error": "", **info})


def test_columns_and_episode_facts():
    out = to_trl([traj([5, 6, 7], [1, 0, 1], solved=True), traj([8], [1], solved=False)], fallback_id=0)
    assert out["completion_ids"] == [[5, 6, 7], [8]] and out["env_mask"] == [[1, 0, 1], [1]]
    assert out["solved"] == [True, False] and out["prompt_ids"] == [[1, 2], [1, 2]]


def test_failed_generation_carries_no_loss_and_empty_episodes_keep_valid_shapes():
    failed = traj([5, 6], [1, 1], generation_error="vLLM server http://x: gave up")
    empty = Trajectory([], [], [], [], {"env_error": "boom", "generation_error": ""})
    out = to_trl([failed, empty], fallback_id=9)
    assert out["env_mask"] == [[0, 0], [0]] and out["completion_ids"][1] == [9] and out["prompt_ids"][1] == [9]


def test_an_episodes_reward_leaves_out_functions_that_returned_none_and_is_nan_when_all_did():
    import torch

    nan = float("nan")
    per_func = torch.tensor([[0.0, 1.0], [1.0, nan], [nan, nan]])
    rewards = weighted_rewards(per_func, torch.tensor([1.0, 0.5])).tolist()
    assert rewards[:2] == [0.5, 1.0] and math.isnan(rewards[2])
