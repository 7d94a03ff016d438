import math

import pytest

from rewards import get_reward
from rewards.code import correctness_tier

C = ["a", "b", "c", "d"]


def call(name, **facts):
    return get_reward(name)(prompts=C, completions=C, **facts)


def test_function_works_and_no_cheating():
    assert call("function_works", function_works=[True, False, None, True]) == [1.0, 0.0, None, 1.0]
    assert call("no_cheating", forbidden_imports=[0, 2, None, 1]) == [0.0, -1.0, None, -1.0]


def test_env_errors_give_none():
    assert call("function_works", function_works=[True] * 4, env_error=["", "boom", "", ""]) == [1.0, None, 1.0, 1.0]


@pytest.mark.parametrize("max_err, mse, tier", [
    (0.0, 0.0, 1.0), (1e-7, 1e-14, 1.0), (1e-4, 1e-8, 0.5), (0.5, 1e-3, 0.25), (5.0, 1.0, 0.0),
    (math.inf, math.inf, 0.0), (None, None, 0.0), (math.nan, 0.0, 0.0),
])
def test_correctness_tiers(max_err, mse, tier):
    assert correctness_tier(max_err, mse) == tier


def test_correctness_full_partial_and_broken():
    out = call("correctness", function_works=[True, True, False, True], tests_passed=[3, 2, 0, 0],
               tests_total=[3, 3, 0, 3], max_err=[0.0, 1e-4, None, 9.0], mse=[0.0, 1e-9, None, 10.0])
    assert out[0] == 1.0 and out[2] == 0.0 and out[3] == 0.0
    assert 0 < out[1] < 1.0 and out[1] == pytest.approx(0.5 * 2 / 3 + 0.25)


def test_speedup_is_a_clipped_log_ratio_and_only_for_correct_code():
    out = call("speedup", function_works=[True, True, True, False], speedup=[8.0, 0.5, 1000.0, None])
    assert out[0] == pytest.approx(1.0) and out[1] == pytest.approx(-1 / 3) and out[2] == 1.0 and out[3] == 0.0
    assert call("speedup", function_works=[True] * 4, speedup=[None, 2.0, 1.0, 1 / 1000])[0::1] == [
        0.0, pytest.approx(1 / 3), 0.0, -1.0]


def test_game_rewards():
    assert call("strategy_succeeds", win_rate=[1.0, 0.25, None, 0.0]) == [1.0, 0.25, None, 0.0]
    assert call("valid_move_fraction", valid_move_fraction=[1.0, 0.5, None, 0]) == [1.0, 0.5, None, 0.0]
    out = call("game2048_max_tile", max_tile=[64, 8, 2048, None], target=[64, 64, 64, 64])
    assert out == [1.0, 0.5, 1.0, None]


def test_rewards_stay_in_a_common_range():
    """No term may swamp the group statistics the way Unsloth's -20 does."""
    facts = {"function_works": [True, False, True, True], "forbidden_imports": [0, 3, 0, 0],
             "tests_passed": [3, 0, 1, 3], "tests_total": [3, 3, 3, 3], "max_err": [0, 9, 1, 0], "mse": [0, 9, 1, 0],
             "speedup": [1e6, None, None, 1e-6], "win_rate": [1, 0, 0.5, 0], "valid_move_fraction": [1, 0, 0.3, 1]}
    for name in ("function_works", "no_cheating", "correctness", "speedup", "strategy_succeeds", "valid_move_fraction"):
        assert all(v is None or -1.0 <= v <= 1.0 for v in call(name, **facts)), name


def test_config_rewards_resolve():
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2] / "configs"
    for name in ("2048.yaml", "kernels.yaml"):
        for reward in yaml.safe_load((root / name).read_text())["rewards"]:
            assert callable(get_reward(reward)), (name, reward)
