"""launch/export.py on a tiny run (see export_run.py): the merged model is the trained one, and its GGUF,
loaded by llama.cpp, continues a Sudoku turn with transformers' greedy tokens (f16: the first 32 tokens;
q8_0: the same parsed tool call)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

from rl.toolcalls import get_format
from tests.integration.export_run import TOKENS, hf_greedy, llama_greedy, make_run, run_export, sudoku_turn


def check_export(run: Path, out: Path, n: int = TOKENS) -> dict:
    """Export `run`, then compare llama.cpp's greedy continuation with transformers' on the merged model (its
    weights as saved, computed in float32 as llama.cpp computes)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    record = run_export(run, out, timeout=3000)
    assert record["gguf"] == {"f16": "model-f16.gguf", "q8_0": "model-q8_0.gguf"}
    tokenizer = AutoTokenizer.from_pretrained(out / "hf")
    model = AutoModelForCausalLM.from_pretrained(out / "hf", dtype=torch.float32).eval()
    text = sudoku_turn(tokenizer, seed=3, prefix=record["response_prefix"])
    ids = tokenizer.encode(text, add_special_tokens=False)
    expected = hf_greedy(model, ids, n)
    f16, llm = llama_greedy(out / "model-f16.gguf", ids, n)
    # llama.cpp reads the same text as the same tokens (what Ollama sends it is text)
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
    assert f16 == expected, (tokenizer.decode(f16), tokenizer.decode(expected))
    q8, _ = llama_greedy(out / "model-q8_0.gguf", ids, n)
    hermes = get_format("hermes")
    parsed = [hermes.parse(record["response_prefix"] + tokenizer.decode(t, skip_special_tokens=True))
              for t in (expected, q8)]
    assert parsed[0].calls == parsed[1].calls and parsed[0].errors == parsed[1].errors
    return {"record": record, "expected": expected, "parsed": parsed[0], "model": model, "ids": ids}


def logits(model, ids: list[int]):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def test_a_tiny_run_exports_to_a_gguf_that_llama_cpp_continues_as_transformers(tmp_path):
    run = make_run(tmp_path)
    result = check_export(run, tmp_path / "export")
    record = result["record"]
    assert record["lineage"] == [str(run / "final"), str(tmp_path / "base")]
    assert (tmp_path / "export" / "hf" / "chat_template.jinja").read_text().startswith("{#- Gemma 3 turns")
    modelfile = (tmp_path / "export" / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model-q8_0.gguf\nTEMPLATE \"\"\"")
    assert 'PARAMETER stop "<end_of_turn>"' in modelfile
    assert len(set(result["expected"])) > 8  # a varied continuation (the taught call format), not one token repeated
    # hf/ is the base with the LoRA folded in: it computes what base + adapter computes, not what the base does
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()
    merged = logits(result["model"], result["ids"])
    assert not torch.allclose(logits(base, result["ids"]), merged, atol=1e-3)
    adapted = PeftModel.from_pretrained(base, run / "final").eval()
    assert torch.allclose(logits(adapted, result["ids"]), merged, atol=1e-4)


def test_a_run_of_a_bf16_base_exports_hf_in_bf16_that_llama_cpp_converts_and_continues_alike(tmp_path):
    import json

    from gguf import GGUFReader

    run = make_run(tmp_path, dtype="bfloat16")
    result = check_export(run, tmp_path / "export")
    assert result["record"]["dtype"] == "bfloat16"
    assert json.loads((tmp_path / "export" / "hf" / "config.json").read_text())["dtype"] == "bfloat16"
    assert {str(p.dtype) for p in result["model"].parameters()} == {"torch.float32"}  # loaded as asked
    reader = GGUFReader(str(tmp_path / "export" / "model-f16.gguf"))
    assert {t.tensor_type.name for t in reader.tensors} <= {"F16", "F32"}  # --outtype f16 (norms kept in F32)
