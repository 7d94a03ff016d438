"""Reference policies: an expert and a random (or naive) baseline per environment.

A policy looks at the env's full state (it is allowed to: it stands in for a model in
demonstrations and evaluation rows) and returns the next action as a `ToolCall`.
`expert_for(env)` / `random_for(env)` pick the policy that fits an env instance; options
are keyword arguments, checked against the policy's signature. Each env family's
policies live in their own module (`experts_<family>.py`); this one only registers them.

Every expert accepts `explore` and `seed`, which evaluation passes to all of them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from envs.base import ToolCall, ToolEnv
from envs.carla import CarlaEnv
from envs.experts_2048 import Game2048Expert, Game2048Random, game2048_strategy_expert, game2048_strategy_random
from envs.experts_driving import CarlaDriver, CarlaRandom
from envs.experts_kernels import KernelsExpert, KernelsWrong
from envs.experts_sudoku import SudokuExpert, SudokuRandom, sudoku_strategy_expert, sudoku_strategy_random
from envs.game2048 import Game2048Env, Game2048StrategyEnv
from envs.kernels import KernelsEnv
from envs.sudoku import SudokuEnv
from envs.sudoku_strategy import SudokuStrategyEnv

Policy = Callable[[ToolEnv], ToolCall]


EXPERTS: dict[type, Callable[..., Policy]] = {
    SudokuEnv: SudokuExpert,
    SudokuStrategyEnv: sudoku_strategy_expert,
    Game2048Env: Game2048Expert,
    Game2048StrategyEnv: game2048_strategy_expert,
    KernelsEnv: KernelsExpert,
    CarlaEnv: CarlaDriver,
}
RANDOM: dict[type, Callable[..., Policy]] = {
    SudokuEnv: SudokuRandom,
    SudokuStrategyEnv: sudoku_strategy_random,
    Game2048Env: Game2048Random,
    Game2048StrategyEnv: game2048_strategy_random,
    KernelsEnv: KernelsWrong,  # no random program exists: a plausible kernel with a typical bug
    CarlaEnv: CarlaRandom,
}


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
