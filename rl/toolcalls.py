"""Tool-call formats: parse a model turn into tool calls, and render calls and results.

Built in:
- `hermes`: Hermes/Qwen JSON, `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`;
- `gemma4`: Gemma 4, `<|tool_call>call:name{key:<|"|>value<|"|>}<tool_call|>`, with
  results in `<|tool_response>response:name{...}<tool_response|>`.

A malformed call is never dropped silently (TRL turns it into a final answer): `parse`
returns an error message written for the model, which the rollout engine sends back and
counts in its metrics. Arguments nested deeper than `MAX_NESTING` levels, and numbers of
more than `MAX_NUMBER_CHARS` characters, are malformed too, and `parse_turn` turns any
exception of a format's parser into such an error: no model output can end an episode.
Register another format with `register_format`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from envs.base import ToolCall

MAX_NESTING = 64  # levels of objects and lists in a call's arguments (Python's parsers recurse)
MAX_NUMBER_CHARS = 100  # characters of one number (Python refuses int() of more than 4,300 digits)


@dataclass
class ParsedTurn:
    """One model turn: its text outside calls, the calls, and what was malformed."""

    content: str
    calls: list[ToolCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class ToolCallFormat:
    name: str = ""
    example: str = ""  # shown in error messages: what a well-formed call looks like
    end_of_call: str = ""  # a stop string that ends a turn after one call (rollout.stop_after_tool_call)

    def parse(self, text: str) -> ParsedTurn:
        raise NotImplementedError

    def render_call(self, call: ToolCall) -> str:
        raise NotImplementedError

    def render_response(self, name: str, result: Any) -> str:
        raise NotImplementedError

    def malformed(self, why: str) -> str:
        return f"Malformed tool call: {why}. Write a call like this: {self.example}"


def parse_turn(fmt: ToolCallFormat, text: str) -> ParsedTurn:
    """`fmt.parse(text)`, never raising: a parser that fails on some input (a format registered by a user,
    too) gives a format error for the model, not an env error that ends the episode unscored."""
    try:
        return fmt.parse(text)
    except Exception as e:  # noqa: BLE001 - any parser failure is the model's malformed output
        return ParsedTurn(content="", errors=[fmt.malformed(f"the turn could not be parsed ({type(e).__name__})")])


def _excerpt(text: str, pos: int = 0, width: int = 40) -> str:
    """A bounded quote of `text` around `pos`, for error messages the model reads."""
    start = max(0, pos - width)
    return ("..." if start else "") + text[start:pos + width] + ("..." if pos + width < len(text) else "")


def _nesting(text: str) -> int:
    """How deep JSON objects and lists nest in `text` (brackets inside strings do not count)."""
    if text.count("{") + text.count("[") <= MAX_NESTING:
        return 0
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (ch == "\\", ch != '"')
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _bounded_number(kind: type):
    def parse(text: str):
        if len(text) > MAX_NUMBER_CHARS:
            raise ValueError(f"a number of {len(text)} characters (at most {MAX_NUMBER_CHARS})")
        return kind(text)
    return parse


def _loads(text: str) -> Any:
    """`json.loads` within `MAX_NESTING` and `MAX_NUMBER_CHARS`; ValueError otherwise."""
    if _nesting(text) > MAX_NESTING:
        raise ValueError(f"arguments nested more than {MAX_NESTING} levels deep")
    return json.loads(text, parse_int=_bounded_number(int), parse_float=_bounded_number(float))


def _block_spans(text: str, open_tag: str, close_tag: str) -> list[tuple[int, int, str, bool]]:
    """(start, end, body, closed) for each open..close block; an unclosed last block runs to the end."""
    spans, pos = [], 0
    while (start := text.find(open_tag, pos)) != -1:
        body_start = start + len(open_tag)
        end = text.find(close_tag, body_start)
        if end == -1:  # a stop string may have eaten the closing tag
            spans.append((start, len(text), text[body_start:], False))
            break
        spans.append((start, end + len(close_tag), text[body_start:end], True))
        pos = end + len(close_tag)
    return spans


def _strip_spans(text: str, spans: list[tuple[int, int, str, bool]]) -> str:
    out, pos = [], 0
    for start, end, _, _ in spans:
        out.append(text[pos:start])
        pos = end
    out.append(text[pos:])
    return "".join(out).strip()


class HermesFormat(ToolCallFormat):
    name = "hermes"
    open_tag, close_tag = "<tool_call>", "</tool_call>"
    end_of_call = close_tag
    example = '<tool_call>\n{"name": "tool_name", "arguments": {"argument_name": "value"}}\n</tool_call>'

    def parse(self, text: str) -> ParsedTurn:
        spans = _block_spans(text, self.open_tag, self.close_tag)
        turn = ParsedTurn(content=_strip_spans(text, spans))
        for _, _, body, _ in spans:
            try:
                obj = _loads(body)
            except json.JSONDecodeError as e:
                turn.errors.append(self.malformed(f"invalid JSON ({e.msg} at position {e.pos})"))
                continue
            except (ValueError, RecursionError) as e:
                turn.errors.append(self.malformed(f"invalid JSON ({e})"))
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
                turn.errors.append(self.malformed('expected a JSON object with a string "name"'))
                continue
            args = obj.get("arguments", obj.get("parameters", {}))
            if isinstance(args, str):  # OpenAI style: arguments as a JSON string
                try:
                    args = _loads(args) if args.strip() else {}
                except (ValueError, RecursionError):
                    pass
            if not isinstance(args, dict):
                turn.errors.append(self.malformed(f'"arguments" must be a JSON object, got {_excerpt(repr(args))}'))
                continue
            turn.calls.append(ToolCall(obj["name"], args))
        return turn

    def render_call(self, call: ToolCall) -> str:
        body = json.dumps({"name": call.name, "arguments": call.arguments})
        return f"{self.open_tag}\n{body}\n{self.close_tag}"

    def render_response(self, name: str, result: Any) -> str:
        text = result if isinstance(result, str) else json.dumps(result)
        return f"<tool_response>\n{text}\n</tool_response>"


# -- Gemma 4 ----------------------------------------------------------------------------

_Q = '<|"|>'  # Gemma 4's string delimiter


class _Gemma4Args:
    """Recursive-descent parser for Gemma 4's argument syntax: `{key:value,...}`."""

    _number = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?")

    def __init__(self, text: str):
        self.text, self.pos, self.depth = text, 0, 0

    def error(self, what: str) -> ValueError:
        return ValueError(f"{what} at position {self.pos} of {_excerpt(self.text, self.pos)!r}")

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.error(f"arguments nested more than {MAX_NESTING} levels deep")

    def leave(self, close: str) -> bool:
        """Consume `close` and leave the level, if it comes next."""
        if not self.peek(close):
            return False
        self.pos += 1
        self.depth -= 1
        return True

    def parse_object(self) -> dict:
        self.expect("{")
        self.enter()
        obj: dict = {}
        if self.leave("}"):
            return obj
        while True:
            key = self.parse_string() if self.peek(_Q) else self.parse_bare_key()
            self.expect(":")
            obj[key] = self.parse_value()
            if self.peek(","):
                self.pos += 1
            elif self.leave("}"):
                return obj
            else:
                raise self.error("expected ',' or '}'")

    def parse_value(self) -> Any:
        if self.peek(_Q):
            return self.parse_string()
        if self.peek("{"):
            return self.parse_object()
        if self.peek("["):
            return self.parse_list()
        for word, value in (("true", True), ("false", False), ("null", None)):
            if self.peek(word):
                self.pos += len(word)
                return value
        m = self._number.match(self.text, self.pos)
        if not m:
            raise self.error("expected a value")
        if len(m.group()) > MAX_NUMBER_CHARS:
            raise self.error(f"a number of {len(m.group())} characters (at most {MAX_NUMBER_CHARS})")
        self.pos = m.end()
        return float(m.group()) if (m.group(1) or m.group(2)) else int(m.group())

    def parse_list(self) -> list:
        self.expect("[")
        self.enter()
        items: list = []
        if self.leave("]"):
            return items
        while True:
            items.append(self.parse_value())
            if self.peek(","):
                self.pos += 1
            elif self.leave("]"):
                return items
            else:
                raise self.error("expected ',' or ']'")

    def parse_string(self) -> str:
        self.expect(_Q)
        end = self.text.find(_Q, self.pos)
        if end == -1:
            raise self.error("unterminated string")
        value, self.pos = self.text[self.pos:end], end + len(_Q)
        return value

    def parse_bare_key(self) -> str:
        m = re.compile(r"[A-Za-z_][\w.-]*").match(self.text, self.pos)
        if not m:
            raise self.error("expected a key")
        self.pos = m.end()
        return m.group()

    def peek(self, s: str) -> bool:
        return self.text.startswith(s, self.pos)

    def expect(self, s: str) -> None:
        if not self.peek(s):
            raise self.error(f"expected {s!r}")
        self.pos += len(s)


