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


_SLID: dict[tuple[int, ...], tuple[tuple[int, ...], int]] = {}  # row -> (row slid left, points)
_SLID_MAX = 1 << 18  # distinct rows remembered (4x4 games meet a few thousand)


def _slide_row(row: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    """Slide one row to the left, merging equal neighbours once; returns (row, points)."""
    hit = _SLID.get(row)
    if hit is not None:
        return hit
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
    result = (tuple(out) + (0,) * (len(row) - len(out)), points)
    if len(_SLID) < _SLID_MAX:
        _SLID[row] = result
    return result


def slide(board: list[list[int]], direction: str) -> tuple[list[list[int]], int]:
    """The board after sliding every tile towards `direction`, and the points merged."""
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r} (accepted: {', '.join(DIRECTIONS)})")
    if direction == "left":
        slid = [_slide_row(tuple(row)) for row in board]
        return [list(row) for row, _ in slid], sum(p for _, p in slid)
    if direction == "right":
        slid = [_slide_row(tuple(row[::-1])) for row in board]
        return [list(row[::-1]) for row, _ in slid], sum(p for _, p in slid)
    columns = list(zip(*board))
    if direction == "up":
        slid = [_slide_row(col) for col in columns]
        moved = [col for col, _ in slid]
    else:
        slid = [_slide_row(col[::-1]) for col in columns]
        moved = [col[::-1] for col, _ in slid]
    return [list(row) for row in zip(*moved)], sum(p for _, p in slid)


def legal_moves(board: list[list[int]]) -> list[str]:
    return list(_moves(board))


def _moves(board: list[list[int]]) -> dict[str, tuple[list[list[int]], int]]:
    """Every direction's outcome (board, points), for the directions that change the board."""
    out = {}
    for d in DIRECTIONS:
        after = slide(board, d)
        if after[0] != board:
            out[d] = after
    return out


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
        legal = _moves(board)  # each direction slid once per board, not again for the chosen move
        if not legal:
            ended = "no_moves"
            break
        try:
            direction = strategy([list(row) for row in board])
        except Exception as e:  # the model's function raised on this board
            ended, error = "error", f"{type(e).__name__}: {e}"
            return _facts(seed, board, score, moves, invalid, ended, target, error)
        if not isinstance(direction, str) or direction not in legal:  # unknown, or does not move a tile
            invalid, streak = invalid + 1, streak + 1
            if streak >= max_invalid:
                ended = "invalid_moves"
                break
            continue
        board, points = legal[direction]
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
