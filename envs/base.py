"""ToolEnv: a Gymnasium environment whose actions are tool calls.

An environment is a `gymnasium.Env` whose methods marked `@tool` are the actions a model
may take. The JSON schema the model sees is derived from each tool's type hints and
docstring. `step` accepts a `ToolCall` (or a `{"name", "arguments"}` dict) or the model's
plain text; whatever goes wrong inside a call becomes an error observation for the model
and a counter in `info`, never an exception in the trainer.

This module imports no torch: environment authors can work without a GPU stack.
"""

from __future__ import annotations

import functools
import inspect
import re
import string
import types
import typing
from collections.abc import Callable, Hashable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import gymnasium as gym

from envs.threads import after_calls

# Observations and actions are text; the charset covers printable ASCII.
TEXT_CHARSET = string.printable
MAX_TEXT_LENGTH = 65536


@dataclass
class ToolCall:
    """A parsed tool call: the tool's name and its keyword arguments."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


class ToolError(Exception):
    """Raised by a tool for an invalid action; the message is shown to the model."""


class RunStop(RuntimeError):
    """A setup problem no episode can get around (e.g. the sandbox refusing to run model code): it ends the run
    with its message instead of becoming one more error observation."""


def tool(fn: Callable) -> Callable:
    """Mark an environment method as a tool the model can call.

    Its type hints become the parameter schema; its docstring (summary line plus a
    Google-style `Args:` section) becomes the descriptions the model reads.
    """
    fn.__toolgym_tool__ = True
    return fn


# ---------------------------------------------------------------------------------------
# Schema derivation


_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}


def _type_schema(hint: Any, where: str) -> dict:
    origin = typing.get_origin(hint)
    if hint in _JSON_TYPES:
        return {"type": _JSON_TYPES[hint]}
    if origin is Literal:
        values = list(typing.get_args(hint))
        kinds = {type(v) for v in values}
        if len(kinds) != 1 or next(iter(kinds)) not in _JSON_TYPES:
            raise TypeError(f"{where}: Literal values must share one of str/int/float/bool, got {values!r}")
        return {"type": _JSON_TYPES[kinds.pop()], "enum": values}
    if origin in (list, tuple) or hint in (list, tuple):
        args = typing.get_args(hint)
        schema: dict = {"type": "array"}
        if args and args[-1] is not Ellipsis:
            schema["items"] = _type_schema(args[0], where)
        return schema
    if origin is dict or hint is dict:
        return {"type": "object"}
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(non_none) == 1:
            return {**_type_schema(non_none[0], where), "nullable": True}
    raise TypeError(f"{where}: unsupported type hint {hint!r} (use int, float, str, bool, Literal, list, dict)")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Split a docstring into its description and per-argument descriptions."""
    doc = inspect.cleandoc(doc or "")
    parts = re.split(r"^\s*(?:Args|Arguments|Parameters):\s*$", doc, maxsplit=1, flags=re.MULTILINE)
    description = " ".join(parts[0].split())
    args: dict[str, str] = {}
    if len(parts) == 2:
        current = None
        for line in parts[1].splitlines():
            if re.match(r"^\s*(Returns|Raises|Yields|Examples?):\s*$", line):
                break
            m = re.match(r"^\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$", line)
            if m:
                current = m.group(1)
                args[current] = m.group(2).strip()
            elif current and line.strip():
                args[current] += " " + line.strip()
    return description, args


def tool_schema(fn: Callable) -> dict:
    """The OpenAI-style function schema of a tool, derived from hints and docstring."""
    name = fn.__name__
    hints = typing.get_type_hints(fn)
    description, arg_docs = _parse_docstring(fn.__doc__)
    if not description:
        raise TypeError(f"tool {name!r} needs a docstring: it is what the model reads")
    properties: dict[str, dict] = {}
    required: list[str] = []
    for param in list(inspect.signature(fn).parameters.values())[1:]:  # skip self
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"tool {name!r}: *args/**kwargs cannot be described to a model")
        if param.name not in hints:
            raise TypeError(f"tool {name!r}: parameter {param.name!r} needs a type hint")
        prop = _type_schema(hints[param.name], f"tool {name!r} parameter {param.name!r}")
        if param.name in arg_docs:
            prop["description"] = arg_docs[param.name]
        properties[param.name] = prop
        if param.default is param.empty:
            required.append(param.name)
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


