from typing import Literal

import pytest

from envs.base import ToolCall, ToolEnv, ToolError, tool, tool_schema


class Calculator(ToolEnv):
    def setup(self, options):
        self.memory = 0
        return "ready"

    @tool
    def add(self, a: int, b: float = 0.5) -> str:
        """Add two numbers.

        Args:
            a: The first number.
            b: The second number,
                which may be fractional.
        """
        return str(a + b)

    @tool
    def pick(self, color: Literal["red", "green"], tags: list[str], note: str | None = None) -> str:
        """Pick a color."""
        return color

    @tool
    def explode(self) -> str:
        """Always fails."""
        raise ZeroDivisionError("boom")

    @tool
    def refuse(self) -> str:
        """An invalid action."""
        raise ToolError("not allowed now")


def test_schema_from_hints_and_docstring():
    schema = tool_schema(Calculator.add)
    assert schema == {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two numbers.",
            "parameters": {
                "type": "object",
                "properties": {
                    "a": {"type": "integer", "description": "The first number."},
                    "b": {"type": "number", "description": "The second number, which may be fractional."},
                },
                "required": ["a"],
            },
        },
    }
    props = tool_schema(Calculator.pick)["function"]["parameters"]["properties"]
    assert props["color"] == {"type": "string", "enum": ["red", "green"]}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    assert props["note"] == {"type": "string", "nullable": True}
    assert [s["function"]["name"] for s in Calculator.tool_schemas()] == ["add", "pick", "explode", "refuse"]


def test_schema_errors_name_the_problem():
    def no_doc(self, x: int) -> str:
        return ""

    def no_hint(self, x) -> str:
        """Doc."""

    def bad_hint(self, x: set) -> str:
        """Doc."""

    with pytest.raises(TypeError, match="tool 'no_doc' needs a docstring"):
        tool_schema(no_doc)
    with pytest.raises(TypeError, match="parameter 'x' needs a type hint"):
        tool_schema(no_hint)
    with pytest.raises(TypeError, match="unsupported type hint"):
        tool_schema(bad_hint)


@pytest.fixture
def env():
    e = Calculator()
    e.reset(seed=0)
    return e


@pytest.mark.parametrize("action, expected, invalid, errors", [
    (ToolCall("add", {"a": 2, "b": 3}), "5", 0, 0),
    ({"name": "add", "arguments": {"a": "2"}}, "2.5", 0, 0),  # quoted ints are accepted
    ({"name": "add", "arguments": {"a": "two"}}, "argument 'a' must be integer, got 'two'", 1, 0),
    ({"name": "add", "arguments": {}}, "missing argument(s) ['a']", 1, 0),
    ({"name": "add", "arguments": {"a": 1, "c": 2}}, "unexpected argument(s) ['c']", 1, 0),
    ({"name": "pick", "arguments": {"color": "blue", "tags": []}}, "must be one of ['red', 'green']", 1, 0),
    ({"name": "subtract", "arguments": {}},
     "unknown tool 'subtract'. Available tools: add, pick, explode, refuse", 1, 0),
    ({"name": "explode", "arguments": {}}, "tool explode failed: ZeroDivisionError: boom", 0, 1),
    ({"name": "refuse", "arguments": {}}, "Error: not allowed now", 1, 0),
    ("just text", "no tool call found", 1, 0),
])
def test_dispatch_turns_every_failure_into_an_observation(env, action, expected, invalid, errors):
    obs, _, terminated, _, info = env.step(action)
    assert expected in obs
    assert info["invalid_actions"] == invalid and info["tool_errors"] == errors
    assert not terminated


def test_bad_action_type_is_a_programming_error(env):
    with pytest.raises(TypeError, match="action must be a ToolCall, a dict or text"):
        env.step(42)
