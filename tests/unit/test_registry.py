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
    with pytest.raises(ValueError, match="max_turns=3 is now max_steps"):
        envs.make("sudoku", max_turns=3)
    with pytest.raises(TypeError, match="Old.default_max_turns is now default_max_steps"):
        type("Old", (envs.ToolEnv,), {"default_max_turns": 3})
    assert [envs.short_name(n) for n in ("sudoku", "envs.sudoku:SudokuEnv", "sub/guess.py:Guess")] == \
        ["sudoku", "SudokuEnv", "Guess"]  # run folders and eval files are named by it


def test_gymnasium_make_and_env_checker():
    env = gym.make("toolgym/Sudoku-v0", size=4)
    assert isinstance(env.unwrapped, SudokuEnv)
    obs, _ = env.reset(seed=1)
    assert env.observation_space.contains(obs)
    check_env(env.unwrapped, skip_render_check=True)


def test_an_env_from_a_file_with_its_policies_registered_beside_it(tmp_path, monkeypatch):
    from envs.experts import expert_for, random_for, register_policies

    (tmp_path / "coin.py").write_text(
        "from envs import ToolCall, ToolEnv, tool\n"
        "from envs.experts import register_policies\n"
        "class Coin(ToolEnv):\n"
        "    def setup(self, options):\n"
        "        return 'Call flip.'\n"
        "    @tool\n"
        "    def flip(self) -> str:\n"
        "        '''Flip the coin.'''\n"
        "        self.terminated = True\n"
        "        return 'heads'\n"
        "def expert(explore=0.0, seed=None):\n"
        "    return lambda env: ToolCall('flip', {})\n"
        "register_policies(Coin, expert=expert)\n")
    monkeypatch.chdir(tmp_path)
    env = envs.make("coin.py:Coin")
    assert type(env).__name__ == "Coin" and envs.resolve(f"{tmp_path}/coin.py:Coin") is type(env)  # loaded once
    assert expert_for(env, explore=0.1, seed=0)(env).name == "flip"
    with pytest.raises(ValueError, match=r"no random policy for Coin .*register_policies\(Coin, random=\.\.\.\)"):
        random_for(env)
    with pytest.raises(ValueError, match=r"cannot load env 'nope.py:Coin'.*no file 'nope.py'"):
        envs.make("nope.py:Coin")
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ValueError, match=r"broken.py fails to import: broken.py, line 1: RuntimeError: boom"):
        envs.make("broken.py:Coin")
    with pytest.raises(ValueError, match="needs a ToolEnv subclass, got 'Coin'"):
        register_policies("Coin", expert=lambda: None)
    with pytest.raises(ValueError, match="the random policy of Coin must be callable, got 3"):
        register_policies(type(env), random=3)
