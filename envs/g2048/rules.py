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
    """Put a 2 or a 4 on a random empty cell of `board`, in place."""
    for row, spawned in zip(board, _spawn(tuple(map(tuple, board)), rng)):
        row[:] = spawned


# Every distinct row (or column) met so far, slid both ways: a move is then a table lookup
# per line. A row's entry: (slid left, points, slid right, points, moves), where `moves` has
# bit 1 set when sliding left changes the row and bit 2 when sliding right does.
_LINES: dict[tuple[int, ...], tuple] = {}
_LINES_MAX = 1 << 18  # distinct lines remembered (4x4 games meet a few thousand)
# How each direction slides: along columns or rows, and the table slot of its result.
_HOW = {"left": (False, 0), "right": (False, 2), "up": (True, 0), "down": (True, 2)}
# Legal directions for each combination of moves: bits 1, 2 from the rows, 4, 8 from the columns.
_LEGAL = [frozenset(d for bit, d in ((1, "left"), (2, "right"), (4, "up"), (8, "down")) if mask & bit)
          for mask in range(16)]


def _slide_left(line: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    """Slide one line to the left, merging equal neighbours once; returns (line, points)."""
    tiles = [v for v in line if v]
    out, points, i = [], 0, 0
    while i < len(tiles):
        if i + 1 < len(tiles) and tiles[i] == tiles[i + 1]:
            out.append(tiles[i] * 2)
            points += tiles[i] * 2
            i += 2
        else:
            out.append(tiles[i])
            i += 1
    return tuple(out) + (0,) * (len(line) - len(out)), points


def _line(line: tuple[int, ...]) -> tuple:
    """The table entry of `line`, computed on first sight."""
    entry = _LINES.get(line)
    if entry is None:
        left, left_points = _slide_left(line)
        right, right_points = _slide_left(line[::-1])
        right = right[::-1]
        entry = (left, left_points, right, right_points, (left != line) | (right != line) << 1)
        if len(_LINES) < _LINES_MAX:
            _LINES[line] = entry
    return entry


def _legal(rows: tuple[tuple[int, ...], ...]) -> frozenset[str]:
    """The directions that change the board."""
    get, mask = _LINES.get, 0
    for row in rows:
        mask |= (get(row) or _line(row))[4]
    for column in zip(*rows):
        mask |= (get(column) or _line(column))[4] << 2
    return _LEGAL[mask]


def _slide(rows: tuple[tuple[int, ...], ...], direction: str) -> tuple[tuple[tuple[int, ...], ...], int]:
    """The rows after sliding towards `direction` (one of DIRECTIONS), and the points merged."""
    columns, slot = _HOW[direction]
    get = _LINES.get
    entries = [get(line) or _line(line) for line in (zip(*rows) if columns else rows)]
    slid = tuple(entry[slot] for entry in entries)
    return tuple(zip(*slid)) if columns else slid, sum(entry[slot + 1] for entry in entries)


def _spawn(rows: tuple[tuple[int, ...], ...], rng: random.Random) -> tuple[tuple[int, ...], ...]:
    """The rows with a 2 or a 4 on a random empty cell (the cells counted row by row)."""
    empty = [(r, c) for r, row in enumerate(rows) if 0 in row for c, v in enumerate(row) if v == 0]
    if not empty:
        return rows
    r, c = empty[rng.randrange(len(empty))]
    row = rows[r]
    row = row[:c] + (4 if rng.random() < 0.1 else 2,) + row[c + 1:]
    return rows[:r] + (row,) + rows[r + 1:]


def slide(board: list[list[int]], direction: str) -> tuple[list[list[int]], int]:
    """The board after sliding every tile towards `direction`, and the points merged."""
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r} (accepted: {', '.join(DIRECTIONS)})")
    rows, points = _slide(tuple(map(tuple, board)), direction)
    return [list(row) for row in rows], points


def legal_moves(board: list[list[int]]) -> list[str]:
    legal = _legal(tuple(map(tuple, board)))
    return [d for d in DIRECTIONS if d in legal]


def max_tile(board: list[list[int]]) -> int:
    return max(map(max, board))


def play_game(strategy, seed: int, size: int = 4, target: int = 2048, max_moves: int = 2000,
              max_invalid: int = 8) -> dict:
    """Play one game with `strategy(board) -> direction`; returns its facts.

    A move that is not a direction, or that does not change the board, is invalid: the
    board stays, and `max_invalid` invalid moves in a row end the game.
    """
    rng = random.Random(seed)
    board = tuple(map(tuple, new_board(size, rng)))  # rows as tuples: the line table's keys
    score, moves, invalid, streak, ended = 0, 0, 0, 0, "max_moves"
    while moves + invalid < max_moves:
        if max_tile(board) >= target:
            ended = "won"
            break
        legal = _legal(board)
        if not legal:
            ended = "no_moves"
            break
        try:
            direction = strategy([list(row) for row in board])
        except Exception as e:  # noqa: BLE001 - the model's function may raise anything on this board
            ended, error = "error", f"{type(e).__name__}: {e}"
            return _facts(seed, board, score, moves, invalid, ended, target, error)
        if not isinstance(direction, str) or direction not in legal:  # unknown, or does not move a tile
            invalid, streak = invalid + 1, streak + 1
            if streak >= max_invalid:
                ended = "invalid_moves"
                break
            continue
        board, points = _slide(board, direction)
        score, moves, streak = score + points, moves + 1, 0
        board = _spawn(board, rng)
    return _facts(seed, board, score, moves, invalid, ended, target)


def _facts(seed, board, score, moves, invalid, ended, target, error="") -> dict:
    return {"seed": seed, "won": ended == "won" or max_tile(board) >= target, "max_tile": max_tile(board),
            "score": score, "moves": moves, "invalid_moves": invalid, "ended": ended, "error": error}


def play_games(child, seeds: list[int], size: int = 4, target: int = 2048, max_moves: int = 2000,
               max_invalid: int = 8) -> list[dict]:
    """Sandbox driver: play one game per seed, asking the sandboxed `strategy` for every move."""
    child.colocate()  # one round trip per move: cheapest with both on one CPU
    return [play_game(child.call, seed, size, target, max_moves, max_invalid) for seed in seeds]
