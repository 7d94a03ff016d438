"""`model.attn_implementation: sdpa_bf16`: a float32 model's attention on bfloat16 kernels.

Gemma 3's attention reaches PyTorch's SDPA with a mask (its sliding-window layers need one, and so does padding),
which rules out SDPA's flash kernel; in float32 the memory-efficient kernel then runs without tensor cores. In a
GRPO step's loss passes on one H100 that attention took 5.7 of 10.9 seconds (`rl/bench/baselines/README.md`,
"Where a loss pass goes"). `sdpa_bf16` hands SDPA the query, key and value (and a float mask) in bfloat16
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


def _half(x: torch.Tensor) -> torch.Tensor:
    """`x` in bfloat16; an additive float mask's large negatives kept finite (float32's lowest is -inf there)."""
    half = torch.bfloat16
    return x.clamp(min=torch.finfo(half).min).to(half) if x.is_floating_point() else x


def bf16_sdpa_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                                value: torch.Tensor, attention_mask: torch.Tensor | None,
                                **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention with a float32 model's query, key and value (a float mask and position bias
    too) in bfloat16, and the output back in float32. Other dtypes go to SDPA as they are."""
    if query.dtype != torch.float32:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if kwargs.get("position_bias") is not None:
        kwargs["position_bias"] = _half(kwargs["position_bias"])
    mask = _half(attention_mask) if attention_mask is not None else None
    out, weights = sdpa_attention_forward(module, _half(query), _half(key), _half(value), mask, **kwargs)
    return out.to(query.dtype), weights


AttentionInterface.register(BF16_SDPA, bf16_sdpa_attention_forward)
AttentionMaskInterface.register(BF16_SDPA, sdpa_mask)
