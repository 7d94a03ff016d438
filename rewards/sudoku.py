"""Sudoku-specific shaping."""

from __future__ import annotations

from rewards import fact, reward


@reward
def sudoku_progress(prompts, completions, **kwargs) -> list[float | None]:
    """Share of the puzzle's empty cells that now hold their solution digit (0 to 1)."""
    return [None if p is None else float(p) for p in fact(kwargs, "progress", len(completions))]
