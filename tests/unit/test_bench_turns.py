"""The generation benchmark's multi-turn ceiling replays exactly the turns the model generated."""

from types import SimpleNamespace

from rl.bench.rollout import _model_turns


def test_model_turns_are_the_generated_runs_with_their_contexts():
    # prompt 1 2 | model 10 11 | tool 90 | model 12 | tool 91 92 | model 13 14 15
    a = SimpleNamespace(prompt_ids=[1, 2], completion_ids=[10, 11, 90, 12, 91, 92, 13, 14, 15],
                        env_mask=[1, 1, 0, 1, 0, 0, 1, 1, 1])
    b = SimpleNamespace(prompt_ids=[3], completion_ids=[20, 99], env_mask=[1, 0])  # one turn, then closing ids
    turns = _model_turns([a, b])
    assert turns == [
        [([1, 2], 2), ([3], 1)],
        [([1, 2, 10, 11, 90], 1)],
        [([1, 2, 10, 11, 90, 12, 91, 92], 3)],
    ]
    assert sum(n for turn in turns for _, n in turn) == sum(a.env_mask) + sum(b.env_mask)
