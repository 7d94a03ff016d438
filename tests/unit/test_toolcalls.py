import pytest

from envs.base import ToolCall
from rl.toolcalls import FORMATS, get_format

CALLS = [
    ToolCall("place", {"row": 1, "col": 2, "digit": 3}),
    ToolCall("show_board", {}),
    ToolCall("search", {"query": 'a "quoted", {braced} string: with colons', "limit": 5}),
    ToolCall("configure", {"flags": [True, False, None], "ratio": -0.25, "nested": {"a": [1, 2], "b": "x y"}}),
    ToolCall("unicode", {"text": "café ünïcödé ✓"}),
]


@pytest.mark.parametrize("fmt", ["hermes", "gemma4"])
@pytest.mark.parametrize("call", CALLS, ids=lambda c: c.name)
def test_round_trip(fmt, call):
    f = get_format(fmt)
    turn = f.parse(f.render_call(call))
    assert turn.errors == [] and turn.calls == [call] and turn.content == ""


@pytest.mark.parametrize("fmt", ["hermes", "gemma4"])
def test_several_calls_and_surrounding_text(fmt):
    f = get_format(fmt)
    text = "Let me look.\n" + f.render_call(CALLS[1]) + "\nthen\n" + f.render_call(CALLS[0])
    turn = f.parse(text)
    assert turn.calls == [CALLS[1], CALLS[0]] and turn.errors == []
    assert turn.content == "Let me look.\n\nthen"


def test_exact_wire_formats():
    assert get_format("hermes").render_call(CALLS[0]) == (
        '<tool_call>\n{"name": "place", "arguments": {"row": 1, "col": 2, "digit": 3}}\n</tool_call>')
    assert get_format("gemma4").render_call(ToolCall("lane_change", {"direction": "left", "n": 2})) == (
        '<|tool_call>call:lane_change{direction:<|"|>left<|"|>,n:2}<tool_call|>')
    assert get_format("gemma4").render_response("observe", "clear road") == (
        '<|tool_response>response:observe{value:<|"|>clear road<|"|>}<tool_response|>')
    assert get_format("hermes").render_response("observe", "ok") == "<tool_response>\nok\n</tool_response>"


def test_gemma4_parses_quoted_keys_and_whitespace():
    turn = get_format("gemma4").parse('<|tool_call>call:f{<|"|>a<|"|>:1,b:{c:true}}<tool_call|>')
    assert turn.calls == [ToolCall("f", {"a": 1, "b": {"c": True}})]


def test_unclosed_call_is_still_parsed():
    """A stop string may eat the closing tag; a complete body still counts."""
    turn = get_format("hermes").parse('<tool_call>\n{"name": "show_board", "arguments": {}}\n')
    assert turn.calls == [ToolCall("show_board", {})] and turn.errors == []


@pytest.mark.parametrize("fmt, text, why", [
    ("hermes", '<tool_call>{"name": "place", "arguments": {"row": 1,}}</tool_call>', "invalid JSON"),
    ("hermes", "<tool_call>place(1, 2, 3)</tool_call>", "invalid JSON"),
    ("hermes", '<tool_call>["place"]</tool_call>', 'a JSON object with a string "name"'),
    ("hermes", '<tool_call>{"name": "place", "arguments": [1, 2]}</tool_call>', '"arguments" must be a JSON object'),
    ("hermes", '<tool_call>{"name": "place", "arguments": {"row": 1', "invalid JSON"),
    ("gemma4", "<|tool_call>place{row:1}<tool_call|>", "expected 'call:<tool name>{...}'"),
    ("gemma4", "<|tool_call>call:place{row:1,col:}<tool_call|>", "expected a value"),
    ("gemma4", '<|tool_call>call:place{note:<|"|>open}<tool_call|>', "unterminated string"),
    ("gemma4", "<|tool_call>call:place{row:1} extra<tool_call|>", "unexpected text after the arguments"),
])
def test_malformed_calls_give_an_explicit_error(fmt, text, why):
    f = get_format(fmt)
    turn = f.parse(text)
    assert turn.calls == []
    assert len(turn.errors) == 1 and why in turn.errors[0]
    assert turn.errors[0].startswith("Malformed tool call:") and f.example in turn.errors[0]


def test_a_bad_call_does_not_hide_a_good_one():
    f = get_format("hermes")
    turn = f.parse("<tool_call>{oops}</tool_call>" + f.render_call(CALLS[1]))
    assert turn.calls == [CALLS[1]] and len(turn.errors) == 1


