"""Reference policies: an expert and a random (or naive) baseline per environment.

A policy looks at the env's full state (it is allowed to: it stands in for a model in
demonstrations and evaluation rows) and returns the next action as a `ToolCall`.
`expert_for(env)` / `random_for(env)` pick the policy that fits an env instance; options
are keyword arguments, checked against the policy's signature. Each env family's
policies live beside it (`envs/sudoku/expert.py`, ...) and its package registers them; an env of
your own registers its policies beside itself, in its own module:

    register_policies(Guess, expert=GuessExpert, random=GuessRandom)

Every expert accepts `explore` and `seed`, which evaluation passes to all of them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from envs.base import ToolCall, ToolEnv

Policy = Callable[[ToolEnv], ToolCall]


# Filled by each env's package as it is imported (an env instance implies its package was imported).
EXPERTS: dict[type, Callable[..., Policy]] = {}
RANDOM: dict[type, Callable[..., Policy]] = {}


def register_policies(env_cls: type, expert: Callable[..., Policy] | None = None,
                      random: Callable[..., Policy] | None = None) -> None:
    """Make `expert` and `random` the reference policies of `env_cls` and its subclasses (demonstrations,
    the reward pre-flight, `eval.py --policy expert|random`). Each is called with the options a caller
    passes (eval passes `explore` and `seed` to the expert, `seed` to the random one) and returns a policy."""
    if not (isinstance(env_cls, type) and issubclass(env_cls, ToolEnv)):
        # ValueError, like the policy check below, so a bad registration raises one kind of error
        raise ValueError(f"register_policies needs a ToolEnv subclass, got {env_cls!r}")  # noqa: TRY004
    for kind, make in (("expert", expert), ("random", random)):
        if make is not None and not callable(make):
            raise ValueError(f"the {kind} policy of {env_cls.__name__} must be callable, got {make!r}")
    if expert is not None:
        EXPERTS[env_cls] = expert
    if random is not None:
        RANDOM[env_cls] = random


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
    known = ", ".join(sorted(c.__name__ for c in table))
    raise ValueError(f"no {kind} policy for {type(env).__name__} (available for: {known}); register one beside "
                     f"the env: envs.experts.register_policies({type(env).__name__}, {kind}=...)")


def expert_for(env: ToolEnv, **kwargs) -> Policy:
    return _lookup(EXPERTS, env, "expert", **kwargs)


def random_for(env: ToolEnv, **kwargs) -> Policy:
    return _lookup(RANDOM, env, "random", **kwargs)
