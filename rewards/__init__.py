"""Reward functions: plain functions with TRL's signature, registered by name.

`fn(prompts, completions, **kwargs) -> list[float | None]`. Episode facts from the
rollout (solved, turns, tool_calls, invalid_actions, format_errors, progress, ...) arrive
as keyword arguments, one list entry per completion, so any TRL reward function plugs in
unchanged. Return None for a completion a function cannot score.

Built-in rewards are looked up by name (`solved`); user rewards by import path
(`my_pkg.rewards:shaped`). A spec may carry a weight: `my_pkg.rewards:shaped=0.5`.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Callable

RewardFn = Callable[..., list]
REWARDS: dict[str, RewardFn] = {}


def reward(fn: RewardFn | None = None, *, name: str | None = None):
    """Register a reward function under its name (or `name`)."""

    def wrap(f: RewardFn) -> RewardFn:
        REWARDS[name or f.__name__] = f
        return f

    return wrap(fn) if fn is not None else wrap


def get_reward(spec: str) -> RewardFn:
    """A reward function by registered name, "module.path:function" or "path/to/file.py:function"."""
    if ":" not in spec:
        if spec not in REWARDS:
            close = difflib.get_close_matches(spec, REWARDS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"unknown reward {spec!r} (built in: {', '.join(sorted(REWARDS))}; "
                f"or a 'module.path:function' import path){hint}"
            )
        return REWARDS[spec]
    from envs.entry_points import load_module

    module_name, _, attr = spec.rpartition(":")
    module = load_module(spec, "reward")
    fn = getattr(module, attr, None)
    if not callable(fn):
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ValueError(f"bad reward path {spec!r}: module {module_name!r} has no function {attr!r} "
                         f"(functions there: {', '.join(public) or 'none'})")
    return fn


class NamedReward:
    """A reward function logged under the name its run gives it (`rewards/<name>/mean`), not its `__name__`,
    so two functions called `solved` (a user's beside the built-in) stay two components."""

    def __init__(self, fn: RewardFn, name: str):
        self.fn, self.__name__ = fn, name

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


class AsyncNamedReward(NamedReward):
    async def __call__(self, *args, **kwargs):
        return await self.fn(*args, **kwargs)


def named_rewards(specs: list[str]) -> list[NamedReward]:
    """The functions of `specs` (config order), each named as the run names it: a built-in by its name, a
    path by its function's name, or by `module:function` (`file.py:function`) where two share that
    name; always unique."""
    short = [spec.rpartition(":")[2] for spec in specs]
    out, taken = [], set()
    for spec, name in zip(specs, short):
        if short.count(name) > 1 and ":" in spec:
            name = spec.rpartition("/")[2]
        while name in taken:
            name += "_"
        taken.add(name)
        fn = get_reward(spec)
        out.append((AsyncNamedReward if inspect.iscoroutinefunction(fn) else NamedReward)(fn, name))
    return out


def fact(kwargs: dict, key: str, n: int) -> list:
    """One episode fact per completion; None where it is missing or the env crashed."""
    values = kwargs.get(key)
    values = list(values) if values is not None else [None] * n
    errors = kwargs.get("env_error") or [""] * n
    return [None if err else v for v, err in zip(values, errors)]


def parse_reward_spec(spec: str) -> tuple[str, float]:
    """Split "name_or_path=weight" into (name_or_path, weight); the weight defaults to 1."""
    name, sep, weight = spec.rpartition("=")
    if not sep:
        return spec, 1.0
    try:
        return name, float(weight)
    except ValueError:
        raise ValueError(f"bad reward weight {weight!r} in {spec!r} (expected a number, e.g. {name}=0.5)") from None


from rewards import code, episode, games, sudoku  # noqa: E402,F401  (registers the built-ins)
