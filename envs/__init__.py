"""toolgym environments and their registry.

`envs.make("sudoku", size=4)` builds an env by short name; every registered env is also
known to Gymnasium, so `gymnasium.make("toolgym/Sudoku-v0")` works once `envs` is imported.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

import gymnasium as gym

from envs.base import RunStop, ToolCall, ToolEnv, ToolError, tool, tool_schema
from envs.entry_points import load_module

__all__ = ["RunStop", "ToolCall", "ToolEnv", "ToolError", "check_kwargs", "make", "names", "register", "resolve",
           "short_name", "tool", "tool_schema"]

_REGISTRY: dict[str, str] = {}  # short name -> "module:Class"


def register(name: str, entry_point: str, gym_id: str) -> None:
    """Register an env under a short name and a Gymnasium id (e.g. "toolgym/Sudoku-v0")."""
    _REGISTRY[name] = entry_point
    if gym_id not in gym.registry:
        gym.register(id=gym_id, entry_point=entry_point)


def names() -> list[str]:
    return sorted(_REGISTRY)


def resolve(name: str) -> Callable[..., ToolEnv]:
    """The env class for a short name, a "module:Class" import path or a "path/to/file.py:Class" file."""
    entry_point = _REGISTRY.get(name, name if ":" in name else None)
    if entry_point is None:
        close = difflib.get_close_matches(name, names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown env {name!r} (known: {', '.join(names())}, or 'module:Class' or "
                         f"'path/to/file.py:Class'){hint}")
    attr = entry_point.rpartition(":")[2]
    try:
        cls = getattr(load_module(entry_point, "env"), attr)
    except (ValueError, AttributeError) as e:
        raise ValueError(f"cannot load env {name!r} from {entry_point!r}: {e}") from e
    if not (isinstance(cls, type) and issubclass(cls, ToolEnv)):
        # the bad value is the user's env path, so ValueError like every other bad env name
        raise ValueError(f"env {name!r} ({entry_point}) is not a ToolEnv subclass")  # noqa: TRY004
    return cls


def check_kwargs(kwargs: dict) -> None:
    """Refuse a renamed keyword with a message naming its new name (every way of building an env calls this)."""
    if "max_turns" in kwargs:
        raise ValueError(f"max_turns={kwargs['max_turns']!r} is now max_steps (the env's cap on tool steps; a run's "
                         "rollout.max_turns caps the model's turns)")


def short_name(name: str) -> str:
    """A name fit for a folder or file: "sudoku" stays, "path/to/guess.py:Guess" and "pkg.mod:Guess" give "Guess"."""
    return name.rpartition(":")[2]


def make(name: str, **kwargs) -> ToolEnv:
    check_kwargs(kwargs)
    return resolve(name)(**kwargs)


register("sudoku", "envs.sudoku:SudokuEnv", "toolgym/Sudoku-v0")
register("carla", "envs.driving:CarlaEnv", "toolgym/Carla-v0")
register("2048", "envs.g2048:Game2048Env", "toolgym/Game2048-v0")
register("2048-strategy", "envs.g2048:Game2048StrategyEnv", "toolgym/Game2048Strategy-v0")
register("sudoku-strategy", "envs.sudoku:SudokuStrategyEnv", "toolgym/SudokuStrategy-v0")
register("kernels", "envs.kernels:KernelsEnv", "toolgym/Kernels-v0")
