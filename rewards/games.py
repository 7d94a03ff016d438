"""Rewards for games played by a model-written strategy or by tool calls (2048, Sudoku)."""

from __future__ import annotations

import math

from rewards import fact, reward


@reward
def strategy_succeeds(prompts, completions, **kwargs) -> list[float | None]:
    """Share of the games the submitted strategy won (0 to 1)."""
    return [None if w is None else float(w) for w in fact(kwargs, "win_rate", len(completions))]


@reward
def valid_move_fraction(prompts, completions, **kwargs) -> list[float | None]:
    """Share of the moves that were legal and changed the board (0 to 1); None if no move was made."""
    return [None if f is None else float(f) for f in fact(kwargs, "valid_move_fraction", len(completions))]


@reward
def game2048_max_tile(prompts, completions, **kwargs) -> list[float | None]:
    """log2(largest tile) / log2(target): dense progress towards the target tile (0 to 1)."""
    n = len(completions)
    return [None if t is None or not target else min(1.0, math.log2(max(t, 1)) / math.log2(target))
            for t, target in zip(fact(kwargs, "max_tile", n), fact(kwargs, "target", n))]
