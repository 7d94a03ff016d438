import sys

import pytest

from rewards import REWARDS, get_reward, parse_reward_spec


def facts(**columns):
    n = len(next(iter(columns.values())))
    return dict(prompts=["p"] * n, completions=["c"] * n, **columns)


def test_builtins_read_episode_facts():
    kw = facts(solved=[True, False], episode_return=[1.0, 0.0], progress=[1.0, 0.25], model_turns=[4, 2],
               format_errors=[0, 1], no_tool_calls=[1, 0], turns=[4, 2], invalid_actions=[0, 1], env_error=["", ""])
    assert REWARDS["solved"](**kw) == [1.0, 0.0]
    assert REWARDS["episode_return"](**kw) == [1.0, 0.0]
    assert REWARDS["sudoku_progress"](**kw) == [1.0, 0.25]
    assert REWARDS["format_valid"](**kw) == [0.75, 0.5]
    assert REWARDS["invalid_action_penalty"](**kw) == [0.0, -0.5]


def test_crashed_episodes_and_missing_facts_are_not_scored():
    kw = facts(solved=[True, True], progress=[0.5, 0.5], env_error=["", "ConnectionError: gone"])
    assert REWARDS["solved"](**kw) == [1.0, None]
    assert REWARDS["sudoku_progress"](prompts=["p"], completions=["c"]) == [None]


def test_user_reward_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def shaped(prompts, completions, progress, **kwargs):\n"
        "    return [2 * p for p in progress]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_rewards", None)
    fn = get_reward("my_rewards:shaped")
    assert fn(prompts=["a", "b"], completions=["x", "y"], progress=[0.5, 1.0], solved=[0, 1]) == [1.0, 2.0]
    assert parse_reward_spec("my_rewards:shaped=0.5") == ("my_rewards:shaped", 0.5)
    assert parse_reward_spec("solved") == ("solved", 1.0)


def test_bad_reward_paths_are_explained(tmp_path, monkeypatch):
    (tmp_path / "other_rewards.py").write_text("def real(prompts, completions, **kw):\n    return [0.0]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="cannot import module 'nowhere'"):
        get_reward("nowhere:fn")
    with pytest.raises(ValueError, match="has no function 'fake' \\(functions there: real\\)"):
        get_reward("other_rewards:fake")
    with pytest.raises(ValueError, match="unknown reward 'solve'.*did you mean 'solved'"):
        get_reward("solve")


def test_a_reward_from_a_file_path_and_same_named_rewards_log_apart(tmp_path, monkeypatch):
    import asyncio

    from rewards import get_reward, named_rewards

    folder = tmp_path / "my rewards"
    folder.mkdir()
    (folder / "shaped.py").write_text(
        "def solved(prompts, completions, **kwargs):\n    return [2.0] * len(completions)\n\n"
        "async def later(prompts, completions, **kwargs):\n    return [3.0] * len(completions)\n")
    path = str(folder / "shaped.py")
    assert get_reward(f"{path}:solved")([], ["a"]) == [2.0]
    fns = named_rewards(["solved", f"{path}:solved", f"{path}:later", "format_valid"])
    assert [f.__name__ for f in fns] == ["solved", "shaped.py:solved", "later", "format_valid"]
    assert fns[0]([], ["a"], solved=[True]) == [1.0] and fns[1]([], ["a"]) == [2.0]
    assert asyncio.run(fns[2]([], ["a"])) == [3.0]

    from trl.trainer.utils import get_callable_name, is_async_callable

    assert [get_callable_name(f) for f in fns][:2] == ["solved", "shaped.py:solved"]  # TRL's logged names
    assert is_async_callable(fns[2]) and not is_async_callable(fns[1])
    with pytest.raises(ValueError, match="no file"):
        get_reward(str(tmp_path / "missing.py") + ":fn")
    (tmp_path / "broken.py").write_text("import nonexistent_module_xyz\n")
    with pytest.raises(ValueError, match="broken.py fails to import"):
        get_reward(str(tmp_path / "broken.py") + ":fn")
