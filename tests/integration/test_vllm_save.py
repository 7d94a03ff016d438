"""The checkpoint a vLLM engine starts from (`save_for_vllm`) holds every weight of a LoRA-wrapped model.

On a GPU, each LoRA layer's merged weight is a fresh tensor that is freed once copied to the CPU, and
the caching allocator hands its address to the next one. Tied weights were once found by address, so
merged weights at a reused address were dropped as "tied copies": the engine started with uninitialised
layers (seen on an H200: the SFT checkpoint's first GRPO batch and step-0 held-out eval made no tool
calls at all, until the first weight push). Here every merged tensor lands in one buffer, as the
allocator places them there.
"""

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

import rl.vllm_weights as vb
from rl.models import tiny_model


def test_every_merged_lora_weight_is_saved_even_at_a_reused_address(tmp_path, tiny_tokenizer, monkeypatch):
    base = tiny_model(len(tiny_tokenizer), seed=5)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():  # make the adapters matter: B starts at zero
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    merged_of = vb._merged
    freed = torch.empty(max(p.numel() for p in base.parameters()))  # the block each merged weight gets

    def at_reused_address(layer, pname):
        merge = merged_of(layer, pname)

        def merged_into_the_freed_block():
            tensor = merge()
            return freed[:tensor.numel()].view_as(tensor).copy_(tensor)

        return merged_into_the_freed_block

    monkeypatch.setattr(vb, "_merged", at_reused_address)
    saved = load_file(str(vb.save_for_vllm(model, tiny_tokenizer, tmp_path) / "model.safetensors"))
    reference = model.merge_and_unload().state_dict()
    tied = {"lm_head.weight"} if base.config.tie_word_embeddings else set()
    assert set(saved) == set(reference) - tied
    for name, tensor in reference.items():
        if name not in tied:
            assert torch.equal(saved[name], tensor), name
    assert sum(".q_proj." in n for n in saved) == base.config.num_hidden_layers
