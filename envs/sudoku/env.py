"""Sudoku as a tool environment: `place(row, col, digit)` and `show_board()`.

The episode ends when the puzzle is solved (reward 1), after `max_invalid` invalid moves,
or at `max_steps`. `progress` (the share of empty cells now holding their solution digit)
is reported in `info` for shaped rewards.

Its facts are also given under the names the reward functions of TRL's OpenEnv Sudoku example
read (`correct_reward`, `valid_move_reward`, `empty_cell_reward`, `repetition_reward`,
`progress_reward`), per `place` call of the episode, so those functions score toolgym episodes as
they are.

`list_empty_cells=True` adds a line `Empty cells (row, col): (1,3) (1,4) ...` under every
board, in reading order. A small model reading `Row 1: 4 3 | . .` must count positions to
know that the first '.' is column 3; the line states it. It names cells, never digits.
`list_empty_cells="constrained"` lists them fewest legal digits first (ties in reading order):
the first listed cell is the one `SudokuExpert(order="constrained")` fills, so a model that
copies the first listed cell plays that order without searching the board for it. The order
says which cell is most constrained, not its digit.
"""

from __future__ import annotations

import random

from envs.base import ToolEnv, ToolError, tool
from envs.sudoku.puzzles import box_shape, generate, peers

# What a place() call did, counted per episode as the facts `<kind>_moves` (and `moves`, all place calls):
# right: the solution's digit into an empty cell; wrong: a legal digit that is not the solution's (the puzzle
# can no longer be solved without overwriting it); overwrite: a legal digit into a cell it had filled itself;
# clash: refused, the digit is already in the cell's row, column or box; clue: refused, a given clue's cell;
# off_board: refused, a row, column or digit out of range.
MOVE_KINDS = ("right", "wrong", "overwrite", "clash", "clue", "off_board")
EMPTY_CELL_ORDERS = ("reading", "constrained")  # list_empty_cells: true is "reading"


def _refused(kind: str, message: str) -> ToolError:
    error = ToolError(message)
    error.kind = kind
    return error


