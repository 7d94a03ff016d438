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


def constant(*values):
    def fn(prompts, completions, **kwargs):
        return list(values)
    return fn


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_nonfinite_reward_stops_naming_the_reward_and_the_episode(bad):
    from rewards import NamedReward, NonFiniteReward

    fn = NamedReward(constant(1.0, None, bad), "shaped")
    with pytest.raises(NonFiniteReward, match=rf"reward 'shaped' returned {bad!r} for episode 2 of 3: .*"
                                              r"set grpo\.nonfinite_rewards=drop"):
        fn(prompts=[], completions=[])


def test_dropped_nonfinite_rewards_are_left_out_and_counted():
    import asyncio

    from rewards import AsyncNamedReward, NamedReward

    logged = []

    def log_metric(name, value):  # TRL's, passed to every reward function
        logged.append((name, value))

    fn = NamedReward(constant(float("nan"), 0.5, float("inf"), None), "shaped", nonfinite="drop")
    assert fn(prompts=[], completions=[], log_metric=log_metric) == [None, 0.5, None, None]
    assert fn(prompts=[], completions=[], log_metric=log_metric) == [None, 0.5, None, None]
    assert NamedReward(constant(1.0, 2.0), "clean", "drop")(prompts=[], completions=[], log_metric=log_metric) == [1, 2]
    assert logged == [("rewards/shaped/nonfinite", 2.0)] * 2 + [("rewards/clean/nonfinite", 0.0)]

    async def later(prompts, completions, **kwargs):
        return [float("nan")]

    assert asyncio.run(AsyncNamedReward(later, "later", "drop")(prompts=[], completions=[])) == [None]


def test_a_value_that_is_no_number_stops_even_when_dropping():
    from rewards import NamedReward, NonFiniteReward

    with pytest.raises(NonFiniteReward, match=r"reward 'texty' returned 'high' for episode 1 of 2"):
        NamedReward(constant(1.0, "high"), "texty", nonfinite="drop")(prompts=[], completions=[])


def test_numpy_and_bool_rewards_pass_unchanged():
    import numpy as np

    from rewards import NamedReward

    values = [np.float32(0.5), np.int64(2), True, 1]
    assert NamedReward(constant(*values), "n")(prompts=[], completions=[]) == values


def test_named_rewards_take_the_configs_nonfinite_setting():
    from rewards import named_rewards

    assert [f.nonfinite for f in named_rewards(["solved", "format_valid"], nonfinite="drop")] == ["drop", "drop"]
    with pytest.raises(ValueError, match="unknown nonfinite='ignore'"):
        named_rewards(["solved"], nonfinite="ignore")


@pytest.mark.parametrize("source, message", [
    ("def fn(completion):\n    return [0.0]\n", r"has signature \(completion\).*add a \*\*kwargs parameter"),
    ("def fn(prompts, completions):\n    return [0.0]\n", r"has signature \(prompts, completions\)"),
    ("def fn(prompts, completions, /, **kw):\n    return [0.0]\n", r"takes prompts, completions positional-only"),
])
def test_a_reward_trl_cannot_call_is_refused_when_looked_up(tmp_path, source, message):
    (tmp_path / "sig.py").write_text(source)
    with pytest.raises(ValueError, match=rf"reward '.*sig\.py:fn' {message}"):
        get_reward(f"{tmp_path / 'sig.py'}:fn")


def test_every_built_in_reward_passes_the_signature_check():
    from rewards import check_signature

    for name, fn in REWARDS.items():
        check_signature(name, fn)
    check_signature("kwargs only", lambda **kwargs: [])
    check_signature("a builtin", max)  # no signature to read: accepted, the pre-flight calls it


@pytest.mark.parametrize("weight", ["nan", "inf", "-inf", "heavy"])
def test_a_reward_weight_must_be_a_finite_number(weight):
    with pytest.raises(ValueError, match=rf"bad reward weight '{weight}' in 'solved={weight}' \(expected a finite"):
        parse_reward_spec(f"solved={weight}")
