"""2048 rules, stdlib only: boards, moves, seeded tile spawns, and the strategy driver.

A board is a list of rows, each a list of ints (0 = empty). New tiles are 2 (90%) or 4
(10%) on a random empty cell. The same seed gives the same game for the same moves.
This module is also the trusted driver the sandbox uses to play a model-written
`strategy(board) -> str` (imported by the fork server by its bare name, so it must not
import from the `envs` package).
"""

from __future__ import annotations

import random

DIRECTIONS = ("up", "down", "left", "right")


def new_board(size: int, rng: random.Random) -> list[list[int]]:
    board = [[0] * size for _ in range(size)]
    spawn(board, rng)
    spawn(board, rng)
    return board


def spawn(board: list[list[int]], rng: random.Random) -> None:
    empty = [(r, c) for r, row in enumerate(board) for c, v in enumerate(row) if v == 0]
    if empty:
        r, c = empty[rng.randrange(len(empty))]
        board[r][c] = 4 if rng.random() < 0.1 else 2


def _slide_row(row: list[int]) -> tuple[list[int], int]:
    """Slide one row to the left, merging equal neighbours once; returns (row, points)."""
    tiles = [v for v in row if v]
    out, points, i = [], 0, 0
    while i < len(tiles):
        if i + 1 < len(tiles) and tiles[i] == tiles[i + 1]:
            out.append(tiles[i] * 2)
            points += tiles[i] * 2
            i += 2
        else:
            out.append(tiles[i])
            i += 1
    return out + [0] * (len(row) - len(out)), points


def slide(board: list[list[int]], direction: str) -> tuple[list[list[int]], int]:
    """The board after sliding every tile towards `direction`, and the points merged."""
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r} (accepted: {', '.join(DIRECTIONS)})")
    n = len(board)
    if direction in ("left", "right"):
        lines = [list(row) for row in board]
    else:
        lines = [[board[r][c] for r in range(n)] for c in range(n)]
    reverse = direction in ("right", "down")
    moved, points = [], 0
    for line in lines:
        slid, p = _slide_row(line[::-1] if reverse else line)
        moved.append(slid[::-1] if reverse else slid)
        points += p
    if direction in ("left", "right"):
        return moved, points
    return [[moved[c][r] for c in range(n)] for r in range(n)], points


def legal_moves(board: list[list[int]]) -> list[str]:
    return [d for d in DIRECTIONS if slide(board, d)[0] != board]


def max_tile(board: list[list[int]]) -> int:
    return max(max(row) for row in board)


def play_game(strategy, seed: int, size: int = 4, target: int = 2048, max_moves: int = 2000,
              max_invalid: int = 8) -> dict:
    """Play one game with `strategy(board) -> direction`; returns its facts.

    A move that is not a direction, or that does not change the board, is invalid: the
    board stays, and `max_invalid` invalid moves in a row end the game.
    """
    rng = random.Random(seed)
    board, score, moves, invalid, streak, ended = new_board(size, rng), 0, 0, 0, 0, "max_moves"
    while moves + invalid < max_moves:
        if max_tile(board) >= target:
            ended = "won"
            break
        if not legal_moves(board):
            ended = "no_moves"
            break
        try:
            direction = strategy([list(row) for row in board])
        except Exception as e:  # the model's function raised on this board
            ended, error = "error", f"{type(e).__name__}: {e}"
            return _facts(seed, board, score, moves, invalid, ended, target, error)
        after = slide(board, direction)[0] if direction in DIRECTIONS else board
        if after == board:
            invalid, streak = invalid + 1, streak + 1
            if streak >= max_invalid:
                ended = "invalid_moves"
                break
            continue
        board, points = slide(board, direction)
        score, moves, streak = score + points, moves + 1, 0
        spawn(board, rng)
    return _facts(seed, board, score, moves, invalid, ended, target)


def _facts(seed, board, score, moves, invalid, ended, target, error="") -> dict:
    return {"seed": seed, "won": ended == "won" or max_tile(board) >= target, "max_tile": max_tile(board),
            "score": score, "moves": moves, "invalid_moves": invalid, "ended": ended, "error": error}


def play_games(child, seeds: list[int], size: int = 4, target: int = 2048, max_moves: int = 2000,
               max_invalid: int = 8) -> list[dict]:
    """Sandbox driver: play one game per seed, asking the sandboxed `strategy` for every move."""
    return [play_game(child.call, seed, size, target, max_moves, max_invalid) for seed in seeds]
