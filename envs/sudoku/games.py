"""Sudoku played by a model-written `strategy(board, initial)`: the trusted sandbox driver.

Stdlib only and no `envs` imports (the sandbox's fork server imports it by its bare name).
The strategy gets the current board and the initial puzzle (flat lists, 0 = empty) and
returns `[row, col, digit]` (1-based). A placement into a clue cell, out of range, or
clashing with a peer is invalid and leaves the board as it was; `max_invalid` invalid
moves in a row end the game. A non-clue cell may be overwritten.
"""

from __future__ import annotations

import random

try:
    from puzzles import generate, peers  # in the fork server: drivers and their siblings load by bare name
except ImportError:
    from envs.sudoku.puzzles import generate, peers


def _is_valid(board, puzzle, move, size) -> bool:
    if not (isinstance(move, (list, tuple)) and len(move) == 3 and all(isinstance(v, int) for v in move)):
        return False
    row, col, digit = move
    if not (1 <= row <= size and 1 <= col <= size and 1 <= digit <= size):
        return False
    cell = (row - 1) * size + col - 1
    return not puzzle[cell] and all(board[p] != digit for p in peers(size)[cell])


def play_game(strategy, seed: int, size: int = 4, difficulty: str = "easy", max_moves: int = 200,
              max_invalid: int = 5) -> dict:
    puzzle, solution = generate(size, difficulty, random.Random(seed))
    board, moves, invalid, streak, ended, error = list(puzzle), 0, 0, 0, "max_moves", ""
    while moves + invalid < max_moves:
        if board == solution:
            ended = "won"
            break
        try:
            move = strategy(list(board), list(puzzle))
        except Exception as e:  # noqa: BLE001 - the model's function may raise anything on this board
            ended, error = "error", f"{type(e).__name__}: {e}"
            break
        if not _is_valid(board, puzzle, move, size):
            invalid, streak = invalid + 1, streak + 1
            if streak >= max_invalid:
                ended = "invalid_moves"
                break
            continue
        row, col, digit = move
        board[(row - 1) * size + col - 1] = digit
        moves, streak = moves + 1, 0
    won = board == solution
    return {"seed": seed, "won": won, "ended": "won" if won else ended, "moves": moves, "invalid_moves": invalid,
            "filled": sum(b == s for b, s, p in zip(board, solution, puzzle) if not p), "error": error}


def play_games(child, seeds: list[int], size: int = 4, difficulty: str = "easy", max_moves: int = 200,
               max_invalid: int = 5) -> list[dict]:
    """Sandbox driver: one puzzle per seed, asking the sandboxed `strategy` for every move."""
    child.colocate()  # one round trip per move: cheapest with both on one CPU
    return [play_game(child.call, seed, size, difficulty, max_moves, max_invalid) for seed in seeds]
