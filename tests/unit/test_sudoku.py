import random

import pytest

import envs
from envs.sudoku.puzzles import HOLES, box_shape, count_solutions, generate, peers


def is_valid_solution(grid, size):
    digits = set(range(1, size + 1))
    return all(grid[c] in digits and all(grid[p] != grid[c] for p in peers(size)[c]) for c in range(size * size))


@pytest.mark.parametrize("size", [4, 6, 9])
@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_generator_gives_unique_solvable_puzzles(size, difficulty):
    for seed in range(5 if size == 9 else 20):
        puzzle, solution = generate(size, difficulty, random.Random(seed))
        assert count_solutions(puzzle, size, limit=2) == 1
        assert is_valid_solution(solution, size)
        assert all(p in (0, s) for p, s in zip(puzzle, solution))
        assert 0 < puzzle.count(0) <= HOLES[size][difficulty]


def test_difficulty_orders_holes():
    holes = [sum(generate(9, d, random.Random(s))[0].count(0) for s in range(3)) for d in ("easy", "medium", "hard")]
    assert holes[0] < holes[1] < holes[2]


def test_bad_size_and_difficulty_are_named():
    with pytest.raises(ValueError, match=r"unsupported sudoku size 5 \(accepted: \[4, 6, 9\]\)"):
        box_shape(5)
    with pytest.raises(ValueError, match="unknown difficulty 'brutal'"):
        generate(4, "brutal", random.Random(0))


def test_same_seed_same_puzzle_and_different_seeds_differ():
    a, b = envs.make("sudoku"), envs.make("sudoku")
    assert a.reset(seed=7)[0] == b.reset(seed=7)[0]
    boards = {tuple(envs.make("sudoku", size=9).reset(seed=s)[0].splitlines()) for s in range(5)}
    assert len(boards) == 5


def fresh(seed=3, **kw):
    env = envs.make("sudoku", **kw)
    env.reset(seed=seed)
    return env


def first_empty(env):
    cell = env.board.index(0)
    return cell // env.size + 1, cell % env.size + 1, env.solution[cell]


def test_correct_move_fills_cell_and_raises_progress():
    env = fresh()
    row, col, digit = first_empty(env)
    obs, _, terminated, _, info = env.step({"name": "place",
                                            "arguments": {"row": row, "col": col, "digit": digit}})
    assert obs.startswith(f"Placed {digit} at row {row}, column {col}.")
    assert env.board[(row - 1) * 4 + col - 1] == digit
    assert info["progress"] > 0 and info["invalid_actions"] == 0 and not terminated


@pytest.mark.parametrize("arguments, message", [
    ({"row": 0, "col": 1, "digit": 1}, "row must be between 1 and 4, got 0"),
    ({"row": 1, "col": 5, "digit": 1}, "col must be between 1 and 4, got 5"),
    ({"row": 1, "col": 1, "digit": 9}, "digit must be between 1 and 4, got 9"),
])
def test_out_of_range_moves_are_invalid(arguments, message):
    env = fresh()
    obs, reward, terminated, _, info = env.step({"name": "place", "arguments": arguments})
    assert message in obs and reward == 0 and info["invalid_actions"] == 1 and not terminated


