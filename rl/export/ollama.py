"""Ollama's Modelfile for an exported run: its TEMPLATE renders the chat and tool-call layout the run
trained with (toolgym's `gemma3_tools` template and the `hermes` call format), in Go's text/template
over Ollama's `.Messages` (Role, Content, ToolCalls) and `.Tools`.

Where it differs from the Jinja template, because Ollama gives the template less than transformers does:
- the tool list is the run's own env's, rendered at export by the Jinja template itself (exact text);
  tools sent by a client only switch it on, since a model trained on its env's tools knows no others;
- a call in the history prints its arguments as Ollama's JSON (`{{ .Function.Arguments }}`: compact, keys
  sorted), not as Python's json.dumps wrote them in training (`{"row": 1, "col": 2}`);
- message text is not trimmed, and the BOS token is left to llama.cpp (the GGUF asks for it);
- with a `rollout.response_prefix`, every model turn opens with it, as in training, so a reply starts
  after it (a base model trained so calls tools only that way).
"""

from __future__ import annotations

from pathlib import Path

from rl.export.hf import Merged, run_config

PROBE = "<<toolgym:first user message>>"
SUPPORTED = ("gemma3_tools", "hermes")  # the chat template and tool-call format this template reproduces


def go_string(text: str) -> str:
    """`text` as a Go template action printing it verbatim: a raw string (backquotes) where it can be."""
    if "`" not in text:
        return "{{ `" + text + "` }}"
    return "{{ " + '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"' + " }}"


def render_jinja(chat_template: str, messages: list[dict], tools: list[dict] | None, generation_prompt: bool) -> str:
    """The Jinja template rendered as transformers renders it (its own `tojson` keeps key order), without BOS."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template([messages], tools=tools or None, chat_template=chat_template,
                                        add_generation_prompt=generation_prompt, bos_token="")
    return rendered[0]


def tool_preamble(merged: Merged, tools: list[dict]) -> str:
    """The text the Jinja template puts before the first user message when tools are given (empty system)."""
    text = render_jinja(merged.chat_template, [{"role": "user", "content": PROBE}], tools, False)
    return text[text.index("<start_of_turn>user\n") + len("<start_of_turn>user\n"):text.index(PROBE)]


def template(merged: Merged, tools: list[dict]) -> str:
    """The Modelfile's TEMPLATE: gemma3_tools's turns, written for Ollama's template data."""
    preamble = go_string(tool_preamble(merged, tools))
    prefix = go_string(merged.response_prefix) if merged.response_prefix else ""
    # No whitespace trimming ({{- }}) and no layout: every character outside an action is output
    parts = [
        '{{ $system := "" }}{{ $prev := "" }}{{ $first := true }}',
        '{{ range .Messages }}{{ if eq .Role "system" }}{{ $system = .Content }}{{ end }}{{ end }}',
        '{{ range $m := .Messages }}{{ if ne $m.Role "system" }}',
        # consecutive tool results share one user turn
        '{{ if eq $m.Role "tool" }}{{ if eq $prev "tool" }}\n{{ else }}<start_of_turn>user\n{{ end }}',
        '<tool_response>\n{{ $m.Content }}\n</tool_response>',
        '{{ else }}{{ if eq $prev "tool" }}<end_of_turn>\n{{ end }}',
        '<start_of_turn>{{ if eq $m.Role "assistant" }}model{{ else }}user{{ end }}\n',
        # the system text and the tool list open the first user turn
        '{{ if and $first (ne $m.Role "assistant") }}{{ $first = false }}',
        '{{ if $system }}{{ $system }}\n\n{{ end }}{{ if $.Tools }}', preamble, '{{ end }}{{ end }}',
        '{{ $m.Content }}',
        '{{ range $i, $call := $m.ToolCalls }}{{ if or $m.Content $i }}\n{{ end }}',
        '<tool_call>\n{"name": "{{ $call.Function.Name }}", "arguments": {{ $call.Function.Arguments }}}\n</tool_call>',
        '{{ end }}<end_of_turn>\n{{ end }}{{ $prev = $m.Role }}{{ end }}{{ end }}',
        '{{ if eq $prev "tool" }}<end_of_turn>\n{{ end }}',
        '{{ if ne $prev "assistant" }}<start_of_turn>model\n', prefix, '{{ end }}',
    ]
    return "".join(parts)


def write_modelfile(path: Path, gguf_name: str, merged: Merged, run: Path) -> str:
    """Write the Modelfile next to the GGUF; returns '' or, when none is written, why."""
    import envs
    from rl.chat import load_template

    cfg = run_config(run)
    template_name, tool_format = SUPPORTED
    # the tokenizer's own template (chat_template "") may be anything: the text itself must be gemma3_tools
    if merged.chat_template.strip() != load_template(template_name).strip() or merged.tool_format != tool_format:
        return (f"no Modelfile: its template reproduces chat template {template_name} with tool format {tool_format}; "
                f"this run has {cfg.model.chat_template or 'the tokenizer'}'s template and {merged.tool_format}")
    tools = envs.resolve(cfg.env.name).tool_schemas()
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template(merged, tools)}"""']
    lines += [f'PARAMETER stop "{token}"' for token in merged.stop_tokens]
    path.write_text("\n".join(lines) + "\n")
    return ""
