import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.sudoku import SudokuEnv


def test_make_by_short_name_and_by_path():
    assert isinstance(envs.make("sudoku", size=9), SudokuEnv)
    assert isinstance(envs.make("envs.sudoku:SudokuEnv"), SudokuEnv)


def test_unknown_env_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown env 'sudokku' \(known: .*sudoku.*did you mean 'sudoku'"):
        envs.make("sudokku")
    with pytest.raises(ValueError, match="cannot load env"):
        envs.make("envs.sudoku:Nope")


def test_gymnasium_make_and_env_checker():
    env = gym.make("toolgym/Sudoku-v0", size=4)
    assert isinstance(env.unwrapped, SudokuEnv)
    obs, info = env.reset(seed=1)
    assert env.observation_space.contains(obs)
    check_env(env.unwrapped, skip_render_check=True)
