"""The Ollama Modelfile's TEMPLATE renders a Sudoku conversation with tool calls as the run's Jinja
chat template does, executed by Go's text/template (`ollama_template.go`, data shaped as Ollama's)."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import envs
from rl.chat import load_template
from rl.export.hf import Merged
from rl.export.ollama import render_jinja, template
from rl.toolcalls import get_format

PREFIX = '<tool_call>\n{"name": "'
CALL = {"name": "place", "arguments": {"row": 1, "col": 3, "digit": 2}}
CONVERSATION = [
    {"role": "system", "content": "Play well."},
    {"role": "user", "content": "Solve this 4x4 Sudoku.\nRow 1: 4 3 | . ."},
    {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": CALL}]},
    {"role": "tool", "content": "Placed 2 at row 1, column 3."},
    {"role": "tool", "content": "Row 1: 4 3 | 2 ."},
    {"role": "assistant", "content": "One cell left.", "tool_calls": [{"type": "function", "function": CALL}]},
    {"role": "user", "content": "Error: no tool call found in your reply."},
]


def merged(prefix: str = "") -> Merged:
    return Merged(chat_template=load_template("gemma3_tools"), tool_format="hermes", response_prefix=prefix,
                  stop_tokens=["<eos>", "<end_of_turn>"], lineage=[], vision=False,
                  sentencepiece="", dtype="float32")


def go_render(text: str, messages: list[dict], tools: list[dict]) -> str:
    ollama = [{"role": m["role"], "content": m["content"],
               "tool_calls": [{"function": {"name": c["function"]["name"],
                                            "arguments": list(c["function"]["arguments"].items())}}
                              for c in m.get("tool_calls", [])]} for m in messages]
    done = subprocess.run(["go", "run", str(Path(__file__).with_name("ollama_template.go"))], check=True,
                          input=json.dumps({"template": text, "messages": ollama, "tools": tools}),
                          capture_output=True, text=True, timeout=300)
    return done.stdout


def jinja_render(messages: list[dict], tools: list[dict], prefix: str = "") -> str:
    return render_jinja(load_template("gemma3_tools"), messages, tools, True) + prefix


@pytest.mark.skipif(shutil.which("go") is None, reason="needs Go (apt-get install golang-go) to run text/template")
@pytest.mark.parametrize("prefix", ["", PREFIX])
def test_the_go_template_renders_the_conversation_as_the_jinja_template(prefix):
    tools = envs.resolve("sudoku").tool_schemas()
    expected = jinja_render(CONVERSATION, tools, prefix)
    # The one known difference: Ollama prints a call's arguments as compact JSON (training had json.dumps's spaces)
    expected = expected.replace(json.dumps(CALL["arguments"]), json.dumps(CALL["arguments"], separators=(",", ":")))
    rendered = go_render(template(merged(prefix), tools), CONVERSATION, tools)
    assert rendered == expected
    assert "You can call these tools:\n" in rendered and rendered.count("<tool_call>") == 3 + bool(prefix)
    calls = get_format("hermes").parse(rendered).calls  # the tool list's example, then the two calls of the history
    assert [(c.name, c.arguments) for c in calls[1:3]] == [("place", CALL["arguments"])] * 2


@pytest.mark.skipif(shutil.which("go") is None, reason="needs Go (apt-get install golang-go) to run text/template")
def test_without_tools_there_is_no_tool_list():
    messages = [{"role": "user", "content": "Hello"}]
    rendered = go_render(template(merged(), envs.resolve("sudoku").tool_schemas()), messages, [])
    assert rendered == jinja_render(messages, []) == "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n"


def test_the_tool_list_is_the_jinja_templates_own_text():
    tools = envs.resolve("sudoku").tool_schemas()
    text = template(merged(), tools)
    preamble = re.search(r"\{\{ if \$\.Tools \}\}\{\{ `(.*?)` \}\}\{\{ end \}\}", text, re.DOTALL).group(1)
    assert preamble in jinja_render([{"role": "user", "content": "x"}], tools)
    assert preamble.startswith("You can call these tools:\n{\"name\": \"place\"")
    assert preamble.endswith("</tool_response>.\n\n")


def test_a_run_on_another_chat_template_gets_no_modelfile_and_says_why(tmp_path):
    from dataclasses import replace

    from rl.config import load_config, to_yaml
    from rl.export.ollama import write_modelfile

    (tmp_path / "config.yaml").write_text(to_yaml(load_config(None, ["model.chat_template="])))  # the tokenizer's
    chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    why = write_modelfile(tmp_path / "Modelfile", "model-f16.gguf", replace(merged(), chat_template=chatml), tmp_path)
    assert why.startswith("no Modelfile: its template reproduces chat template gemma3_tools") and "the tokenizer" in why
    assert not (tmp_path / "Modelfile").exists()
    assert write_modelfile(tmp_path / "Modelfile", "model-f16.gguf", merged(), tmp_path) == ""  # gemma3_tools: one
    assert (tmp_path / "Modelfile").read_text().startswith("FROM ./model-f16.gguf\n")
