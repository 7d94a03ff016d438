import hashlib
import json
import random

import pytest

import envs
from envs.g2048.rules import legal_moves, new_board, play_game, slide
from envs.sandbox import Sandbox


@pytest.mark.parametrize("row, direction, expected, points", [
    ([2, 2, 0, 0], "left", [4, 0, 0, 0], 4),
    ([2, 2, 2, 2], "left", [4, 4, 0, 0], 8),  # each tile merges once
    ([4, 0, 4, 8], "left", [8, 8, 0, 0], 8),
    ([2, 2, 2, 0], "right", [0, 0, 2, 4], 4),  # the tiles nearest the wall merge first
    ([2, 4, 8, 16], "left", [2, 4, 8, 16], 0),
])
def test_slide_rules(row, direction, expected, points):
    board = [row, [0] * 4, [0] * 4, [0] * 4]
    after, got = slide(board, direction)
    assert after[0] == expected and got == points


def test_vertical_slides_and_unknown_direction():
    board = [[2, 0], [2, 0]]
    assert slide(board, "up")[0] == [[4, 0], [0, 0]] and slide(board, "down")[0] == [[0, 0], [4, 0]]
    with pytest.raises(ValueError, match=r"unknown direction 'upp' \(accepted: up, down, left, right\)"):
        slide(board, "upp")


def test_same_seed_same_game():
    a, b = envs.make("2048"), envs.make("2048")
    assert a.reset(seed=5)[0] == b.reset(seed=5)[0]
    for d in ["left", "up", "right", "down"] * 5:
        move = {"name": "move", "arguments": {"direction": d}}
        oa, ob = a.step(move), b.step(move)
        assert oa[0] == ob[0]
    assert len({str(new_board(4, random.Random(s))) for s in range(10)}) > 5


def test_move_merges_spawns_and_scores():
    env = envs.make("2048")
    env.reset(seed=0)
    env.board = [[2, 2, 0, 0], [0] * 4, [0] * 4, [0] * 4]
    obs, reward, terminated, _, info = env.step({"name": "move", "arguments": {"direction": "left"}})
    assert obs.startswith("Moved left (+4") and env.board[0][0] == 4 and info["score"] == 4
    assert sum(v != 0 for row in env.board for v in row) == 2  # the merged tile plus one spawn
    assert reward == 0 and not terminated and info["valid_move_fraction"] == 1.0


def test_invalid_moves_are_named_and_counted():
    env = envs.make("2048")
    env.reset(seed=0)
    env.board = [[2, 0, 0, 0], [0] * 4, [0] * 4, [0] * 4]
    obs, *_, info = env.step({"name": "move", "arguments": {"direction": "upp"}})
    assert "unknown direction 'upp' (accepted: up, down, left, right)" in obs
    obs, *_, info = env.step({"name": "move", "arguments": {"direction": "left"}})
    assert "moving left changes nothing (legal moves: down, right)" in obs
    assert info["invalid_actions"] == 2 and info["valid_move_fraction"] == 0.0


def test_reaching_the_target_wins_and_no_moves_ends():
    env = envs.make("2048", target=8)
    env.reset(seed=0)
    env.board = [[4, 4, 0, 0], [0] * 4, [0] * 4, [0] * 4]
    _, reward, terminated, _, info = env.step({"name": "move", "arguments": {"direction": "left"}})
    assert reward == 1.0 and terminated and info["solved"] and info["max_tile"] == 8
    env.reset(seed=0)
    env.board = [[2, 4, 2, 4], [4, 2, 4, 2], [2, 4, 2, 4], [4, 2, 4, 0]]
    obs, reward, terminated, *_ = env.step({"name": "move", "arguments": {"direction": "right"}})
    assert (terminated and "No moves left" in obs) or legal_moves(env.board)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="target must be a power of two"):
        envs.make("2048", target=100)


def test_play_game_counts_invalid_moves_and_stops():
    facts = play_game(lambda board: "sideways", seed=1, max_invalid=3)
    assert facts["ended"] == "invalid_moves" and facts["invalid_moves"] == 3 and facts["moves"] == 0
    cycle = iter(["left", "up", "right", "down"] * 10_000)
    facts = play_game(lambda board: next(cycle), seed=1)
    assert facts["moves"] > 20 and facts["ended"] in ("no_moves", "invalid_moves")


def _slide_line(line):
    """One line slid towards its start, each pair of equal neighbours merged once: (line, points)."""
    tiles, out, points = [v for v in line if v], [], 0
    while tiles:
        if len(tiles) > 1 and tiles[0] == tiles[1]:
            out.append(2 * tiles[0])
            points += 2 * tiles[0]
            del tiles[:2]
        else:
            out.append(tiles.pop(0))
    return out + [0] * (len(line) - len(out)), points


def _slide_plainly(board, direction):
    """The rules written out without lookup tables: what `slide` must match."""
    columns, flip = direction in ("up", "down"), direction in ("right", "down")
    slid = [_slide_line(list(line)[::-1] if flip else list(line)) for line in (zip(*board) if columns else board)]
    lines = [line[::-1] if flip else line for line, _ in slid]
    return [list(row) for row in zip(*lines)] if columns else lines, sum(points for _, points in slid)


