"""Chat templates at the token level.

The rollout engine never re-tokenises earlier turns. It needs two things from a chat
template: the token ids of the first prompt, and the token ids that a tool turn adds
after a model turn (closing the model turn, the tool results, and the next generation
prompt). The second is found by rendering a conversation with and without the tool
messages and taking the difference, so any HF chat template that renders `tool`
messages after a plain assistant message works, with `chat_template_kwargs`
(e.g. `enable_thinking=False`) passed to every render.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rl.toolcalls import ToolCallFormat

TEMPLATES = Path(__file__).parent / "templates"
_SENTINEL = "<<toolgym:model-turn>>"


def load_template(name_or_path: str) -> str:
    """A chat template by built-in name (`gemma3_tools`), TRL's name (`trl:qwen3`) or file path."""
    if name_or_path.startswith("trl:"):
        import trl

        path = Path(trl.__file__).parent / "chat_templates" / f"{name_or_path[4:]}.jinja"
    elif (TEMPLATES / f"{name_or_path}.jinja").exists():
        path = TEMPLATES / f"{name_or_path}.jinja"
    else:
        path = Path(name_or_path)
    if not path.exists():
        known = sorted(p.stem for p in TEMPLATES.glob("*.jinja"))
        raise ValueError(f"unknown chat template {name_or_path!r} (built in: {known}; or 'trl:<name>', or a path)")
    return path.read_text()


class ChatFormat:
    """A tokenizer's chat template plus a tool-call format, producing token ids."""

    def __init__(self, tokenizer: Any, tool_format: ToolCallFormat, chat_template_kwargs: dict | None = None):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template; set model.chat_template (e.g. 'gemma3_tools')")
        self.tokenizer = tokenizer
        self.tool_format = tool_format
        self.template_kwargs = dict(chat_template_kwargs or {})
        self.stop_token_ids = stop_token_ids(tokenizer)

    def render(self, messages: list[dict], tools: list[dict] | None, add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tools=tools or None, tokenize=False, add_generation_prompt=add_generation_prompt,
            **self.template_kwargs,
        )

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def prompt_ids(self, messages: list[dict], tools: list[dict] | None) -> list[int]:
        return self.encode(self.render(messages, tools, add_generation_prompt=True))

    def tool_turn_text(self, results: list[dict], stopped_with: int | None) -> str:
        """Text between the end of a model turn and the start of the next one.

        `results` are chat messages with role "tool". `stopped_with` is the stop token
        the model ended its turn with (None if it was cut off); the template's copy of
        that token is left out, because the model already wrote it.
        """
        base = [{"role": "user", "content": "."}, {"role": "assistant", "content": _SENTINEL}]
        with_tools = self.render(base + results, None, add_generation_prompt=True)
        after = with_tools[with_tools.index(_SENTINEL) + len(_SENTINEL):]
        if stopped_with is not None:
            stop = self.tokenizer.decode([stopped_with])
            if stop and after.startswith(stop):
                after = after[len(stop):]
        return after

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
    for token in ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<turn|>", "<|end|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id and token_id not in ids:
            ids.append(token_id)
    return ids
