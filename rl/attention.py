"""`model.attn_implementation: sdpa_bf16`: a float32 model's attention on bfloat16 kernels.

Gemma 3's attention reaches PyTorch's SDPA with a mask (its sliding-window layers need one, and so does padding),
which rules out SDPA's flash kernel; in float32 the memory-efficient kernel then runs without tensor cores. In a
GRPO step's loss passes on one H100 that attention took 5.7 of 10.9 seconds (`rl/bench/baselines/README.md`,
"Where a loss pass goes"). `sdpa_bf16` hands SDPA the query, key and value in bfloat16 (the mask as SDPA takes it)
and returns the output in the model's dtype: everything else, the weights, their gradients and the optimizer, stays
as it was. Its cost is precision: the attention's inputs keep 8 bits of mantissa, so the trainer's logprobs move
further from a float32 engine's (the GRPO step's sync check reports that gap). Registered with transformers'
attention and mask interfaces when this module is imported (`rl.models` does).
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

BF16_SDPA = "sdpa_bf16"


def bf16_sdpa_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                                value: torch.Tensor, attention_mask: torch.Tensor | None,
                                **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention with query, key and value (and a float mask) in bfloat16; the output in the
    query's dtype."""
    dtype, half = query.dtype, torch.bfloat16
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.to(half)
    out, weights = sdpa_attention_forward(module, query.to(half), key.to(half), value.to(half), attention_mask,
                                          **kwargs)
    return out.to(dtype), weights


AttentionInterface.register(BF16_SDPA, bf16_sdpa_attention_forward)
AttentionMaskInterface.register(BF16_SDPA, sdpa_mask)