_cached_schema = functools.cache(tool_schema)


def _coerce(value: Any, schema: dict, arg: str) -> Any:
    """Check one argument against its schema; accept "3" for an integer, as models often quote numbers."""
    kind = schema["type"]
    if value is None and schema.get("nullable"):
        return None
    if kind == "integer" and isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        value = int(value)
    elif kind == "number" and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    ok = {
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
        "string": isinstance(value, str),
        "boolean": isinstance(value, bool),
        "array": isinstance(value, list),
        "object": isinstance(value, dict),
    }[kind]
    if not ok:
        raise ToolError(f"argument {arg!r} must be {kind}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        raise ToolError(f"argument {arg!r} must be one of {schema['enum']}, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------
# The environment base class


class ToolEnv(gym.Env):
    """Base class for tool-calling environments.

    Subclasses implement `setup(options) -> str` (start a new episode from
    `self.np_random`, return the first observation) and `@tool` methods returning text.
    A tool may add to `self.step_reward`, set `self.terminated = True`, and raise
    `ToolError` for an invalid action. `facts()` adds env-specific episode facts to
    `info`; `solved` is the standard success flag reward functions read.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"]}  # Gymnasium's class-level render metadata
    default_max_steps = 32

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "default_max_turns" in vars(cls):
            raise TypeError(f"{cls.__name__}.default_max_turns is now default_max_steps (the env's cap on tool steps)")

    def __init__(self, max_steps: int | None = None, max_invalid: int | None = None, render_mode: str | None = None):
        if render_mode not in (None, "ansi"):
            raise ValueError(f"unknown render_mode {render_mode!r} (accepted: None, 'ansi')")
        self.render_mode = render_mode
        self.max_steps = max_steps or self.default_max_steps
        self.max_invalid = max_invalid
        self.observation_space = gym.spaces.Text(MAX_TEXT_LENGTH, min_length=0, charset=TEXT_CHARSET)
        self.action_space = gym.spaces.Text(MAX_TEXT_LENGTH, min_length=0, charset=TEXT_CHARSET)
        self._reset_counters()

    # -- what subclasses provide -------------------------------------------------------

    def setup(self, options: dict) -> str:
        raise NotImplementedError

    def facts(self) -> dict:
        return {}

    @property
    def solved(self) -> bool:
        return False

    def render(self) -> str | None:
        return None

    def state_key(self) -> Hashable | None:
        """The state the next action acts on, as a hashable value: equal keys mean equal situations,
        counters that end the episode (turns, invalid actions) included. GRPO's step-level advantages
        (`grpo.step_advantage_weight`) compare the turns of a group's episodes that acted in equal
        states. None (the default): unknown, and the env's turns take the episode's advantage only."""
        return None

    def budget_key(self) -> tuple[int, int]:
        """The part of a state key every env shares: turns taken and invalid actions so far."""
        return self.turns, self.invalid_actions

    # -- tools -------------------------------------------------------------------------

    @classmethod
    def tools(cls) -> dict[str, Callable]:
        """Tool name -> unbound method, in definition order."""
        found: dict[str, Callable] = {}
        for klass in reversed(cls.__mro__):
            for name, member in vars(klass).items():
                if getattr(member, "__toolgym_tool__", False):
                    found[name] = member
        return found

    @classmethod
    def tool_schemas(cls) -> list[dict]:
        """The tools' schemas; derived once per tool (every episode's prompt needs them)."""
        return [_cached_schema(fn) for fn in cls.tools().values()]

    # -- gymnasium API -----------------------------------------------------------------

    def _reset_counters(self) -> None:
        self.turns = 0
        self.tool_calls = 0
        self.invalid_actions = 0
        self.tool_errors = 0
        self.no_tool_calls = 0
        self.episode_return = 0.0
        self.step_reward = 0.0
        self.terminated = False

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        self._reset_counters()
        return self.setup(dict(options or {})), self.info()

    def step(self, action: ToolCall | dict | str) -> tuple[str, float, bool, bool, dict]:
        if self.terminated:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        self.turns += 1
        self.step_reward = 0.0
        observation = self._dispatch(action)
        self.episode_return += self.step_reward
        if self.max_invalid is not None and self.invalid_actions >= self.max_invalid and not self.terminated:
            self.terminated = True
            observation += f"\nToo many invalid actions ({self.invalid_actions}); the episode is over."
        truncated = not self.terminated and self.turns >= self.max_steps
        return observation, self.step_reward, self.terminated, truncated, self.info()

    def info(self) -> dict:
        return {
            "solved": bool(self.solved),
            "turns": self.turns,
            "tool_calls": self.tool_calls,
            "invalid_actions": self.invalid_actions,
            "tool_errors": self.tool_errors,
            "no_tool_calls": self.no_tool_calls,
            "episode_return": self.episode_return,
            **self.facts(),
        }

    def _dispatch(self, action: ToolCall | dict | str) -> str:
        if isinstance(action, str):
            return self.on_text(action)
        if isinstance(action, dict):
            action = ToolCall(action.get("name", ""), action.get("arguments") or {})
        if not isinstance(action, ToolCall):
            raise TypeError(f"action must be a ToolCall, a dict or text, got {type(action).__name__}")
        self.tool_calls += 1
        tools = self.tools()
        fn = tools.get(action.name)
        if fn is None:
            self.invalid_actions += 1
            return f"Error: unknown tool {action.name!r}. Available tools: {', '.join(tools)}."
        try:
            kwargs = self._bind(fn, action.arguments)
        except ToolError as e:
            self.invalid_actions += 1
            return f"Error: bad arguments for {action.name}: {e}."
        try:
            return str(fn(self, **kwargs))
        except ToolError as e:
            self.invalid_actions += 1
            return f"Error: {e}"
        except RunStop:
            raise
        except Exception as e:  # noqa: BLE001 - a bug in the tool must not take the trainer down
            self.tool_errors += 1
            return f"Error: tool {action.name} failed: {type(e).__name__}: {e}"

    def _bind(self, fn: Callable, arguments: Any) -> dict:
        if not isinstance(arguments, dict):
            raise ToolError(f"arguments must be an object, got {arguments!r}")
        params = _cached_schema(fn)["function"]["parameters"]
        unknown = sorted(set(arguments) - set(params["properties"]))
        if unknown:
            raise ToolError(f"unexpected argument(s) {unknown} (accepted: {list(params['properties'])})")
        missing = [p for p in params["required"] if p not in arguments]
        if missing:
            raise ToolError(f"missing argument(s) {missing}")
        return {k: _coerce(v, params["properties"][k], k) for k, v in arguments.items()}

    def on_text(self, text: str) -> str:
        """The model answered without a tool call. By default: say so, and count it."""
        self.no_tool_calls += 1
        self.invalid_actions += 1
        return f"Error: no tool call found in your reply. Call one of the tools: {', '.join(self.tools())}."


@contextmanager
def closing_envs(envs: list):
    """`envs`, every one closed on the way out, whatever happened (`close_envs`)."""
    try:
        yield envs
    except BaseException as error:
        close_envs(envs, error)
        raise
    close_envs(envs)


def close_envs(envs: list, error: BaseException | None = None) -> None:
    """Close every env of `envs`; a close() that raises does not stop the others closing. With `error` (what
    the batch that played them raised) the close failures become notes on it, so it is not replaced; without,
    the first is raised once all are closed. An env a thread is still calling into (a step past its deadline,
    or one running when the batch raised) is closed once that call returns, and a failure then is logged
    (`envs.threads`)."""
    failures = []
    for env in envs:
        try:
            if not after_calls(env, env.close):
                env.close()
        except Exception as e:  # noqa: BLE001 - the others are closed first; raised or noted below
            failures.append(e)
    if not failures:
        return
    raised = error if error is not None else failures[0]
    for failure in failures:
        if failure is not raised:
            raised.add_note(f"closing an env failed too: {type(failure).__name__}: {failure}")
    if error is None:
        raise raised
