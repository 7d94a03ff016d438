"""Rewards that any toolgym environment can use, from the episode facts in kwargs."""

from __future__ import annotations

from rewards import fact, reward


@reward
def episode_return(prompts, completions, **kwargs) -> list[float | None]:
    """The sum of the env's own step rewards."""
    return [None if r is None else float(r) for r in fact(kwargs, "episode_return", len(completions))]


@reward
def solved(prompts, completions, **kwargs) -> list[float | None]:
    """1 if the episode reached the env's goal, else 0."""
    return [None if s is None else float(bool(s)) for s in fact(kwargs, "solved", len(completions))]


@reward
def format_valid(prompts, completions, **kwargs) -> list[float | None]:
    """Share of model turns that made a well-formed tool call (1 = every turn did)."""
    n = len(completions)
    out = []
    for turns, bad, silent in zip(fact(kwargs, "model_turns", n), fact(kwargs, "format_errors", n),
                                  fact(kwargs, "no_tool_calls", n)):
        out.append(None if not turns else max(0.0, 1.0 - ((bad or 0) + (silent or 0)) / turns))
    return out


@reward
def invalid_action_penalty(prompts, completions, **kwargs) -> list[float | None]:
    """Minus the share of env steps that were invalid (unknown tool, bad arguments, illegal move)."""
    n = len(completions)
    return [None if turns is None else -(invalid or 0) / max(turns, 1)
            for turns, invalid in zip(fact(kwargs, "turns", n), fact(kwargs, "invalid_actions", n))]
