"""Sudoku reference policies: tool mode (`place`) and strategy mode (`def strategy(board, initial)`).

Tool mode: `SudokuExpert` places solution digits, `SudokuRandom` a uniformly random legal
digit in a random empty cell. Strategy mode: the policies submit source code (stdlib only,
it runs in the sandbox); the expert's strategy solves the puzzle from `initial` by
backtracking and fills the first empty cell, the random one plays as `SudokuRandom` does.
"""

from __future__ import annotations

import random

from envs.base import ToolCall
from envs.sandbox.task import submission_policies
from envs.sudoku.env import SudokuEnv


class SudokuExpert:
    """Places solution digits, with an occasional `show_board`.

    `order` picks the cell. "reading" (default): the first empty cell, row by row, which
    is the easiest choice to imitate; its digit is forced by its row, column and box in
    84% of 4x4 hard moves, and otherwise fixed only by the rest of the puzzle.
    "constrained": the cell with the fewest legal digits (the first such in reading
    order): its digit was forced in every 4x4 move we measured, but finding that cell
    means checking them all, unless the board lists it first (`list_empty_cells:
    constrained`, as configs/sudoku-sft.yaml has it).
    """

    ORDERS = ("reading", "constrained")

    def __init__(self, explore: float = 0.1, seed: int = 0, order: str = "reading"):
        if order not in self.ORDERS:
            raise ValueError(f"unknown expert order {order!r} (accepted: {', '.join(self.ORDERS)})")
        self.explore = explore
        self.order = order
        self.rng = random.Random(seed)

    def __call__(self, env: SudokuEnv) -> ToolCall:
        if self.rng.random() < self.explore:
            return ToolCall("show_board", {})
        n = env.size
        cell = env.empty_cells(self.order)[0]
        return ToolCall("place", {"row": cell // n + 1, "col": cell % n + 1, "digit": env.solution[cell]})


class SudokuRandom:
    """A uniformly random legal move: a digit no peer holds (any digit where none is left), in a cell `order`
    picks: "random" (default), any empty cell; "reading", the first empty cell row by row, the cell the
    reading-order SFT model plays, so this player shows what legal moves alone get in that order; "constrained",
    the cell with the fewest legal digits."""

    ORDERS = ("random", "reading", "constrained")

    def __init__(self, seed: int = 0, order: str = "random"):
        if order not in self.ORDERS:
            raise ValueError(f"unknown random-player order {order!r} (accepted: {', '.join(self.ORDERS)})")
        self.order = order
        self.rng = random.Random(seed)

    def __call__(self, env: SudokuEnv) -> ToolCall:
        n = env.size
        empty = env.empty_cells("reading" if self.order == "random" else self.order)
        cell = self.rng.choice(empty) if self.order == "random" else empty[0]
        digits = sorted(env.legal_digits(cell)) or list(range(1, n + 1))
        return ToolCall("place", {"row": cell // n + 1, "col": cell % n + 1, "digit": self.rng.choice(digits)})


# ---------------------------------------------------------------------------------------
# Strategy mode: source code that the sandbox plays (stdlib only; it cannot import envs)

_PEERS_SOURCE = '''
BOXES = {4: (2, 2), 6: (2, 3), 9: (3, 3)}


def peers(size):
    """For each cell, the other cells in its row, column and box."""
    bh, bw = BOXES[size]
    out = []
    for cell in range(size * size):
        r, c = divmod(cell, size)
        br, bc = r - r % bh, c - c % bw
        group = {r * size + j for j in range(size)} | {i * size + c for i in range(size)}
        group |= {(br + i) * size + bc + j for i in range(bh) for j in range(bw)}
        group.discard(cell)
        out.append(group)
    return out


def candidates(board, cell, near):
    used = {board[p] for p in near[cell]}
    return [d for d in range(1, int(len(board) ** 0.5) + 1) if d not in used]
'''

SUDOKU_STRATEGY_EXPERT_SOURCE = _PEERS_SOURCE + '''

_solutions = {}


def solve(grid, near):
    """Backtracking, most-constrained empty cell first; the solved grid, or None."""
    empty = [c for c, v in enumerate(grid) if not v]
    if not empty:
        return grid
    cell = min(empty, key=lambda c: len(candidates(grid, c, near)))
    for digit in candidates(grid, cell, near):
        grid[cell] = digit
        if solve(grid, near):
            return grid
    grid[cell] = 0
    return None


def strategy(board, initial):
    """Solve the puzzle once, then fill the first cell that differs from the solution."""
    size = int(len(board) ** 0.5)
    key = tuple(initial)
    if key not in _solutions:
        _solutions[key] = solve(list(initial), peers(size))
    solution = _solutions[key]
    cell = next(c for c, (b, s) in enumerate(zip(board, solution)) if b != s)
    return [cell // size + 1, cell % size + 1, solution[cell]]
'''


def sudoku_random_strategy_source(seed: int = 0) -> str:
    """A strategy that plays like `SudokuRandom`, seeded so that a replay is the same game."""
    return ("import random\n" + _PEERS_SOURCE + f"\n_rng = random.Random({int(seed)})\n\n\n"
            + '''def strategy(board, initial):
    """A random empty cell and a random digit that no peer holds (any digit if none is left)."""
    size = int(len(board) ** 0.5)
    cell = _rng.choice([c for c, v in enumerate(board) if not v])
    digit = _rng.choice(candidates(board, cell, peers(size)) or list(range(1, size + 1)))
    return [cell // size + 1, cell % size + 1, digit]
''')


# the strategy env's policies: submit the backtracking solver, or a random player's source (seeded)
sudoku_strategy_expert, sudoku_strategy_random = submission_policies(SUDOKU_STRATEGY_EXPERT_SOURCE,
                                                                     sudoku_random_strategy_source)