class SudokuEnv(ToolEnv):
    default_max_steps = 40

    def __init__(self, size: int = 4, difficulty: str | int = "easy", max_steps: int | None = None,
                 max_invalid: int | None = 8, list_empty_cells: bool | str = False, render_mode: str | None = None):
        box_shape(size)  # validates size
        if not (isinstance(list_empty_cells, bool) or list_empty_cells in EMPTY_CELL_ORDERS):
            raise TypeError(f"list_empty_cells must be true, false or one of {', '.join(map(repr, EMPTY_CELL_ORDERS))}"
                            f", got {list_empty_cells!r}")
        super().__init__(max_steps=max_steps, max_invalid=max_invalid, render_mode=render_mode)
        self.size = size
        self.difficulty = difficulty
        self.list_empty_cells = list_empty_cells
        self.board: list[int] = []
        self.tries: dict[tuple, int] = {}
        self.moves: list[tuple[bool, bool, int]] = []
        self.kinds: dict[str, int] = dict.fromkeys(MOVE_KINDS, 0)

    def setup(self, options: dict) -> str:
        size = options.get("size", self.size)
        difficulty = options.get("difficulty", self.difficulty)
        rng = random.Random(int(self.np_random.integers(2**63)))
        self.puzzle, self.solution = generate(size, difficulty, rng)
        self.size, self.board = size, list(self.puzzle)
        self.tries: dict[tuple, int] = {}  # (row, col, digit) -> place calls so far
        self.moves: list[tuple[bool, bool, int]] = []  # per place call: empty target, valid and new, repeats
        self.kinds = dict.fromkeys(MOVE_KINDS, 0)  # place calls by what they did (MOVE_KINDS)
        bh, bw = box_shape(size)
        return (
            f"Solve this {size}x{size} Sudoku. Every row, every column and every {bh}x{bw} box must "
            f"contain each digit from 1 to {size} exactly once. Empty cells are shown as '.'. "
            f"Fill them one at a time with the place tool.\n\n{self.board_text()}"
        )

    @tool
    def place(self, row: int, col: int, digit: int) -> str:
        """Write a digit into an empty cell of the board.

        Args:
            row: Row number, counting from 1 at the top.
            col: Column number, counting from 1 at the left.
            digit: The digit to write, from 1 to the board size.
        """
        n = self.size
        repeats = self.tries.get((row, col, digit), 0)
        self.tries[(row, col, digit)] = repeats + 1
        empty = 1 <= row <= n and 1 <= col <= n and self.board[(row - 1) * n + col - 1] == 0
        try:
            result = self._place(row, col, digit)
        except ToolError as refused:
            self.moves.append((empty, False, repeats))
            self.kinds[refused.kind] += 1
            raise
        self.moves.append((empty, repeats == 0, repeats))
        cell = (row - 1) * n + col - 1
        self.kinds["overwrite" if not empty else "right" if digit == self.solution[cell] else "wrong"] += 1
        return result

    def _place(self, row: int, col: int, digit: int) -> str:
        n = self.size
        for name, value in (("row", row), ("col", col), ("digit", digit)):
            if not 1 <= value <= n:
                raise _refused("off_board", f"{name} must be between 1 and {n}, got {value}.")
        cell = (row - 1) * n + (col - 1)
        if self.puzzle[cell]:
            raise _refused("clue", f"row {row}, column {col} is a given clue and cannot be changed.")
        clash = [p for p in peers(n)[cell] if self.board[p] == digit]
        if clash:
            r, c = divmod(clash[0], n)
            raise _refused("clash", f"{digit} is already in the same row, column or box "
                                    f"(at row {r + 1}, column {c + 1}).")
        self.board[cell] = digit
        if self.solved:
            self.step_reward += 1.0
            self.terminated = True
            return f"Placed {digit} at row {row}, column {col}. Solved!\n{self.board_text()}"
        return f"Placed {digit} at row {row}, column {col}.\n{self.board_text()}"

    @tool
    def show_board(self) -> str:
        """Show the current board."""
        return self.board_text()

    @property
    def solved(self) -> bool:
        return bool(self.board) and self.board == self.solution

    def state_key(self) -> tuple:
        return tuple(self.board), *self.budget_key()

    def facts(self) -> dict:
        empty = [i for i, v in enumerate(self.puzzle) if v == 0]
        correct = sum(self.board[i] == self.solution[i] for i in empty)
        progress = correct / len(empty) if empty else 1.0
        moves = self.moves or [(False, False, 0)]  # no place call: nothing earned
        mean = lambda values: sum(values) / len(moves)
        return {"progress": progress, "cells_filled": correct,
                # the names TRL's OpenEnv Sudoku example reads (module docstring)
                "correct_reward": float(self.solved), "progress_reward": progress,
                "valid_move_reward": mean([float(valid) for _, valid, _ in moves]),
                "empty_cell_reward": mean([1.0 if empty else -1.0 for empty, _, _ in moves]) if self.moves else 0.0,
                "repetition_reward": mean([-min(2.0 ** (r - 1), 10.0) if r else 0.0 for _, _, r in moves]),
                "moves": len(self.moves), **{f"{kind}_moves": count for kind, count in self.kinds.items()}}

    def board_text(self) -> str:
        n = self.size
        bh, bw = box_shape(n)
        lines = []
        for r in range(n):
            if r and r % bh == 0:
                lines.append("-" * (2 * n + 2 * (n // bw - 1) + 5))
            cells = [str(v) if v else "." for v in self.board[r * n:(r + 1) * n]]
            groups = [" ".join(cells[i:i + bw]) for i in range(0, n, bw)]
            lines.append(f"Row {r + 1}: " + " | ".join(groups))
        if self.list_empty_cells:
            order = "constrained" if self.list_empty_cells == "constrained" else "reading"
            cells = [f"({c // n + 1},{c % n + 1})" for c in self.empty_cells(order)]
            lines.append("Empty cells (row, col): " + (" ".join(cells) or "none"))
        return "\n".join(lines)

    def legal_digits(self, cell: int) -> set[int]:
        """The digits no cell of `cell`'s row, column or box holds."""
        return set(range(1, self.size + 1)) - {self.board[p] for p in peers(self.size)[cell]}

    def empty_cells(self, order: str = "reading") -> list[int]:
        """The empty cells, row by row ("reading"), or fewest legal digits first ("constrained"; ties row by row)."""
        empty = [c for c, v in enumerate(self.board) if v == 0]
        if order == "constrained":
            empty.sort(key=lambda c: len(self.legal_digits(c)))
        return empty

    def render(self) -> str | None:
        return self.board_text() if self.render_mode == "ansi" else None
