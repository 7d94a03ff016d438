"""2048 reference policies: expectimax and random legal play (tool mode), and strategy sources.

Tool mode (`Game2048Env`): `Game2048Expert` searches `depth` moves ahead, averaging over
tile spawns, and scores leaves with a heuristic that rewards empty cells, possible merges
and monotone rows/columns (tiles ordered towards a corner) and penalises big tiles away
from that order. `Game2048Random` plays a uniformly random legal move.

Strategy mode (`Game2048StrategyEnv`): the policies submit source code, stdlib only as it
runs in the sandbox. The expert's strategy looks two moves ahead with the same heuristic,
averaging over where a new 2 lands (no 4s: it halves the cost); the random one plays a
uniformly random legal move.
"""

from __future__ import annotations

import functools
import itertools
import random

from envs.base import ToolCall
from envs.g2048.env import Game2048Env
from envs.g2048.rules import DIRECTIONS, slide
from envs.sandbox.task import submission_policies

# nneonneo's 2048-ai weights (github.com/nneonneo/2048-ai), with tile ranks (log2 values).
EMPTY_WEIGHT, MERGES_WEIGHT = 270.0, 700.0
MONOTONICITY_WEIGHT, MONOTONICITY_POWER = 47.0, 4.0
SUM_WEIGHT, SUM_POWER = 11.0, 3.5
LINE_BASE = 200_000.0  # boards of real games stay positive (lowest seen ~0.8M), so a lost game (0) ranks last


@functools.lru_cache(maxsize=1 << 16)
def line_score(line: tuple[int, ...]) -> float:
    """Heuristic value of one row or column (tile values, 0 = empty)."""
    ranks = [v.bit_length() - 1 if v else 0 for v in line]
    empty = ranks.count(0)
    merges, run, previous = 0, 0, 0
    for r in ranks:
        if not r:
            continue
        if r == previous:
            run += 1
        else:
            merges += 1 + run if run else 0
            run, previous = 0, r
    merges += 1 + run if run else 0
    towards_start = towards_end = 0.0
    for a, b in itertools.pairwise(ranks):
        if a > b:
            towards_start += a ** MONOTONICITY_POWER - b ** MONOTONICITY_POWER
        else:
            towards_end += b ** MONOTONICITY_POWER - a ** MONOTONICITY_POWER
    return (LINE_BASE + EMPTY_WEIGHT * empty + MERGES_WEIGHT * merges
            - MONOTONICITY_WEIGHT * min(towards_start, towards_end) - SUM_WEIGHT * sum(r ** SUM_POWER for r in ranks))


def board_score(board: list[list[int]]) -> float:
    return sum(line_score(tuple(row)) for row in board) + sum(line_score(col) for col in zip(*board))


def _outcomes(board: list[list[int]]) -> list[tuple[str, list[list[int]]]]:
    """(direction, board after the slide) for every direction that moves a tile."""
    out = []
    for d in DIRECTIONS:
        after, _ = slide(board, d)
        if after != board:
            out.append((d, after))
    return out


def _best(board: list[list[int]], depth: int) -> tuple[float, str | None]:
    """Max node: the best direction's value, `depth` moves deep; (0, None) when no move is left."""
    best, choice = 0.0, None
    for direction, after in _outcomes(board):
        value = _chance(after, depth - 1) if depth > 1 else board_score(after)
        if choice is None or value > best:
            best, choice = value, direction
    return best, choice


def _chance(board: list[list[int]], depth: int) -> float:
    """Chance node: the mean over where the new tile lands, 2 with p=0.9 and 4 with p=0.1."""
    empty = [(r, c) for r, row in enumerate(board) for c, v in enumerate(row) if not v]
    if not empty:
        return _best(board, depth)[0]
    total = 0.0
    for r, c in empty:
        for tile, p in ((2, 0.9), (4, 0.1)):
            board[r][c] = tile
            total += p * _best(board, depth)[0]
        board[r][c] = 0
    return total / len(empty)


def expectimax_move(board: list[list[int]], depth: int = 2) -> str | None:
    """The direction with the best expected heuristic `depth` moves ahead; None when no move is legal."""
    return _best([list(row) for row in board], depth)[1]


