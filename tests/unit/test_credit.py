"""Step-level advantages (rl/credit.py): turns compared within anchor-state groups."""

import math

import pytest

from rl.credit import step_advantages

A, B, C, D = 11, 22, 33, 44  # state digests


def test_each_turn_is_measured_against_the_episodes_that_acted_in_its_state():
    turns = [
        [(0, 5, A), (9, 14, B), (18, 23, B)],  # a malformed call left state B as it was: B twice
        [(0, 5, A), (9, 14, B)],
        [(0, 5, A), (9, 14, C)],
        [(0, 5, A), (9, 14, C), (18, 23, D)],
    ]
    rewards = [1.0, 0.0, 0.0, 1.0]
    steps, shared = step_advantages(rewards, turns, group_size=4, scale=False)
    # state A: all four, mean 0.5; B: episodes 0 and 1 (episode 0 once), mean 0.5; C: 2 and 3; D: only 3
    assert steps == [[0.5, 0.5, 0.5], [-0.5, -0.5], [-0.5, -0.5], [0.5, 0.5, 0.0]]
    assert shared == 9 / 10
    scaled, _ = step_advantages(rewards, turns, group_size=4)
    sd_a, sd_b = 0.5773502691896258, 0.7071067811865476  # sample standard deviations of A's and B's rewards
    assert scaled[0] == pytest.approx([0.5 / (sd_a + 1e-4), 0.5 / (sd_b + 1e-4), 0.5 / (sd_b + 1e-4)])


def test_groups_unknown_states_and_unscorable_episodes_stay_apart():
    turns = [[(0, 3, A)], [(0, 3, A)], [(0, 3, A)], [(0, 3, None)]]
    steps, shared = step_advantages([1.0, 0.0, 3.0, 5.0], turns, group_size=2, scale=False)
    # episodes 0-1 and 2-3 are different prompts: A in group 2 has one member; None is no state
    assert steps == [[0.5], [-0.5], [0.0], [0.0]]
    assert shared == 2 / 4
    steps, _ = step_advantages([1.0, math.nan, 0.0, 2.0], [[(0, 3, A)]] * 4, group_size=4, scale=False)
    assert steps == [[0.0], [0.0], [-1.0], [1.0]]  # the NaN episode is out of the mean and gets nothing


def test_mismatched_inputs_are_named():
    with pytest.raises(ValueError, match="3 rewards, 3 turn lists, group size 2"):
        step_advantages([0.0, 1.0, 2.0], [[]] * 3, group_size=2)
