"""Reference policies for 2048, the strategy envs and kernels: each expert clearly beats its baseline.

Rates measured on these seeds (assertions leave slack, yet fail if the expert were the baseline):
  2048 tool mode, target 256, 20 seeds: expectimax depth 2 20/20, depth 1 17/20, random 2/20.
  2048 strategy, target 512, 4 episodes x 4 games: expert 16/16 games, random 0/16.
  Sudoku strategy, 4x4 hard, 8 episodes x 4 puzzles: expert 32/32, random ~23% of puzzles, no episode.
  Kernels, every task: reference 3/3 hidden tests, the wrong kernel 0/3 (it still runs).
The driver is tested against a real server in tests/integration/test_driving_expert.py;
its rules are checked here on canned observations.
"""

from types import SimpleNamespace

import pytest

import envs
from envs.base import ToolCall
from envs.driving.expert import CarlaDriver, CarlaRandom
from envs.experts import expert_for, random_for
from envs.g2048.expert import Game2048Expert, Game2048Random, expectimax_move
from envs.g2048.rules import legal_moves, slide
from envs.kernels.expert import WRONG_KERNELS, KernelsExpert, KernelsWrong
from envs.kernels.tasks import TASKS
from envs.sandbox import Sandbox


@pytest.fixture(scope="module")
def box():
    with Sandbox() as sandbox:
        yield sandbox


def play(env, policy, seed):
    """Reset with `seed` and let `policy` play to the end; (actions, last info)."""
    env.reset(seed=seed)
    actions = []
    while True:
        actions.append(policy(env))
        _, _, terminated, truncated, info = env.step(actions[-1])
        if terminated or truncated:
            return actions, info


def rate(infos, key="solved"):
    return sum(bool(i[key]) for i in infos) / len(infos)


# -- 2048, tool mode -----------------------------------------------------------------------


@pytest.mark.parametrize("depth, at_least", [(1, 0.7), (2, 0.9)])
def test_2048_expert_beats_random_play(depth, at_least):
    make = lambda: envs.make("2048", target=256, max_steps=400)
    expert = [play(make(), Game2048Expert(depth=depth, seed=s), s)[1] for s in range(20)]
    rand = [play(make(), Game2048Random(seed=s), s)[1] for s in range(20)]
    assert rate(expert) >= at_least and rate(rand) <= 0.3 and rate(expert) - rate(rand) >= 0.4
    assert all(i["invalid_actions"] == 0 for i in expert + rand)
    assert sum(i["max_tile"] for i in expert) > 1.5 * sum(i["max_tile"] for i in rand)


def test_2048_expert_replays_the_same_game_for_the_same_seed():
    runs = [play(envs.make("2048", target=128), Game2048Expert(explore=0.2, seed=7), 7) for _ in range(2)]
    (actions_a, info_a), (actions_b, info_b) = runs
    assert actions_a == actions_b and info_a == info_b
    assert {a.name for a in actions_a} == {"move", "show_board"}  # explore looks at the board sometimes


def test_2048_expert_keeps_the_big_tile_in_its_corner_and_random_plays_legal_moves():
    # Moving up would pull the 256 out of the bottom-left corner; the search keeps it there.
    board = [[0, 0, 0, 2], [0, 0, 0, 0], [2, 4, 0, 0], [256, 64, 32, 4]]
    for depth in (1, 2):
        move = expectimax_move(board, depth)
        assert move in legal_moves(board) and slide(board, move)[0][3][0] == 256
    assert expectimax_move([[2, 4], [4, 2]], depth=2) is None  # no move left
    env = envs.make("2048")
    env.reset(seed=0)
    policy = Game2048Random(seed=0)
    for _ in range(20):
        move = policy(env)
        assert move.arguments["direction"] in legal_moves(env.board)
        env.step(move)


def test_2048_expert_options_are_checked_and_named():
    env = envs.make("2048")
    assert expert_for(env, depth=1, explore=0.1, seed=3).depth == 1
    with pytest.raises(ValueError, match=r"expectimax depth must be one of \(1, 2, 3\), got 4"):
        expert_for(env, depth=4)
    with pytest.raises(ValueError,
                       match=r"unknown option\(s\) 'order' for Game2048Expert \(accepted: depth, explore, seed\)"):
        expert_for(env, order="reading")


# -- strategy modes ------------------------------------------------------------------------


def test_2048_strategy_expert_wins_where_random_strategy_never_does(box):
    infos = {}
    for kind, lookup in (("expert", expert_for), ("random", random_for)):
        infos[kind] = []
        for seed in range(4):
            env = envs.make("2048-strategy", target=512, sandbox=box)
            _, info = play(env, lookup(env, seed=seed), seed)
            infos[kind].append(info)
    expert, rand = infos["expert"], infos["random"]
    assert all(i["function_works"] and i["forbidden_imports"] == 0 and i["valid_move_fraction"] == 1.0
               for i in expert + rand)
    assert sum(i["games_won"] for i in expert) >= 13 and sum(i["games_won"] for i in rand) <= 2


def test_sudoku_strategy_expert_solves_every_puzzle(box):
    expert, rand = [], []
    for seed in range(8):
        env = envs.make("sudoku-strategy", difficulty="hard", sandbox=box)
        expert.append(play(env, expert_for(env, seed=seed), seed)[1])
        rand.append(play(env, random_for(env, seed=seed), seed)[1])
    assert rate(expert) == 1.0 and all(i["valid_move_fraction"] == 1.0 for i in expert)
    assert rate(rand) <= 0.25 and sum(i["win_rate"] for i in rand) / 8 <= 0.5
    assert all(i["function_works"] for i in rand)  # random, not broken


