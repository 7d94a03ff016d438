"""Reference policies: the expert must clearly beat uniformly random legal play."""

import pytest

import envs
from envs.experts import expert_for, random_for
from envs.sudoku import SudokuExpert, SudokuRandom
from envs.sudoku.puzzles import peers


def play(policy, seed, **env_kwargs):
    env = envs.make("sudoku", **env_kwargs)
    env.reset(seed=seed)
    while True:
        _, _, terminated, truncated, info = env.step(policy(env))
        if terminated or truncated:
            return info


@pytest.mark.parametrize("order", SudokuExpert.ORDERS)
@pytest.mark.parametrize("size, difficulty", [(4, "hard"), (9, "easy")])
def test_expert_beats_random_on_fixed_seeds(size, difficulty, order):
    kwargs = {"size": size, "difficulty": difficulty, "max_steps": 120}
    expert = [play(SudokuExpert(seed=s, order=order), s, **kwargs) for s in range(20)]
    rand = [play(SudokuRandom(seed=s), s, **kwargs) for s in range(20)]
    expert_rate = sum(i["solved"] for i in expert) / 20
    random_rate = sum(i["solved"] for i in rand) / 20
    assert expert_rate == 1.0 and all(i["invalid_actions"] == 0 for i in expert)
    assert random_rate <= 0.5 and expert_rate - random_rate >= 0.5


def test_expert_orders_pick_the_first_empty_or_the_most_constrained_cell():
    env = envs.make("sudoku", size=4, difficulty="hard")
    env.reset(seed=0)
    first = env.board.index(0)
    move = SudokuExpert(explore=0.0)(env).arguments
    assert (move["row"], move["col"], move["digit"]) == (first // 4 + 1, first % 4 + 1, env.solution[first])
    constrained = SudokuExpert(explore=0.0, order="constrained")(env).arguments
    cell = (constrained["row"] - 1) * 4 + constrained["col"] - 1
    used = {env.board[p] for p in peers(4)[cell]}
    assert env.board[cell] == 0 and set(range(1, 5)) - used == {constrained["digit"]} == {env.solution[cell]}


def test_bad_expert_order_is_named():
    with pytest.raises(ValueError, match=r"unknown expert order 'zigzag' \(accepted: reading, constrained\)"):
        SudokuExpert(order="zigzag")


def test_random_plays_only_legal_moves_while_it_can():
    env = envs.make("sudoku", size=9)
    env.reset(seed=0)
    policy = SudokuRandom(seed=0)
    _, _, _, _, info = env.step(policy(env))
    assert info["invalid_actions"] == 0 and info["tool_calls"] == 1


def test_random_orders_play_legal_digits_in_the_first_empty_or_the_most_constrained_cell():
    env = envs.make("sudoku", size=4, difficulty="hard")
    for seed in range(20):
        env.reset(seed=seed)
        first = env.board.index(0)
        fewest = min(len([d for d in range(1, 5) if d not in {env.board[p] for p in peers(4)[c]}])
                     for c in range(16) if env.board[c] == 0)
        for order in ("reading", "constrained"):
            move = SudokuRandom(seed=seed, order=order)(env).arguments
            cell = (move["row"] - 1) * 4 + move["col"] - 1
            legal = set(range(1, 5)) - {env.board[p] for p in peers(4)[cell]}
            assert env.board[cell] == 0 and move["digit"] in legal
            assert cell == first if order == "reading" else len(legal) == fewest
    with pytest.raises(ValueError, match=r"unknown random-player order 'zigzag' \(accepted: random, reading, "
                                         r"constrained\)"):
        SudokuRandom(order="zigzag")


def test_reading_order_random_play_runs_out_of_legal_digits_where_constrained_order_never_does():
    """In reading order a legal but wrong digit leaves a later cell with no legal digit (a clash); the cell with the
    fewest legal digits always had exactly one on these 4x4 hard puzzles, so that order solves every one."""
    kwargs = {"size": 4, "difficulty": "hard"}
    reading = [play(SudokuRandom(seed=s, order="reading"), s, **kwargs) for s in range(40)]
    constrained = [play(SudokuRandom(seed=s, order="constrained"), s, **kwargs) for s in range(40)]
    assert all(i["solved"] and i["invalid_actions"] == 0 for i in constrained)
    assert not all(i["solved"] for i in reading) and any(i["clash_moves"] for i in reading)


def test_policy_lookup_names_what_exists():
    env = envs.make("sudoku")
    assert isinstance(expert_for(env), SudokuExpert) and isinstance(random_for(env), SudokuRandom)

    class Other(envs.ToolEnv):
        pass

    with pytest.raises(ValueError, match="no expert policy for Other \\(available for: .*SudokuEnv.*"
                                         "register_policies\\(Other, expert=...\\)"):
        expert_for(Other())


def test_the_config_picks_the_experts_options_and_names_a_bad_one():
    from rl.config import load_config
    from rl.evaluation import make_policy

    cfg = load_config("configs/sudoku-sft.yaml")  # its demonstrations fill the first cell its board lists
    assert cfg.sft.expert == {"order": "constrained"} and cfg.env.kwargs["list_empty_cells"] == "constrained"
    assert make_policy(cfg, "expert", **cfg.sft.expert).order == "constrained"
    assert make_policy(cfg, "expert").order == "reading"  # SudokuExpert's own default
    assert load_config("configs/sudoku-sft.yaml", ["sft.expert.order=reading"]).sft.expert == {"order": "reading"}
    with pytest.raises(ValueError,
                       match=r"unknown option\(s\) 'depth' for SudokuExpert \(accepted: explore, seed, order\)"):
        make_policy(cfg, "expert", depth=3)
    with pytest.raises(ValueError, match=r"unknown expert order 'spiral' \(accepted: reading, constrained\)"):
        make_policy(cfg, "expert", order="spiral")
