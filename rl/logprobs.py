"""The GRPO loss passes project only the model's own tokens through the LM head.

A multi-turn episode's completion is mostly text the model did not write: tool results,
which `env_mask` keeps out of the loss. TRL 1.16's fused LM head still scores every
completion position (on a CPU every position, prompt included: it projects only labelled
positions on Triton devices, so that tile shapes stay fixed for compilers elsewhere) and
masks the tool results afterwards. With Gemma's 262k-token vocabulary the head costs more
per position than the whole transformer below it. Here the label of every position the
loss never reads (prompt, padding, `env_mask` 0) is -100, so the head projects only the
model's tokens. Their log-probabilities and entropies are those TRL computes; the other
positions get 0, which TRL multiplies by a zero mask.

Every pass over a batch (old and reference log-probabilities at generation time, the loss
pass later) uses the same mask, the rollout's `env_mask`: the importance ratio then never
compares a scored position with an unscored one.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

SCORE_MASK = "score_mask"  # the training batch's column: (B, T) bool, True on the model's tokens


def forward_logprobs(model, prompt: list[int], ids: list[int], temperature: float = 1.0) -> list[float]:
    """What the trainer computes for `ids` sampled after `prompt`, in one forward pass: log_softmax(logits / T) of
    the taken tokens (the quantity a generation backend's logprobs are checked against)."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1:-1] / temperature
    return torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(ids)[:, None]).squeeze(-1).tolist()


def pad_masks(masks: list[list[int]], width: int, device: Any = None) -> torch.Tensor:
    """Per-row 0/1 lists -> (rows, width) bool, right-padded with False (padding is never scored)."""
    out = torch.zeros(len(masks), width, dtype=torch.bool)
    for i, mask in enumerate(masks):
        n = min(len(mask), width)
        out[i, :n] = torch.tensor(mask[:n], dtype=torch.bool)
    return out.to(device) if device is not None else out


def score_tokens(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int,
                 score_mask: torch.Tensor, batch_size: int | None = None, compute_entropy: bool = False,
                 autocast=nullcontext) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probabilities (and entropies) of the last `logits_to_keep` tokens, as TRL's
    `_get_per_token_logps_and_entropies` returns them for a text-only batch, but projected through
    the LM head only where `score_mask` (rows, logits_to_keep) is True; 0 elsewhere. The model must
    carry TRL's fused head (`add_fused_lm_head`; GRPOTrainer adds it).

    Completions are right-padded to the longest of the whole generation batch; each chunk of
    `batch_size` rows runs only up to its own longest (the cut columns are padding, which no
    earlier token attends to), so short episodes do not pay for the batch's longest."""
    from rl.trl_hooks import compact_lm_head  # TRL's private hooks live there; it imports this module

    if score_mask.shape != (input_ids.size(0), logits_to_keep):
        raise ValueError(f"score_mask has shape {tuple(score_mask.shape)}, expected "
                         f"{(input_ids.size(0), logits_to_keep)} (rows, completion tokens)")
    step = batch_size or input_ids.size(0)
    logps, entropies = [], []
    for start in range(0, input_ids.size(0), step):
        rows = slice(start, start + step)
        attended = attention_mask[rows].any(dim=0).nonzero()
        cut = min(input_ids.size(1) - 1 - int(attended.max()) if len(attended) else 0, logits_to_keep - 1)
        end = input_ids.size(1) - cut
        keep = logits_to_keep - cut
        ids, attention = input_ids[rows, :end], attention_mask[rows, :end]
        labels = ids.masked_fill(attention == 0, -100)
        labels[:, :-keep] = -100
        labels[:, -keep:] = labels[:, -keep:].masked_fill(~score_mask[rows, :keep].to(ids.device), -100)
        with autocast(), compact_lm_head(ids.device):
            out = model(input_ids=ids, attention_mask=attention, labels=labels, fused_lm_head=True)
        logps.append(torch.nn.functional.pad(out.log_probs[:, -keep:], (0, cut)))
        if compute_entropy:
            entropies.append(torch.nn.functional.pad(out.entropy[:, -keep:], (0, cut)))
    return torch.cat(logps), torch.cat(entropies) if compute_entropy else None
