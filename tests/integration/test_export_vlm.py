"""launch/export.py on a tiny vision-language run (Gemma 4: text model, vision tower, projector): hf/ is the
whole merged VLM, the GGUF its text model only, which llama.cpp continues as transformers does (f16: the
first 24 tokens); the built-in tiny-vlm, which llama.cpp's converter cannot read, is refused, saying why.

The run's model is `tiny-vlm` made convertible as export_run.py makes `tiny` (see there): a sentencepiece
tokenizer (llama.cpp reads a Gemma 4 tokenizer.json only as sentencepiece-style BPE) and a full-attention
head size unlike the sliding layers' (as in released Gemma 4s; transformers writes no per_layer_config for
an equal one, and the converter then finds none). Its base is taught a driving call for a few steps; the
run's LoRA adapter (the language model only, as runs train it) has small random weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

from tests.integration.export_run import hf_greedy, llama_greedy, run_export, save_run, sentencepiece_model, train_on

TOKENS = 24
CORPUS = [
    "declaration:lane_change{description:<|\"|>Steer into the next lane.<|\"|>,parameters:{properties:{}}}",
    '<|tool_call>call:lane_change{direction:<|"|>left<|"|>}<tool_call|><|tool_response>',
    "response:observe{value:<|\"|>3 pedestrian(s) in your lane ahead. Speed: 60.0 km/h.<|\"|>}<tool_response|>",
    "- pedestrian at 24.0 m (lane_0). No nearby actors detected. COLLISION! The scenario is over (passed).",
]
SCENES = {  # what the car sees -> the call the base is taught to make
    "3 pedestrian(s) in your lane ahead. Speed: 60.0 km/h.": 'lane_change{direction:<|"|>left<|"|>}',
    "No nearby actors detected. Speed: 30.0 km/h.": "observe{}",
    "- pedestrian at 24.0 m (lane_0). Speed: 60.0 km/h.": 'lane_change{direction:<|"|>right<|"|>}',
    "COLLISION ahead! 2 pedestrian(s) at 8.0 m.": "emergency_stop{}",
}


def driving_turn(tokenizer, scene: str) -> str:
    """A first driving prompt as a carla run renders it (the env's tools, thinking off)."""
    import envs

    return tokenizer.apply_chat_template([{"role": "user", "content": scene}],
                                         tools=envs.resolve("carla").tool_schemas(), tokenize=False,
                                         add_generation_prompt=True, enable_thinking=False)


def teach_driving(model, tokenizer, steps: int = 100) -> None:
    texts = [driving_turn(tokenizer, scene) + f"<|tool_call>call:{call}<tool_call|>" for scene, call in SCENES.items()]
    train_on(model, tokenizer, texts, steps)


def make_vlm_run(folder: Path) -> Path:
    """`folder/base` (the VLM) and `folder/run` (carla's config.yaml, final/ with the adapter); returns the run."""
    from peft import get_peft_model
    from transformers import AutoTokenizer

    from rl.chat import load_template
    from rl.config import LoraSection
    from rl.models import GEMMA4_MEDIA_TOKENS, GEMMA4_SPECIAL_TOKENS, lora_config, tiny_vlm

    base, run = folder / "base", folder / "run"
    base.mkdir(parents=True)
    sentencepiece_model(base / "tokenizer.model", CORPUS, GEMMA4_SPECIAL_TOKENS + list(GEMMA4_MEDIA_TOKENS.values()))
    (base / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GemmaTokenizer",
                                                            "extra_special_tokens": GEMMA4_MEDIA_TOKENS}))
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = load_template("trl:gemma4_v5")
    model = tiny_vlm(tokenizer, global_head_dim=64)
    teach_driving(model, tokenizer)
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    model.name_or_path = str(base)
    lora = get_peft_model(model, lora_config(LoraSection(r=4, alpha=8), model))
    return save_run(lora, tokenizer, run, "carla.yaml", [f"model.name={base}"])


def test_a_vlm_run_exports_whole_to_hf_and_its_text_model_to_a_gguf_llama_cpp_continues_alike(tmp_path):
    import torch
    from gguf import GGUFReader
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    run, out = make_vlm_run(tmp_path), tmp_path / "export"
    record = run_export(run, out, timeout=600)
    assert record["vision"] and record["gguf"] == {"f16": "model-f16.gguf", "q8_0": "model-q8_0.gguf"}
    assert any("the GGUF files hold its text model only" in note for note in record["notes"])
    # hf/ is the whole VLM: every weight of base + adapter merged, the vision tower and projector included
    exported = AutoModelForImageTextToText.from_pretrained(out / "hf").eval()
    assert type(exported).__name__ == "Gemma4ForConditionalGeneration"
    base = AutoModelForImageTextToText.from_pretrained(tmp_path / "base")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    merged = PeftModel.from_pretrained(base, run / "final").merge_and_unload().state_dict()
    weights = exported.state_dict()
    assert weights.keys() == merged.keys() and all(torch.equal(weights[k], merged[k]) for k in merged)
    vision = [k for k in merged if ".vision_tower." in k or ".embed_vision." in k]
    assert vision and all(torch.equal(merged[k], before[k]) for k in vision)  # the adapter left them alone
    assert any(not torch.equal(merged[k], before[k]) for k in merged if ".language_model." in k)
    # the GGUF is the text model: no vision tensor, and no projector file beside it
    reader = GGUFReader(str(out / "model-f16.gguf"))
    assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == "gemma4"
    names = [t.name for t in reader.tensors]
    assert "token_embd.weight" in names and not [n for n in names if n.startswith(("v.", "mm."))]
    assert sorted(p.name for p in out.glob("*.gguf")) == ["model-f16.gguf", "model-q8_0.gguf"]
    # llama.cpp continues a driving prompt with transformers' greedy tokens of the text model
    tokenizer = AutoTokenizer.from_pretrained(out / "hf")
    scene, call = next(iter(SCENES.items()))
    text = driving_turn(tokenizer, scene)
    ids = tokenizer.encode(text, add_special_tokens=False)
    expected = hf_greedy(exported, ids, TOKENS)
    f16, llm = llama_greedy(out / "model-f16.gguf", ids, TOKENS)
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
    assert f16 == expected, (tokenizer.decode(f16), tokenizer.decode(expected))
    assert tokenizer.decode(expected).startswith(f"<|tool_call>call:{call}<tool_call|>")  # the taught call


def test_the_built_in_tiny_vlm_is_refused_a_gguf_with_what_the_converter_needs(tmp_path):
    from rl.export import ExportError
    from rl.export.gguf import write_gguf
    from rl.models import tiny_vlm, tiny_vlm_tokenizer

    tokenizer = tiny_vlm_tokenizer()
    tiny_vlm(tokenizer).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ExportError, match=r"cannot convert this Gemma 4: its full-attention layers keep head_dim=32"
                                          r".*accepted: a full-attention head_dim unlike head_dim.*"
                                          r"accepted: a sentencepiece-style BPE with byte_fallback"):
        write_gguf(tmp_path, tmp_path, ["f16", "q8_0"])
    assert not list(tmp_path.glob("*.gguf"))
