"""Sudoku puzzles: a seeded generator with unique solutions, and a solver.

A grid is a flat list of `size * size` ints, 0 for an empty cell. Sizes 4 (2x2 boxes),
6 (2x3 boxes) and 9 (3x3 boxes) are supported.
"""

from __future__ import annotations

import functools
import random

BOX_SHAPES = {4: (2, 2), 6: (2, 3), 9: (3, 3)}

# How many cells are emptied for each difficulty. The generator stops earlier if no
# further cell can be emptied without losing uniqueness.
HOLES = {
    4: {"easy": 4, "medium": 7, "hard": 10},
    6: {"easy": 12, "medium": 18, "hard": 22},
    9: {"easy": 36, "medium": 46, "hard": 54},
}


def box_shape(size: int) -> tuple[int, int]:
    if size not in BOX_SHAPES:
        raise ValueError(f"unsupported sudoku size {size!r} (accepted: {sorted(BOX_SHAPES)})")
    return BOX_SHAPES[size]


@functools.cache
def peers(size: int) -> tuple[tuple[int, ...], ...]:
    """For each cell, the other cells in its row, column and box."""
    bh, bw = box_shape(size)
    out = []
    for cell in range(size * size):
        r, c = divmod(cell, size)
        br, bc = r - r % bh, c - c % bw
        group = {r * size + j for j in range(size)} | {i * size + c for i in range(size)}
        group |= {(br + i) * size + bc + j for i in range(bh) for j in range(bw)}
        group.discard(cell)
        out.append(tuple(sorted(group)))
    return tuple(out)


def _search(grid: list[int], size: int, limit: int, rng: random.Random | None, found: list[list[int]]) -> None:
    """Depth-first search, most-constrained cell first; collects up to `limit` solutions."""
    peer_lists = peers(size)
    full = (1 << (size + 1)) - 2  # bits 1..size

    def candidates(cell: int) -> int:
        used = 0
        for p in peer_lists[cell]:
            used |= 1 << grid[p]
        return full & ~used

    def recurse() -> bool:
        best, best_mask, best_count = -1, 0, size + 1
        for cell in range(size * size):
            if grid[cell] == 0:
                mask = candidates(cell)
                count = mask.bit_count()
                if count < best_count:
                    best, best_mask, best_count = cell, mask, count
                    if count <= 1:
                        break
        if best == -1:
            found.append(list(grid))
            return len(found) >= limit
        if best_count == 0:
            return False
        digits = [d for d in range(1, size + 1) if best_mask >> d & 1]
        if rng is not None:
            rng.shuffle(digits)
        for d in digits:
            grid[best] = d
            if recurse():
                grid[best] = 0
                return True
        grid[best] = 0
        return False

    recurse()


def count_solutions(grid: list[int], size: int, limit: int = 2) -> int:
    found: list[list[int]] = []
    _search(list(grid), size, limit, None, found)
    return len(found)


def solve(grid: list[int], size: int) -> list[int] | None:
    found: list[list[int]] = []
    _search(list(grid), size, 1, None, found)
    return found[0] if found else None


def generate(size: int, difficulty: str | int, rng: random.Random) -> tuple[list[int], list[int]]:
    """A puzzle with exactly one solution, and that solution.

    `difficulty` is "easy", "medium", "hard" or a number of cells to empty.
    """
    box_shape(size)
    if isinstance(difficulty, str):
        if difficulty not in HOLES[size]:
            raise ValueError(f"unknown difficulty {difficulty!r} (accepted: {list(HOLES[size])} or an int)")
        holes = HOLES[size][difficulty]
    else:
        holes = int(difficulty)
        if not 0 <= holes < size * size:
            raise ValueError(f"holes must be between 0 and {size * size - 1}, got {holes}")
    found: list[list[int]] = []
    _search([0] * (size * size), size, 1, rng, found)
    solution = found[0]
    puzzle = list(solution)
    cells = list(range(size * size))
    rng.shuffle(cells)
    emptied = 0
    for cell in cells:
        if emptied == holes:
            break
        digit, puzzle[cell] = puzzle[cell], 0
        if count_solutions(puzzle, size) == 1:
            emptied += 1
        else:
            puzzle[cell] = digit
    return puzzle, solution