def test_strategy_policies_are_deterministic_per_seed(box):
    env = envs.make("sudoku-strategy", difficulty="hard", sandbox=box)
    assert random_for(env, seed=1)(env) == random_for(env, seed=1)(env) != random_for(env, seed=2)(env)
    results = [play(env, random_for(env, seed=1), 3)[1] for _ in range(2)]
    assert results[0] == results[1]


# -- kernels -------------------------------------------------------------------------------


@pytest.mark.parametrize("task", list(TASKS))
def test_kernels_reference_passes_and_the_wrong_kernel_fails(box, task):
    env = envs.make("kernels", task=task, trials=2, sandbox=box)
    actions, info = play(env, KernelsExpert(), 0)
    assert [a.name for a in actions] == ["run_tests", "submit"]
    assert info["solved"] and info["tests_passed"] == info["tests_total"] == 3 and info["episode_return"] == 1.0
    assert info["speedup"] > 0.3  # the reference against itself: ~1x, noisy on a shared machine
    actions, info = play(env, KernelsWrong(), 0)
    assert [a.name for a in actions] == ["submit"]
    assert info["function_works"] and info["tests_passed"] == 0 and not info["solved"] and info["episode_return"] == 0.0


def test_kernels_expert_benchmarks_when_exploring_and_replays_for_the_same_seed(box):
    env = envs.make("kernels", task="prefix_sum", trials=2, sandbox=box)
    actions, info = play(env, KernelsExpert(explore=1.0), 4)
    assert [a.name for a in actions] == ["run_tests", "benchmark", "submit"] and info["solved"]
    assert play(env, KernelsExpert(check=False), 4)[0] == [actions[-1]]
    assert play(env, KernelsExpert(explore=0.5, seed=2), 4)[0] == play(env, KernelsExpert(explore=0.5, seed=2), 4)[0]


def test_kernels_expert_names_a_reference_it_cannot_write():
    env = envs.make("kernels", task="softmax", allowed_imports=[])
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"the softmax reference needs math, which this env does not allow "
                                         r"\(allowed imports: none\)"):
        KernelsExpert()(env)
    assert set(WRONG_KERNELS) == set(TASKS)


# -- driving: the rules, on canned observations ---------------------------------------------


def scene(lane=0, speed=60.0, *actors, text="(leftmost of 2)"):
    """A CarlaEnv stand-in: what the driver reads is `env.last`."""
    people = [{"type": "pedestrian", "ahead_m": ahead, "distance": ahead, "lane": where, "hit": False}
              for ahead, where in actors]
    return SimpleNamespace(last={"current_lane": f"lane_{lane}", "speed_kmh": speed, "nearby_actors": people,
                                 "scene_description": text})


@pytest.mark.parametrize("env, expected", [
    (scene(0, 60.0, (24.0, "lane_0")), ToolCall("lane_change", {"direction": "right"})),  # braking falls short
    (scene(1, 60.0, (24.0, "lane_1"), text="(rightmost of 2)"), ToolCall("lane_change", {"direction": "left"})),
    (scene(0, 60.0, (24.0, "lane_0"), (24.0, "lane_0"), (24.0, "lane_1")),
     ToolCall("lane_change", {"direction": "right"})),  # 1 there rather than 2 here
    (scene(0, 60.0, (24.0, "lane_0"), (24.0, "lane_1")), ToolCall("emergency_stop", {})),  # no better lane
    (scene(0, 30.0, (24.0, "lane_0")), ToolCall("emergency_stop", {})),  # slow enough to stop in time
    (scene(0, 40.0, (30.0, "sidewalk"), text="(leftmost of 2) 1 pedestrian(s) walking across the road."),
     ToolCall("emergency_stop", {})),
    (scene(0, 60.0, (24.0, "lane_1")), ToolCall("observe", {})),  # nobody in the car's path
    (scene(0, 60.0, (-5.0, "lane_0")), ToolCall("observe", {})),  # behind the car
    (scene(0, 60.0), ToolCall("observe", {})),
])
def test_driver_rules(env, expected):
    assert CarlaDriver()(env) == expected


def test_driver_options_and_random_tool_calls():
    env = envs.make("carla", urls=["http://127.0.0.1:9"])  # no server needed to pick a policy
    assert isinstance(expert_for(env, explore=0.1, seed=0), CarlaDriver)
    with pytest.raises(ValueError, match=r"brake_decel must be positive \(m/s\^2\), got 0"):
        expert_for(env, brake_decel=0)
    policy = CarlaRandom(seed=0)
    calls = [policy(env) for _ in range(200)]
    assert {c.name for c in calls} == {"observe", "emergency_stop", "lane_change"}
    assert {c.arguments["direction"] for c in calls if c.name == "lane_change"} == {"left", "right"}
    again = CarlaRandom(seed=0)
    assert [again(env) for _ in range(20)] == calls[:20]  # seeded


def test_every_registered_env_has_an_expert_and_a_baseline():
    for name in envs.names():
        env = envs.make(name, **({"urls": ["http://127.0.0.1:9"]} if name == "carla" else {}))
        if name != "carla":  # the CARLA policies need a server's observation; tested above
            env.reset(seed=3)
        for policy in (expert_for(env, explore=0.1, seed=1), random_for(env, seed=1)):  # as eval.py passes
            assert callable(policy), name
            if name != "carla":
                assert policy(env).name in env.tools(), name