class Game2048Expert:
    """Expectimax over tile spawns, `depth` own moves deep, with an occasional `show_board`.

    Measured on 4x4 (one core): depth 2 (move, spawn, move) takes ~0.5 ms a move, about
    half a second a game, and reaches 2048 in 11 of 20 games (512 in 19); depth 3 wins
    more but costs ~25 ms a move; depth 1 is greedy on the heuristic (~0.05 ms a move,
    256 in 17 of 20 games, random play: 2). `explore` is the share of turns that look at
    the board instead of moving.
    """

    DEPTHS = (1, 2, 3)

    def __init__(self, depth: int = 2, explore: float = 0.0, seed: int = 0):
        if depth not in self.DEPTHS:
            raise ValueError(f"expectimax depth must be one of {self.DEPTHS}, got {depth!r}")
        if not 0.0 <= explore <= 1.0:
            raise ValueError(f"explore must be a probability in [0, 1], got {explore!r}")
        self.depth, self.explore = depth, explore
        self.rng = random.Random(seed)

    def __call__(self, env: Game2048Env) -> ToolCall:
        if self.rng.random() < self.explore:
            return ToolCall("show_board", {})
        direction = expectimax_move(env.board, self.depth)
        return ToolCall("move", {"direction": direction or "up"})  # None only on a finished board


class Game2048Random:
    """A uniformly random legal move."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def __call__(self, env: Game2048Env) -> ToolCall:
        legal = [d for d, _ in _outcomes(env.board)] or list(DIRECTIONS)  # none only once the game is over
        return ToolCall("move", {"direction": self.rng.choice(legal)})


# ---------------------------------------------------------------------------------------
# Strategy mode: source code that the sandbox plays (stdlib only; it cannot import envs)

_SLIDE_SOURCE = '''
DIRECTIONS = ("up", "down", "left", "right")


def slide_line(line):
    tiles = [v for v in line if v]
    out, i = [], 0
    while i < len(tiles):
        if i + 1 < len(tiles) and tiles[i] == tiles[i + 1]:
            out.append(2 * tiles[i])
            i += 2
        else:
            out.append(tiles[i])
            i += 1
    return out + [0] * (len(line) - len(out))


def slide(board, direction):
    if direction in ("left", "right"):
        step = 1 if direction == "left" else -1
        return [slide_line(row[::step])[::step] for row in board]
    cols = [list(c) for c in zip(*board)]
    step = 1 if direction == "up" else -1
    return [list(r) for r in zip(*[slide_line(c[::step])[::step] for c in cols])]


def legal(board):
    return [(d, b) for d in DIRECTIONS for b in [slide(board, d)] if b != board]
'''

STRATEGY_EXPERT_SOURCE = _SLIDE_SOURCE + '''
_line_scores = {}


def line_score(line):
    """Empty cells and mergeable neighbours are good; big tiles out of order along the line are bad."""
    if line not in _line_scores:
        ranks = [v.bit_length() - 1 if v else 0 for v in line]
        tiles = [r for r in ranks if r]
        merges = sum(a == b for a, b in zip(tiles, tiles[1:]))
        up = sum(max(a ** 4 - b ** 4, 0) for a, b in zip(ranks, ranks[1:]))
        down = sum(max(b ** 4 - a ** 4, 0) for a, b in zip(ranks, ranks[1:]))
        _line_scores[line] = (270 * ranks.count(0) + 700 * merges - 47 * min(up, down)
                              - 11 * sum(r ** 3.5 for r in ranks))
    return _line_scores[line]


def score(board):
    return sum(line_score(tuple(row)) for row in board) + sum(line_score(col) for col in zip(*board))


def expected(board):
    """The mean, over where a new 2 lands, of the best next move's score."""
    cells = [(r, c) for r, row in enumerate(board) for c, v in enumerate(row) if not v]
    if not cells:
        return score(board)
    total = 0.0
    for r, c in cells:
        board[r][c] = 2
        total += max((score(b) for _, b in legal(board)), default=-1e9)
        board[r][c] = 0
    return total / len(cells)


def strategy(board):
    """Two moves ahead, averaging over the tile that appears in between."""
    moves = legal(board)
    if not moves:
        return "up"
    return max(moves, key=lambda m: expected(m[1]))[0]
'''


def random_strategy_source(seed: int = 0) -> str:
    """A strategy that plays a uniformly random legal move, seeded so that a replay is the same game."""
    return ("import random\n" + _SLIDE_SOURCE + f"\n_rng = random.Random({int(seed)})\n\n\n" + '''def strategy(board):
    """A uniformly random legal move."""
    moves = legal(board)
    return _rng.choice(moves)[0] if moves else "up"
''')


# the strategy env's policies: submit the expert's source, or a random player's (seeded)
game2048_strategy_expert, game2048_strategy_random = submission_policies(STRATEGY_EXPERT_SOURCE,
                                                                         random_strategy_source)