def test_plain_text_has_no_calls_and_no_errors():
    for f in FORMATS.values():
        assert f.parse("I will think about it.") .calls == []
        assert f.parse("I will think about it.").errors == []


def test_unknown_format_is_named():
    with pytest.raises(ValueError, match=r"unknown tool-call format 'xml' \(known: .*gemma4, hermes"):
        get_format("xml")


def test_gemma3_tools_template_renders_structured_tool_calls_as_the_hermes_format(tiny_tokenizer):
    """Messages with `tool_calls` (TRL's agent loop, users' own data) render exactly as the
    rollout engine writes calls, so both read the same text."""
    from trl.chat_template_utils import supports_tool_calling

    call = ToolCall("place", {"row": 1, "col": 2, "digit": 3})
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": "Sure.", "tool_calls": [
                    {"type": "function", "function": {"name": "place", "arguments": call.arguments}},
                    {"type": "function", "function": {"name": "show_board", "arguments": {}}}]},
                {"role": "tool", "name": "place", "content": "ok"}]
    text = tiny_tokenizer.apply_chat_template(messages, tokenize=False)
    hermes = get_format("hermes")
    expected = "Sure.\n" + hermes.render_call(call) + "\n" + hermes.render_call(ToolCall("show_board", {}))
    assert f"<start_of_turn>model\n{expected}<end_of_turn>" in text
    assert supports_tool_calling(tiny_tokenizer)


def nested_call(fmt: str, depth: int, inner: str = "1") -> str:
    """A call whose arguments nest `depth` levels deep (objects, then lists, alternating)."""
    if fmt == "hermes":
        opening, closing = '{"a": [' * (depth // 2), "]}" * (depth // 2)
        return f'<tool_call>{{"name": "place", "arguments": {{"x": {opening}{inner}{closing}}}}}</tool_call>'
    opening, closing = "{a:[" * (depth // 2), "]}" * (depth // 2)
    return f"<|tool_call>call:place{{x:{opening}{inner}{closing}}}<tool_call|>"


@pytest.mark.parametrize("fmt", ["hermes", "gemma4"])
@pytest.mark.parametrize("text, why", [
    (lambda fmt: nested_call(fmt, 10_000), "nested more than 64 levels deep"),
    (lambda fmt: nested_call(fmt, 2, inner="9" * 5_000), "a number of 5000 characters (at most 100)"),
    (lambda fmt: nested_call(fmt, 2, inner="-1." + "5" * 5_000), "a number of 5003 characters"),
], ids=["10000-deep", "5000-digit-int", "5000-digit-float"])
def test_deep_nesting_and_huge_numbers_are_format_errors_not_exceptions(fmt, text, why):
    f = get_format(fmt)
    turn = f.parse(text(fmt))
    assert turn.calls == [] and len(turn.errors) == 1
    assert why in turn.errors[0] and turn.errors[0].startswith("Malformed tool call:")
    assert len(turn.errors[0]) < 400  # the model reads it: a bounded quote, never the whole call


@pytest.mark.parametrize("fmt", ["hermes", "gemma4"])
def test_nesting_and_numbers_within_the_bounds_still_parse(fmt):
    f = get_format(fmt)
    [call] = f.parse(nested_call(fmt, 62, inner="9" * 100)).calls
    value = call.arguments["x"]
    for _ in range(31):
        value = value["a"][0]
    assert value == int("9" * 100)


def test_hermes_arguments_given_as_a_json_string_are_bounded_too():
    deep = '{\\"a\\": ' * 10_000 + "1" + "}" * 10_000
    turn = get_format("hermes").parse(f'<tool_call>{{"name": "f", "arguments": "{deep}"}}</tool_call>')
    assert turn.calls == [] and '"arguments" must be a JSON object' in turn.errors[0] and len(turn.errors[0]) < 400


def test_brackets_inside_strings_do_not_count_as_nesting():
    f = get_format("hermes")
    call = ToolCall("say", {"text": "[{" * 1_000})
    assert f.parse(f.render_call(call)).calls == [call]


def test_a_parser_that_raises_gives_a_format_error():
    from rl.toolcalls import HermesFormat, parse_turn

    class Broken(HermesFormat):
        def parse(self, text):
            raise KeyError("a bug in a user's format")

    turn = parse_turn(Broken(), "<tool_call>{}</tool_call>")
    assert turn.calls == [] and turn.errors == [Broken().malformed("the turn could not be parsed (KeyError)")]
    hermes = get_format("hermes")
    assert parse_turn(hermes, hermes.render_call(CALLS[0])).calls == [CALLS[0]]
