"""Reward functions: plain functions with TRL's signature, registered by name.

`fn(prompts, completions, **kwargs) -> list[float | None]`. Episode facts from the
rollout (solved, turns, tool_calls, invalid_actions, format_errors, progress, ...) arrive
as keyword arguments, one list entry per completion, so any TRL reward function plugs in
unchanged. Return None for a completion a function cannot score.

Built-in rewards are looked up by name (`solved`); user rewards by import path
(`my_pkg.rewards:shaped`). A spec may carry a weight: `my_pkg.rewards:shaped=0.5`.
A function that cannot take keyword arguments it does not name (`**kwargs`) is refused when
it is looked up. A value that is NaN or infinite stops the run with the reward's name and the
episode (`nonfinite="error"`), or is left out and counted (`"drop"`): never trained on.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable

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
        # the bad value is the user's reward path, so ValueError like every other bad reward spec
        raise ValueError(f"bad reward path {spec!r}: module {module_name!r} has no function {attr!r} "  # noqa: TRY004
                         f"(functions there: {', '.join(public) or 'none'})")
    check_signature(spec, fn)
    return fn


def check_signature(spec: str, fn: RewardFn) -> None:
    """Refuse a function TRL cannot call: it passes `prompts`, `completions`, `completion_ids`, its own
    extras and every episode fact, all as keyword arguments, so a reward needs `**kwargs`."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin or an extension function: nothing to read
        return
    positional = [p.name for p in params if p.kind is p.POSITIONAL_ONLY and p.default is p.empty]
    if positional:
        raise ValueError(f"reward {spec!r} takes {', '.join(positional)} positional-only, but rewards are called "
                         "with keyword arguments only: fn(prompts=..., completions=..., **facts)")
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        raise ValueError(f"reward {spec!r} has signature {inspect.signature(fn)}, but a reward is called as "
                         "fn(prompts, completions, **kwargs) with completion_ids, trainer_state and the episode "
                         "facts as keyword arguments: add a **kwargs parameter")


class NonFiniteReward(ValueError):
    """A reward function returned NaN, an infinity or something that is not a number."""


class NamedReward:
    """A reward function logged under the name its run gives it (`rewards/<name>/mean`), not its `__name__`,
    so two functions called `solved` (a user's beside the built-in) stay two components. Its values are
    checked: NaN or inf raises `NonFiniteReward` (`nonfinite="error"`) or becomes None, counted in
    `rewards/<name>/nonfinite` through TRL's `log_metric` (`"drop"`)."""

    def __init__(self, fn: RewardFn, name: str, nonfinite: str = "error"):
        if nonfinite not in ("error", "drop"):
            raise ValueError(f"unknown nonfinite={nonfinite!r} (accepted: error, drop)")
        self.fn, self.__name__, self.nonfinite = fn, name, nonfinite

    def __call__(self, *args, **kwargs):
        return self.checked(self.fn(*args, **kwargs), kwargs.get("log_metric"))

    def checked(self, values, log_metric=None):
        if not isinstance(values, (list, tuple)):
            return values  # TRL and the reward pre-flight name a result of the wrong shape
        dropped = 0
        values = list(values)
        for i, value in enumerate(values):
            if value is None or _finite(value):
                continue
            if self.nonfinite == "error" or not _number(value):
                raise NonFiniteReward(
                    f"reward {self.__name__!r} returned {value!r:.80} for episode {i} of {len(values)}: rewards "
                    "must be finite numbers, or None for an episode they cannot score"
                    + ("; set grpo.nonfinite_rewards=drop to leave NaN and inf out, counted" if _number(value) else ""))
            values[i], dropped = None, dropped + 1
        if self.nonfinite == "drop" and callable(log_metric):
            log_metric(f"rewards/{self.__name__}/nonfinite", float(dropped))
        return values


def _number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, (str, bytes))


def _finite(value) -> bool:
    return _number(value) and math.isfinite(float(value))


class AsyncNamedReward(NamedReward):
    async def __call__(self, *args, **kwargs):
        return self.checked(await self.fn(*args, **kwargs), kwargs.get("log_metric"))


def named_rewards(specs: list[str], nonfinite: str = "error") -> list[NamedReward]:
    """The functions of `specs` (config order), each named as the run names it: a built-in by its name, a
    path by its function's name, or by `module:function` (`file.py:function`) where two share that
    name; always unique. `nonfinite`: what a NaN or inf value does (see `NamedReward`)."""
    short = [spec.rpartition(":")[2] for spec in specs]
    out, taken = [], set()
    for spec, name in zip(specs, short):
        if short.count(name) > 1 and ":" in spec:
            name = spec.rpartition("/")[2]
        while name in taken:
            name += "_"
        taken.add(name)
        fn = get_reward(spec)
        out.append((AsyncNamedReward if inspect.iscoroutinefunction(fn) else NamedReward)(fn, name, nonfinite))
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
        value = float(weight)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"bad reward weight {weight!r} in {spec!r} (expected a finite number, e.g. {name}=0.5)")
    return name, value


from rewards import code, episode, games, sudoku  # noqa: F401  (registers the built-ins)