def test_slides_and_legal_moves_match_the_plain_rules_on_random_boards():
    rng = random.Random(7)
    for _ in range(2000):
        size = rng.choice([2, 3, 4, 5])
        board = [[rng.choice([0, 0, 2, 2, 4, 8, 16]) for _ in range(size)] for _ in range(size)]
        plain = {d: _slide_plainly(board, d) for d in ("up", "down", "left", "right")}
        assert {d: slide(board, d) for d in plain} == plain, board
        assert legal_moves(board) == [d for d, (after, _) in plain.items() if after != board], board


def test_seeded_games_are_unchanged():
    """The facts of these games, as the rules gave them before their lookup tables: same seed, same game."""
    def strategy_for(seed):
        state = [seed]

        def strategy(board):  # deterministic, reads the board, sometimes invalid
            state[0] = (state[0] * 1103515245 + 12345 + sum(map(sum, board))) % 2**31
            return ["up", "down", "left", "right", "sideways"][state[0] % 5]
        return strategy

    games = [play_game(strategy_for(seed), seed, **kw) for seed in range(40)
             for kw in ({}, {"target": 64}, {"size": 3}, {"max_moves": 30, "max_invalid": 2})]
    assert {g["ended"] for g in games} == {"won", "no_moves", "invalid_moves", "max_moves"}
    assert hashlib.md5(json.dumps(games, sort_keys=True).encode()).hexdigest() == "494879e2860ac0556b22524423ac7542"


@pytest.fixture(scope="module")
def box():
    with Sandbox() as sandbox:
        yield sandbox


GREEDY = """
import random
def strategy(board):
    return random.choice(["down", "left", "right", "up"])
"""


def test_strategy_mode_plays_games_in_the_sandbox(box):
    env = envs.make("2048-strategy", games=3, target=64, sandbox=box)
    obs, _ = env.reset(seed=1)
    assert "def strategy(board) -> str" in obs and [t["function"]["name"] for t in env.tool_schemas()] == ["submit"]
    obs, reward, terminated, _, info = env.step({"name": "submit", "arguments": {"code": GREEDY}})
    assert terminated and info["sandbox_status"] == "ok" and info["function_works"] and info["games_played"] == 3
    assert 0 <= info["win_rate"] <= 1 and reward == info["win_rate"] and 0 < info["valid_move_fraction"] <= 1
    again = envs.make("2048-strategy", games=3, target=64, sandbox=box)
    again.reset(seed=1)
    assert again.seeds == env.seeds  # same seed, same games


@pytest.mark.parametrize("code, status, works", [
    ("def strategy(board):\n    raise RuntimeError('oops')", "ok", False),
    ("def strategy(board):\n    while True: pass", "timeout", False),
    ("def helper(board):\n    return 'up'", "not run", False),
    ("import numpy\ndef strategy(board):\n    return 'up'", "not run", False),
])
def test_strategy_mode_failures(box, code, status, works):
    env = envs.make("2048-strategy", games=2, wall_s=1.0, sandbox=box)
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step({"name": "submit", "arguments": {"code": code}})
    assert terminated and reward == 0 and info["sandbox_status"] == status and info["function_works"] is works
    assert info["forbidden_imports"] == ("numpy" in code)


def test_strategy_mode_accepts_code_in_plain_text(box):
    env = envs.make("2048-strategy", games=1, target=16, sandbox=box)
    env.reset(seed=0)
    text = ("Here is my strategy:\n```python\nimport random\ndef strategy(board):\n"
            "    return random.choice(['up', 'left', 'right', 'down'])\n```")
    _, _, terminated, _, info = env.step(text)
    assert terminated and info["function_works"] and info["games_played"] == 1


def test_sudoku_strategy_mode(box):
    solver = """
def strategy(board, initial):
    n = 4
    for cell, v in enumerate(board):
        if v == 0:
            r, c = divmod(cell, n)
            for d in range(1, n + 1):
                peers = [board[r * n + j] for j in range(n)] + [board[i * n + c] for i in range(n)]
                br, bc = r - r % 2, c - c % 2
                peers += [board[(br + i) * n + bc + j] for i in range(2) for j in range(2)]
                if d not in peers:
                    return [r + 1, c + 1, d]
    return [1, 1, 1]
"""
    env = envs.make("sudoku-strategy", games=3, sandbox=box)
    obs, _ = env.reset(seed=2)
    assert "def strategy(board, initial)" in obs
    _, reward, terminated, _, info = env.step({"name": "submit", "arguments": {"code": solver}})
    assert terminated and info["function_works"] and info["games_played"] == 3 and info["games_won"] >= 1
    assert info["valid_move_fraction"] > 0.5 and reward == info["win_rate"]
    env.reset(seed=2)
    code = "def strategy(board, initial):\n    return [1, 1, 9]"
    _, _, _, _, info = env.step({"name": "submit", "arguments": {"code": code}})
    assert info["function_works"] and info["games_won"] == 0 and info["valid_move_fraction"] == 0.0
