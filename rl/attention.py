"""`model.attn_implementation: sdpa_bf16` and `sdpa_cudnn`: a float32 model's attention on bfloat16 kernels.

Gemma 3's attention reaches PyTorch's SDPA with a mask (its sliding-window layers need one, and so does padding),
which rules out SDPA's flash kernel; in float32 the memory-efficient kernel then runs without tensor cores. In a
GRPO step's loss passes on one H100 that attention took 5.7 of 10.9 seconds (`rl/bench/baselines/README.md`,
"Where a loss pass goes"). `sdpa_bf16` hands SDPA the query, key and value (and a float mask) in bfloat16
and returns the output in the model's dtype: everything else, the weights, their gradients and the optimizer, stays
as it was. Its cost is precision: the attention's inputs keep 8 bits of mantissa, so the trainer's logprobs move
further from a float32 engine's (the GRPO step's sync check reports that gap). Registered with transformers'
attention and mask interfaces when this module is imported (`rl.models` does).

`sdpa_cudnn` is `sdpa_bf16` (the inputs of a float32 model's attention in bfloat16; under `model.autocast` they
are already) with cuDNN's fused attention asked first in the loss passes. With a mask PyTorch's own order picks the
memory-efficient kernel, whose backward pass took 45% of the device time of a GRPO step's loss passes under mixed
precision on one H100; at one fixed shape cuDNN ran that attention's forward and backward 3.6x faster there
(`rl/bench/baselines/README.md`, "cuDNN attention"). cuDNN builds an execution plan for every new shape (tens to
hundreds of milliseconds, then cached), so:
- only passes with gradients over whole sequences (query length = key length > 1, with a mask) go to it, their
  length padded up to a multiple of `CUDNN_BUCKET` so that a run meets a few shapes, not one per micro-batch. The
  added keys are masked; the added queries see the first key only (a row that sees none would be NaN and poison
  the backward pass) and are cut off the output;
- generation (each decoding step has a new key length) and passes without gradients run as `sdpa_bf16` does.
Where cuDNN cannot take a call (no such GPU, a shape it lacks) SDPA falls back to its other kernels, in PyTorch's
order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

BF16_SDPA = "sdpa_bf16"
CUDNN_SDPA = "sdpa_cudnn"
CUDNN_BUCKET = 128  # a loss pass's length is padded up to a multiple of this for cuDNN (one plan per shape)
CUDNN_FIRST = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


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


def cudnn_sdpa_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                                 value: torch.Tensor, attention_mask: torch.Tensor | None,
                                 **kwargs) -> tuple[torch.Tensor, None]:
    """`bf16_sdpa_attention_forward`; in a loss pass, at a length padded to `CUDNN_BUCKET` with cuDNN's fused
    attention first in SDPA's choice of kernel."""
    n = query.shape[2]
    if (not torch.is_grad_enabled() or attention_mask is None or n < 2 or key.shape[2] != n
            or attention_mask.shape[-2:] != (n, n) or kwargs.get("position_bias") is not None):
        return bf16_sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    extra = -n % CUDNN_BUCKET
    if extra:
        query, key, value = (F.pad(t, (0, 0, 0, extra)) for t in (query, key, value))
        floor = torch.finfo(attention_mask.dtype).min if attention_mask.is_floating_point() else False
        attention_mask = F.pad(attention_mask, (0, extra, 0, extra), value=floor)
        attention_mask[..., n:, 0] = 0 if attention_mask.is_floating_point() else True
    with sdpa_kernel(CUDNN_FIRST, set_priority=True):
        out, weights = bf16_sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return out[:, :n], weights  # (batch, length, heads, head size)


AttentionInterface.register(BF16_SDPA, bf16_sdpa_attention_forward)
AttentionMaskInterface.register(BF16_SDPA, sdpa_mask)
AttentionInterface.register(CUDNN_SDPA, cudnn_sdpa_attention_forward)
AttentionMaskInterface.register(CUDNN_SDPA, sdpa_mask)
