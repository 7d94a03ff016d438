"""Reference policies: the expert must clearly beat uniformly random legal play."""

import pytest

import envs
from envs.experts import SudokuExpert, SudokuRandom, expert_for, random_for


def play(policy, seed, **env_kwargs):
    env = envs.make("sudoku", **env_kwargs)
    env.reset(seed=seed)
    while True:
        _, _, terminated, truncated, info = env.step(policy(env))
        if terminated or truncated:
            return info


@pytest.mark.parametrize("size, difficulty", [(4, "hard"), (9, "easy")])
def test_expert_beats_random_on_fixed_seeds(size, difficulty):
    kwargs = dict(size=size, difficulty=difficulty, max_turns=120)
    expert = [play(SudokuExpert(seed=s), s, **kwargs) for s in range(20)]
    rand = [play(SudokuRandom(seed=s), s, **kwargs) for s in range(20)]
    expert_rate = sum(i["solved"] for i in expert) / 20
    random_rate = sum(i["solved"] for i in rand) / 20
    assert expert_rate == 1.0 and all(i["invalid_actions"] == 0 for i in expert)
    assert random_rate <= 0.5 and expert_rate - random_rate >= 0.5


def test_random_plays_only_legal_moves_while_it_can():
    env = envs.make("sudoku", size=9)
    env.reset(seed=0)
    policy = SudokuRandom(seed=0)
    _, _, _, _, info = env.step(policy(env))
    assert info["invalid_actions"] == 0 and info["tool_calls"] == 1


def test_policy_lookup_names_what_exists():
    env = envs.make("sudoku")
    assert isinstance(expert_for(env), SudokuExpert) and isinstance(random_for(env), SudokuRandom)

    class Other(envs.ToolEnv):
        pass

    with pytest.raises(ValueError, match="no expert policy for Other \\(available for: SudokuEnv"):
        expert_for(Other())
