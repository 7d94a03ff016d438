"""A small Gemma 3 for attention tests: one sliding-window layer (window 8, shorter than the test batches) and one
full-attention layer, so both masks are used."""

import torch


def small_gemmas(*impls: str) -> dict:
    """One such model per attention implementation, all with the same seeded float32 weights."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    models = {}
    for impl in impls:
        config = Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=8,
                                  layer_types=["sliding_attention", "full_attention"], pad_token_id=0)
        torch.manual_seed(0)
        models[impl] = Gemma3ForCausalLM(config)
        models[impl].set_attn_implementation(impl)
    return models
