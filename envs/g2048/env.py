"""2048 as a tool environment (`move(direction)`) and as a strategy-writing task.

Seeded: the same seed gives the same starting board and the same tile spawns for the
same moves. 4x4 by default: on 6x6 a random strategy reaches 2048, so the win rate
there cannot tell strategies apart.

Strategy mode (`Game2048StrategyEnv`): the model writes `def strategy(board) -> str`
and `submit`s it; the sandbox plays full games with it over several seeds (the game runs
on the trusted side, the sandbox only answers "which move?").
"""

from __future__ import annotations

import random

from envs.base import ToolEnv, ToolError, tool
from envs.g2048.rules import DIRECTIONS, legal_moves, max_tile, new_board, slide, spawn
from envs.sandbox.task import StrategyTask


def board_text(board: list[list[int]]) -> str:
    width = max(len(str(max_tile(board))), 1)
    return "\n".join(" ".join(str(v).rjust(width) if v else ".".rjust(width) for v in row) for row in board)


class Game2048Env(ToolEnv):
    """Slide tiles with `move`; reaching the target tile wins (reward 1)."""

    default_max_steps = 400

    def __init__(self, size: int = 4, target: int = 2048, max_steps: int | None = None,
                 max_invalid: int | None = 8, render_mode: str | None = None):
        if size < 2:
            raise ValueError(f"board size must be at least 2, got {size}")
        if target < 4 or target & (target - 1):
            raise ValueError(f"target must be a power of two >= 4, got {target}")
        super().__init__(max_steps=max_steps, max_invalid=max_invalid, render_mode=render_mode)
        self.size, self.target = size, target
        self.board: list[list[int]] = []

    def setup(self, options: dict) -> str:
        self.rng = random.Random(int(self.np_random.integers(2**63)))
        self.board, self.score, self.moves = new_board(self.size, self.rng), 0, 0
        return (f"Play 2048 on a {self.size}x{self.size} board. Each move slides all tiles up, down, left or "
                f"right; equal tiles that collide merge into their sum. A new 2 or 4 appears after every move. "
                f"Reach a {self.target} tile to win. Empty cells are '.'.\n\n{board_text(self.board)}")

    @tool
    def move(self, direction: str) -> str:
        """Slide every tile in one direction; equal neighbours merge.

        Args:
            direction: One of "up", "down", "left" or "right".
        """
        direction = direction.strip().lower()
        if direction not in DIRECTIONS:
            raise ToolError(f"unknown direction {direction!r} (accepted: {', '.join(DIRECTIONS)})")
        after, points = slide(self.board, direction)
        if after == self.board:
            raise ToolError(f"moving {direction} changes nothing (legal moves: {', '.join(legal_moves(self.board))})")
        self.board, self.score, self.moves = after, self.score + points, self.moves + 1
        spawn(self.board, self.rng)
        if self.solved:
            self.step_reward += 1.0
            self.terminated = True
            return f"Moved {direction} (+{points}). You reached {self.target}!\n{board_text(self.board)}"
        if not legal_moves(self.board):
            self.terminated = True
            return f"Moved {direction} (+{points}). No moves left: game over.\n{board_text(self.board)}"
        return f"Moved {direction} (+{points}, score {self.score}).\n{board_text(self.board)}"

    @tool
    def show_board(self) -> str:
        """Show the current board."""
        return board_text(self.board)

    @property
    def solved(self) -> bool:
        return bool(self.board) and max_tile(self.board) >= self.target

    def state_key(self) -> tuple:
        return tuple(map(tuple, self.board)), self.score, *self.budget_key()

    def facts(self) -> dict:
        tried = self.moves + self.invalid_actions
        return {"score": self.score, "max_tile": max_tile(self.board) if self.board else 0, "moves": self.moves,
                "target": self.target, "valid_move_fraction": self.moves / tried if tried else None}

    def render(self) -> str | None:
        return board_text(self.board) if self.render_mode == "ansi" else None


class Game2048StrategyEnv(StrategyTask):
    driver = "g2048/rules.py:play_games"

    def __init__(self, size: int = 4, target: int = 2048, max_moves: int = 3000, **kwargs):
        super().__init__(**kwargs)
        self.size, self.target, self.max_moves = size, target, max_moves

    def setup(self, options: dict) -> str:
        self.result, self.seeds = self.blank(), self.game_seeds()
        return (f"Write a Python function `def strategy(board) -> str` that plays 2048 on a {self.size}x{self.size} "
                f"board. `board` is a list of rows of ints (0 = empty). Return one of 'up', 'down', 'left', "
                f"'right'. Reach a {self.target} tile to win. Allowed imports: {', '.join(self.allowed_imports)}. "
                f"Call submit with your code; it plays {self.games} full games.")

    def driver_args(self) -> dict:
        return {"seeds": self.seeds, "size": self.size, "target": self.target, "max_moves": self.max_moves}

    @tool
    def submit(self, code: str) -> str:
        """Play full games of 2048 with your strategy; this ends the episode.

        Args:
            code: Python source defining `def strategy(board) -> str`.
        """
        return self.play(code)
