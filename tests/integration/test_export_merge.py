"""The export's hf/ step (rl.export.hf.save_merged) on tiny runs: the chat template a final tokenizer lacks is
picked as training picks it, or refused when there is none; the merged model is saved in the dtype of the
model the run was made from."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.integration.export_run import save_run


def tiny_base(folder: Path, dtype: str, template: bool):
    """The built-in `tiny` saved as a model folder in `dtype`, its tokenizer with or without gemma3_tools."""
    import torch

    from rl.chat import load_template
    from rl.models import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = load_template("gemma3_tools") if template else None
    tiny_model(len(tokenizer)).to(getattr(torch, dtype)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return tokenizer


def lora_run(folder: Path, base: str, tokenizer) -> Path:
    """A run of `base` (a folder or a built-in name) whose final/ holds a LoRA adapter (random, as save_run makes
    it) and `tokenizer`."""
    from peft import get_peft_model

    from rl.config import LoraSection, ModelSection
    from rl.models import load_model, lora_config

    model, _ = load_model(ModelSection(name=base, dtype="float32"), tokenizer)
    lora = get_peft_model(model, lora_config(LoraSection(r=4, alpha=8), model))
    return save_run(lora, tokenizer, folder / "run", "sudoku.yaml", [f"model.name={base}"])


def test_a_final_tokenizer_without_a_template_gets_the_one_training_picked_for_the_model(tmp_path):
    from rl.chat import load_template
    from rl.export.hf import save_merged
    from rl.models import tiny_vlm_tokenizer

    tokenizer = tiny_vlm_tokenizer()  # no chat template: training gave tiny-vlm Gemma 4's, not gemma3_tools
    run = lora_run(tmp_path, "tiny-vlm", tokenizer)
    merged = save_merged(run, tmp_path / "hf")
    assert merged.chat_template == load_template("trl:gemma4_v5")
    assert (tmp_path / "hf" / "chat_template.jinja").read_text() == load_template("trl:gemma4_v5")


def test_a_final_tokenizer_without_a_template_of_a_model_without_one_is_refused_naming_both(tmp_path):
    from rl.export import ExportError
    from rl.export.hf import save_merged

    base = tmp_path / "base"
    run = lora_run(tmp_path, str(base), tiny_base(base, "float32", template=False))
    with pytest.raises(ExportError, match=rf"its model '{re.escape(str(base))}' has no built-in one; set "
                                          r"model.chat_template in .*accepted: built in: \['gemma3_tools'\]; "
                                          r"or 'trl:<name>', or a path"):
        save_merged(run, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_hf_is_saved_in_the_base_models_dtype_with_the_adapter_merged_in_float32(tmp_path, dtype):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from rl.export.hf import save_merged

    base = tmp_path / "base"
    run = lora_run(tmp_path, str(base), tiny_base(base, dtype, template=True))
    merged = save_merged(run, tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == dtype
    weights = load_file(tmp_path / "hf" / "model.safetensors")
    assert {w.dtype for w in weights.values()} == {getattr(torch, dtype)}
    assert merged.dtype == dtype and merged.record()["dtype"] == dtype  # export.json names it
    # the base's weights, upcast, with the adapter folded in at float32, then cast once
    full = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    before = {k: v.clone() for k, v in full.state_dict().items()}
    expected = PeftModel.from_pretrained(full, run / "final").merge_and_unload().state_dict()
    assert all(torch.equal(weights[k], expected[k].to(weights[k].dtype)) for k in weights)
    assert any(not torch.equal(weights[k], before[k].to(weights[k].dtype)) for k in weights)  # the adapter counts
