"""Reference policies: an expert and a uniformly random legal-move player per environment.

A policy looks at the env's full state (it is allowed to: it stands in for a model in
demonstrations and evaluation rows) and returns the next action as a `ToolCall`.
`expert_for(env)` / `random_for(env)` pick the policy that fits an env instance.
"""

from __future__ import annotations

import inspect
import random
from typing import Callable

from envs.base import ToolCall, ToolEnv
from envs.sudoku import SudokuEnv
from envs.sudoku_puzzles import peers

Policy = Callable[[ToolEnv], ToolCall]


class SudokuExpert:
    """Places solution digits, with an occasional `show_board`.

    `order` picks the cell. "reading" (default): the first empty cell, row by row, which
    is the easiest choice to imitate; its digit is forced by its row, column and box in
    84% of 4x4 hard moves, and otherwise fixed only by the rest of the puzzle.
    "constrained": the cell with the fewest legal digits (the first such in reading
    order): its digit was forced in every 4x4 move we measured, but finding that cell
    means checking them all.
    Gemma 3 270M imitates "reading" better (see configs/sudoku-sft.yaml).
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
        empty = [c for c, v in enumerate(env.board) if v == 0]
        if self.order == "reading":
            cell = empty[0]
        else:
            cell = min(empty, key=lambda c: (len(_candidates(env, c)), c))
        return ToolCall("place", {"row": cell // n + 1, "col": cell % n + 1, "digit": env.solution[cell]})


class SudokuRandom:
    """A uniformly random legal move: a random empty cell, a random digit no peer holds."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def __call__(self, env: SudokuEnv) -> ToolCall:
        n = env.size
        empty = [c for c, v in enumerate(env.board) if v == 0]
        cell = self.rng.choice(empty)
        digits = sorted(_candidates(env, cell)) or list(range(1, n + 1))
        return ToolCall("place", {"row": cell // n + 1, "col": cell % n + 1, "digit": self.rng.choice(digits)})


def _candidates(env: SudokuEnv, cell: int) -> set[int]:
    used = {env.board[p] for p in peers(env.size)[cell]}
    return set(range(1, env.size + 1)) - used


EXPERTS: dict[type, Callable[..., Policy]] = {SudokuEnv: SudokuExpert}
RANDOM: dict[type, Callable[..., Policy]] = {SudokuEnv: SudokuRandom}


def _lookup(table: dict[type, Callable[..., Policy]], env: ToolEnv, kind: str, **kwargs) -> Policy:
    for cls in type(env).__mro__:
        if cls in table:
            make = table[cls]
            accepted = inspect.signature(make).parameters
            unknown = sorted(set(kwargs) - set(accepted))
            if unknown:
                name = getattr(make, "__name__", make)
                raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for {name} "
                                 f"(accepted: {', '.join(accepted)})")
            return make(**kwargs)
    known = ", ".join(c.__name__ for c in table)
    raise ValueError(f"no {kind} policy for {type(env).__name__} (available for: {known})")


def expert_for(env: ToolEnv, **kwargs) -> Policy:
    return _lookup(EXPERTS, env, "expert", **kwargs)


def random_for(env: ToolEnv, **kwargs) -> Policy:
    return _lookup(RANDOM, env, "random", **kwargs)