def _gemma4_value(value: Any) -> str:
    if isinstance(value, str):
        return f"{_Q}{value}{_Q}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_gemma4_value(v)}" for k, v in sorted(value.items())) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_gemma4_value(v) for v in value) + "]"
    return str(value)


class Gemma4Format(ToolCallFormat):
    name = "gemma4"
    open_tag, close_tag = "<|tool_call>", "<tool_call|>"
    end_of_call = close_tag
    example = f"<|tool_call>call:tool_name{{argument_name:{_Q}value{_Q}}}<tool_call|>"

    def parse(self, text: str) -> ParsedTurn:
        spans = _block_spans(text, self.open_tag, self.close_tag)
        turn = ParsedTurn(content=_strip_spans(text, spans))
        for _, _, body, _ in spans:
            m = re.match(r"\s*call:([A-Za-z_][\w.-]*)", body)
            if not m:
                turn.errors.append(self.malformed("expected 'call:<tool name>{...}'"))
                continue
            parser = _Gemma4Args(body[m.end():].rstrip())
            try:
                args = parser.parse_object()
                if parser.pos != len(parser.text):
                    raise parser.error("unexpected text after the arguments")
            except (ValueError, RecursionError) as e:
                turn.errors.append(self.malformed(str(e)))
                continue
            turn.calls.append(ToolCall(m.group(1), args))
        return turn

    def render_call(self, call: ToolCall) -> str:
        return f"{self.open_tag}call:{call.name}{_gemma4_value(dict(call.arguments))}{self.close_tag}"

    def render_response(self, name: str, result: Any) -> str:
        body = _gemma4_value(result) if isinstance(result, dict) else "{value:" + _gemma4_value(result) + "}"
        return f"<|tool_response>response:{name}{body}<tool_response|>"


FORMATS: dict[str, ToolCallFormat] = {}


def register_format(fmt: ToolCallFormat) -> ToolCallFormat:
    FORMATS[fmt.name] = fmt
    return fmt


def get_format(name: str) -> ToolCallFormat:
    if name not in FORMATS:
        raise ValueError(f"unknown tool-call format {name!r} (known: {', '.join(sorted(FORMATS))})")
    return FORMATS[name]


register_format(HermesFormat())
register_format(Gemma4Format())
