"""Sudoku strategy mode: the model writes `def strategy(board, initial)`, the sandbox plays it.

The tool-mode game (`place`) is `envs.sudoku.SudokuEnv`; this env only asks for code,
plays one seeded puzzle per game with it (the board lives on the trusted side), and
reports the share of puzzles solved and of valid moves.
"""

from __future__ import annotations

from envs.base import tool
from envs.sandbox.task import StrategyTask
from envs.sudoku.puzzles import box_shape


class SudokuStrategyEnv(StrategyTask):
    driver = "sudoku/games.py:play_games"

    def __init__(self, size: int = 4, difficulty: str = "easy", max_moves: int = 200, **kwargs):
        box_shape(size)  # validates size
        super().__init__(**kwargs)
        self.size, self.difficulty, self.max_moves = size, difficulty, max_moves

    def setup(self, options: dict) -> str:
        self.result, self.seeds = self.blank(), self.game_seeds()
        n = self.size
        return (f"Write a Python function `def strategy(board, initial)` that solves {n}x{n} Sudoku one move at a "
                f"time. `board` is the current grid and `initial` the puzzle as given, both flat lists of {n * n} "
                f"ints in row order (0 = empty). Return [row, col, digit], 1-based. Clue cells cannot change; "
                f"a digit that clashes with its row, column or box is rejected. Allowed imports: "
                f"{', '.join(self.allowed_imports)}. Call submit with your code; it plays {self.games} puzzles.")

    def driver_args(self) -> dict:
        return {"seeds": self.seeds, "size": self.size, "difficulty": self.difficulty, "max_moves": self.max_moves}

    @tool
    def submit(self, code: str) -> str:
        """Solve several Sudoku puzzles with your strategy; this ends the episode.

        Args:
            code: Python source defining `def strategy(board, initial)` that returns [row, col, digit].
        """
        return self.play(code)