def test_clue_cells_cannot_change_and_conflicts_are_rejected():
    env = fresh()
    clue = next(i for i, v in enumerate(env.puzzle) if v)
    obs, *_ , info = env.step({"name": "place", "arguments": {"row": clue // 4 + 1, "col": clue % 4 + 1, "digit": 1}})
    assert "given clue" in obs and info["invalid_actions"] == 1
    row, col, _ = first_empty(env)
    cell = (row - 1) * 4 + col - 1
    clash = next(env.board[p] for p in peers(4)[cell] if env.board[p])
    obs, *_, info = env.step({"name": "place", "arguments": {"row": row, "col": col, "digit": clash}})
    assert "already in the same row, column or box" in obs and info["invalid_actions"] == 2
    assert env.board[cell] == 0


def test_every_place_call_is_counted_by_what_it_did():
    env = fresh(difficulty="hard")
    place = lambda cell, digit: env.step({"name": "place", "arguments": {
        "row": cell // 4 + 1, "col": cell % 4 + 1, "digit": digit}})[-1]
    clue = next(i for i, v in enumerate(env.puzzle) if v)
    right = env.board.index(0)
    place(right, env.solution[right])
    # a legal digit that is not the solution's, in an empty cell
    wrong, digit = next((c, d) for c in range(16) if env.board[c] == 0 for d in range(1, 5)
                        if d != env.solution[c] and all(env.board[p] != d for p in peers(4)[c]))
    place(wrong, digit)
    info = place(wrong, env.solution[wrong])  # its own filled cell, now with the solution's digit
    assert info["overwrite_moves"] == info["right_moves"] == info["wrong_moves"] == 1
    place(clue, 1)
    place(right, 5)
    clash = next(c for c in range(16) if env.board[c] == 0)
    info = place(clash, next(env.board[p] for p in peers(4)[clash] if env.board[p]))
    assert [info[f"{kind}_moves"] for kind in ("clue", "off_board", "clash")] == [1, 1, 1]
    assert info["moves"] == 6 and info["invalid_actions"] == 3


def test_solving_terminates_with_reward_one():
    env = fresh()
    total = 0.0
    while 0 in env.board:
        row, col, digit = first_empty(env)
        obs, reward, terminated, truncated, info = env.step(
            {"name": "place", "arguments": {"row": row, "col": col, "digit": digit}})
        total += reward
    assert terminated and not truncated and info["solved"] and info["progress"] == 1.0
    assert "Solved!" in obs and total == 1.0 and info["episode_return"] == 1.0
    with pytest.raises(RuntimeError, match="finished episode"):
        env.step({"name": "show_board", "arguments": {}})


def test_too_many_invalid_moves_end_the_episode():
    env = fresh(max_invalid=3)
    for i in range(3):
        obs, _, terminated, _, info = env.step("I think the answer is 4")
    assert terminated and info["invalid_actions"] == 3 and info["no_tool_calls"] == 3
    assert "Too many invalid actions" in obs


def test_max_turns_truncates():
    env = fresh(max_steps=2, max_invalid=None)
    env.step({"name": "show_board", "arguments": {}})
    _, _, terminated, truncated, info = env.step({"name": "show_board", "arguments": {}})
    assert truncated and not terminated and info["turns"] == 2


def test_show_board_matches_render():
    env = fresh(render_mode="ansi")
    obs, *_ = env.step({"name": "show_board", "arguments": {}})
    assert obs == env.render() and obs.count("Row ") == 4


def test_empty_cells_line_lists_the_empty_cells_in_reading_order():
    env = fresh(difficulty="hard", list_empty_cells=True)
    expected = " ".join(f"({c // 4 + 1},{c % 4 + 1})" for c, v in enumerate(env.puzzle) if v == 0)
    assert env.board_text().splitlines()[-1] == f"Empty cells (row, col): {expected}"
    row, col, digit = first_empty(env)
    obs, *_ = env.step({"name": "place", "arguments": {"row": row, "col": col, "digit": digit}})
    line = obs.splitlines()[-1]
    assert line.startswith("Empty cells (row, col): ") and f"({row},{col})" not in line
    assert line == f"Empty cells (row, col): {expected.removeprefix(f'({row},{col})').strip()}"


def test_empty_cells_line_is_off_by_default_and_reads_none_when_solved():
    assert "Empty cells" not in fresh().board_text()
    env = fresh(list_empty_cells=True)
    while 0 in env.board:
        row, col, digit = first_empty(env)
        obs, *_ = env.step({"name": "place", "arguments": {"row": row, "col": col, "digit": digit}})
    assert obs.splitlines()[-1] == "Empty cells (row, col): none"


def test_constrained_empty_cells_line_lists_fewest_legal_digits_first_and_its_head_is_the_experts_cell():
    from envs.sudoku import SudokuExpert

    for seed in range(10):
        env = envs.make("sudoku", size=4, difficulty="hard", list_empty_cells="constrained")
        env.reset(seed=seed)
        while 0 in env.board:
            line = env.board_text().splitlines()[-1].removeprefix("Empty cells (row, col): ")
            cells = [(int(t[1]) - 1) * 4 + int(t[3]) - 1 for t in line.split()]
            legal = [len(set(range(1, 5)) - {env.board[p] for p in peers(4)[c]}) for c in cells]
            assert sorted(cells) == [c for c, v in enumerate(env.board) if v == 0]
            assert legal == sorted(legal) and all(  # fewest first, ties in reading order
                a < b for a, b, la, lb in zip(cells, cells[1:], legal, legal[1:]) if la == lb)
            move = SudokuExpert(explore=0.0, order="constrained")(env)
            assert (move.arguments["row"] - 1) * 4 + move.arguments["col"] - 1 == cells[0]
            env.step(move)
        assert env.solved


@pytest.mark.parametrize("value", ["yes", 1, None, "fewest"])
def test_bad_list_empty_cells_is_named(value):
    with pytest.raises(TypeError, match=rf"list_empty_cells must be true, false or one of 'reading', 'constrained', "
                                        rf"got {value!r}"):
        envs.make("sudoku", list_empty_cells=value)
