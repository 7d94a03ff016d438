"""Chat templates at the token level.

The rollout engine never re-tokenises earlier turns. It needs two things from a chat
template: the token ids of the first prompt, and the token ids that a tool turn adds
after a model turn (closing the model turn, the tool results, and the next generation
prompt). The second is found by rendering a conversation with and without the tool
messages and taking the difference, so any HF chat template that renders `tool`
messages after a plain assistant message works, with `chat_template_kwargs`
(e.g. `enable_thinking=False`) passed to every render. Templates that render tool
results only after an assistant message with structured `tool_calls` (Gemma 4, whose
results continue the model's own turn) get the calls instead of the plain message.

Messages may carry `"images"` (PIL images, from the env). With an `ImageTokenizer`
(`rl.vision`), they become image content blocks and the rendered placeholders are
expanded into the model's image tokens; without one they are dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rl.toolcalls import ToolCallFormat

if TYPE_CHECKING:
    from rl.vision import ImageTokenizer

TEMPLATES = Path(__file__).parent / "templates"
_SENTINEL = "<<toolgym:model-turn>>"
_PROBE = "<<toolgym:tool-result>>"


def template_path(name_or_path: str) -> Path:
    """Where a chat template lies: by built-in name (`gemma3_tools`), TRL's name (`trl:qwen3`) or file path.
    Imports nothing (TRL's folder is found without importing TRL), so configs are checked in an instant."""
    if name_or_path.startswith("trl:"):
        import importlib.util

        trl = importlib.util.find_spec("trl")
        folder = Path(trl.origin).parent if trl is not None and trl.origin else Path("<trl is not installed>")
        path = folder / "chat_templates" / f"{name_or_path[4:]}.jinja"
    elif (TEMPLATES / f"{name_or_path}.jinja").exists():
        path = TEMPLATES / f"{name_or_path}.jinja"
    else:
        path = Path(name_or_path)
    if not path.is_file():
        raise ValueError(f"unknown chat template {name_or_path!r} ({template_choices()})")
    return path


def template_choices() -> str:
    """What `model.chat_template` accepts, in the words its errors use."""
    known = sorted(p.stem for p in TEMPLATES.glob("*.jinja"))
    return f"built in: {known}; or 'trl:<name>', or a path"


def load_template(name_or_path: str) -> str:
    """A chat template by built-in name (`gemma3_tools`), TRL's name (`trl:qwen3`) or file path."""
    return template_path(name_or_path).read_text()


class ChatFormat:
    """A tokenizer's chat template plus a tool-call format, producing token ids (and images, for a VLM)."""

    def __init__(self, tokenizer: Any, tool_format: ToolCallFormat, chat_template_kwargs: dict | None = None,
                 images: ImageTokenizer | None = None):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template; set model.chat_template (e.g. 'gemma3_tools')")
        self.tokenizer = tokenizer
        self.tool_format = tool_format
        self.template_kwargs = dict(chat_template_kwargs or {})
        self.images = images
        self.stop_token_ids = stop_token_ids(tokenizer)
        self.results_need_calls = self._results_need_calls()

    def render(self, messages: list[dict], tools: list[dict] | None, add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            [self._template_message(m) for m in messages], tools=tools or None, tokenize=False,
            add_generation_prompt=add_generation_prompt, **self.template_kwargs,
        )

    def _template_message(self, message: dict) -> dict:
        """A message as the template takes it: its images as content blocks before the text, or dropped."""
        if "images" not in message:
            return message
        images = message["images"]
        message = {k: v for k, v in message.items() if k != "images"}
        if self.images is not None and images:
            message["content"] = [{"type": "image"} for _ in images] + [{"type": "text", "text": message["content"]}]
        return message

    def _images_of(self, messages: list[dict]) -> list:
        """The messages' images in the order the template shows them (a text model sees none)."""
        return [image for m in messages for image in m.get("images") or []] if self.images is not None else []

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def encode_with_images(self, text: str, images: list) -> tuple[list[int], list]:
        """Token ids of rendered text and the processed images its placeholders stand for."""
        if self.images is None or not images:
            return self.encode(text), []
        return self.images.encode(text, images)

    def prompt(self, messages: list[dict], tools: list[dict] | None) -> tuple[list[int], list]:
        """The first prompt's token ids and its images' model inputs."""
        return self.encode_with_images(self.render(messages, tools, add_generation_prompt=True),
                                       self._images_of(messages))

    def prompt_ids(self, messages: list[dict], tools: list[dict] | None) -> list[int]:
        return self.prompt(messages, tools)[0]

    def tool_turn(self, results: list[dict], stopped_with: int | None) -> tuple[list[int], list]:
        """Token ids of a tool turn (see `tool_turn_text`) and its images' model inputs."""
        return self.encode_with_images(self.tool_turn_text(results, stopped_with), self._images_of(results))

    def tool_turn_text(self, results: list[dict], stopped_with: int | None) -> str:
        """Text between the end of a model turn and the start of the next one.

        `results` are chat messages with role "tool" (or "user", for a reply without a
        tool call). `stopped_with` is the stop token the model ended its turn with (None if
        it was cut off or stopped on a stop string); the template's copy of that token is
        left out, because the model already wrote it.
        """
        if self.results_need_calls and any(m["role"] == "tool" for m in results):
            closing, after = self._after_calls(results)
        else:
            base = [{"role": "user", "content": "."}, {"role": "assistant", "content": _SENTINEL}]
            with_tools = self.render(base + results, None, add_generation_prompt=True)
            closing, after = "", with_tools[with_tools.index(_SENTINEL) + len(_SENTINEL):]
        text = closing + after
        if stopped_with is not None:
            stop = self.tokenizer.decode([stopped_with])
            if stop and text.startswith(stop):
                text = text[len(stop):]
        return text

    def _after_calls(self, results: list[dict]) -> tuple[str, str]:
        """(what closes the model's calls, what the results add) for templates that need `tool_calls`.

        The calls' names and ids pair each result with a call; their arguments do not
        matter, since only the text after the calls is used.
        """
        calls, answered = [], []
        for m in results:
            if m["role"] == "tool":
                call_id = f"call_{len(calls)}"
                calls.append({"id": call_id, "type": "function",
                              "function": {"name": m.get("name") or "tool", "arguments": {}}})
                m = {**m, "tool_call_id": call_id}
            answered.append(m)
        turn = [{"role": "user", "content": "."}, {"role": "assistant", "content": "", "tool_calls": calls}]
        before = self.render(turn, None, add_generation_prompt=False)
        with_results = self.render(turn + answered, None, add_generation_prompt=True)
        if not with_results.startswith(before):
            raise ValueError("the chat template renders a model turn differently once tool results follow it, "
                             "so tool results cannot be appended token by token")
        end = self.tool_format.end_of_call
        closing = before[before.rindex(end) + len(end):] if end and end in before else ""
        return closing, with_results[len(before):]

    def _results_need_calls(self) -> bool:
        """Whether the template shows tool results only after structured `tool_calls` (Gemma 4)."""
        probe = [{"role": "tool", "name": "probe", "content": _PROBE}]
        plain = [{"role": "user", "content": "."}, {"role": "assistant", "content": _SENTINEL}]
        if _PROBE in self.render(plain + probe, None, add_generation_prompt=True):
            return False
        calls = [{"role": "user", "content": "."}, {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": "probe", "arguments": {}}}]}]
        if _PROBE in self.render(calls + [{**probe[0], "tool_call_id": "call_0"}], None, add_generation_prompt=True):
            return True
        raise ValueError("the chat template never renders tool messages (role 'tool'); "
                         "set model.chat_template to one that does (e.g. 'gemma3_tools' or 'trl:gemma4_v5')")

    def closing_ids(self) -> list[int]:
        """The template's end of a model turn, up to its stop token (e.g. `<end_of_turn>`).

        Appended as context when a turn ended on a stop string instead of a stop token.
        """
        rendered = self.render([{"role": "user", "content": "."}, {"role": "assistant", "content": _SENTINEL}],
                               None, add_generation_prompt=False)
        ids = self.encode(rendered[rendered.index(_SENTINEL) + len(_SENTINEL):])
        stop = next((i for i, t in enumerate(ids) if t in self.stop_token_ids), None)
        return ids if stop is None else ids[:stop + 1]

    def tool_turn_ids(self, results: list[dict], stopped_with: int | None) -> list[int]:
        return self.encode(self.tool_turn_text(results, stopped_with))


def stop_token_ids(tokenizer: Any) -> list[int]:
    """Token ids that end a model turn: eos plus the template's end-of-turn token, if any."""
    ids = []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    # `<|tool_response>`: Gemma 4 ends a turn that calls tools with it, and the results continue that turn
    for token in ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<turn|>", "<|end|>", "<|tool_response>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id and token_id not in ids:
            ids.append(token_id)
    return ids
