"""SDPA's kernels on one loss-pass attention call of Gemma 3 270M's shape, forward and backward.

    python launch/bench.py --suite attention_kernels
    python launch/bench.py --suite attention_kernels --set lengths=vary   # a new length every call

The model's attention as a GRPO loss pass hands it to SDPA: `batch` right-padded rows of up to `length` tokens (the
others' lengths drawn between half and all of it), `heads` query heads and their key/value heads repeated to match
(transformers does so when a mask is given), head size `head_dim`, in bfloat16 (`model.autocast: bfloat16` or
`sdpa_bf16`). Each layer kind is timed: a sliding-window layer (`window` tokens) and a full-attention layer, both
with the boolean mask transformers builds (causal, padding, window). Per kernel, the mean of `repeats` calls of
forward and backward (after one untimed call), and the largest difference of its output from the first kernel's on
the real rows (on a GPU by default the memory-efficient kernel, PyTorch's own pick with a mask). Kernels: SDPA's
memory-efficient, cuDNN (the one `model.attn_implementation: sdpa_cudnn` asks first) and math; as references that
compute something else, flash with `is_causal` and no mask (no window, no padding: a lower bound), and on a GPU flex
attention with the same mask as a block mask (compiled). `lengths=vary` gives every timed call a length of its own
(within 128 tokens of `length`): cuDNN then builds an execution plan per call, as it would in a GRPO step whose
micro-batches all have lengths of their own.
"""

from __future__ import annotations

import time

from rl.bench import suite


def _inputs(options: dict, length: int, device, window: int | None, seed: int = 0):
    import torch

    b, h, d = int(options.get("batch", 16)), int(options.get("heads", 4)), int(options.get("head_dim", 256))
    g = torch.Generator(device="cpu").manual_seed(seed)
    lengths = torch.randint(length // 2, length + 1, (b,), generator=g).to(device)
    lengths[0] = length
    q, k, v = (torch.randn(b, h, length, d, generator=g).to(device, torch.bfloat16) * 0.5 for _ in range(3))
    i = torch.arange(length, device=device)
    allowed = i[None, :] <= i[:, None]
    if window:
        allowed = allowed & ((i[:, None] - i[None, :]) < window)
    mask = (allowed[None] & (i[None, None, :] < lengths[:, None, None]))[:, None]
    real = (i[None, :] < lengths[:, None])[:, None, :, None]
    return q, k, v, mask, real, lengths


def _call(kernel: str, q, k, v, mask, real, lengths, window):
    """One forward and backward; the output, detached."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    if kernel == "flex":
        out = _flex(q, k, v, lengths, window)
    else:
        backend = {"efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                   "math": SDPBackend.MATH, "flash_causal_no_mask": SDPBackend.FLASH_ATTENTION}[kernel]
        with sdpa_kernel([backend]):
            causal = kernel == "flash_causal_no_mask"
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if causal else mask, is_causal=causal)
    (out * real).float().square().mean().backward()
    if q.is_cuda:
        torch.cuda.synchronize()
    return out.detach()


_FLEX = {}


def _flex(q, k, v, lengths, window):
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def allowed(b, h, qi, ki):
        ok = (ki <= qi) & (ki < lengths[b])
        return ok & ((qi - ki) < window) if window else ok

    if "fn" not in _FLEX:
        _FLEX["fn"] = torch.compile(flex_attention)
    key = (tuple(lengths.tolist()), q.shape[2], window)  # a block mask per mask, as a model builds one per pass
    if _FLEX.get("mask", (None,))[0] != key:
        _FLEX["mask"] = (key, create_block_mask(allowed, q.shape[0], None, q.shape[2], q.shape[2], device=q.device))
    return _FLEX["fn"](q, k, v, block_mask=_FLEX["mask"][1])


def _time(kernel: str, options: dict, length: int, window, repeats: int, vary: bool, device):
    """Mean seconds of a forward and backward, and the first call's output with its inputs."""
    first = _inputs(options, length, device, window)
    out = _call(kernel, *first, window)
    calls = [_inputs(options, length - 1 - n % 128, device, window, seed=n + 1) if vary else first
             for n in range(repeats)]
    started = time.perf_counter()
    for inputs in calls:
        _call(kernel, *inputs, window)
    return (time.perf_counter() - started) / repeats, out, first


@suite("attention_kernels", options=["batch", "length", "heads", "head_dim", "window", "repeats", "lengths",
                                     "kernels"])
def attention_kernels(options: dict) -> list[dict]:
    """SDPA's kernels on one loss-pass attention call of Gemma 3 270M's shape, forward and backward."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    lengths = str(options.get("lengths", "fixed"))
    if lengths not in ("fixed", "vary"):
        raise ValueError(f"lengths={lengths!r}: accepted: fixed, vary")
    known = ["efficient", "cudnn", "math", "flash_causal_no_mask", "flex"]
    default = known if device.type == "cuda" else ["math", "flash_causal_no_mask"]
    kernels = [k.strip() for k in str(options.get("kernels", ",".join(default))).split(",") if k.strip()]
    if not kernels or any(k not in known for k in kernels):
        raise ValueError(f"kernels={options.get('kernels')!r}: accepted: comma-separated, of {', '.join(known)}")
    length, repeats = int(options.get("length", 1600)), int(options.get("repeats", 10))
    if length < (130 if lengths == "vary" else 2):
        raise ValueError(f"length={length}: must be at least 2, and 130 with lengths=vary (its calls are up to 128 "
                         "tokens shorter)")
    rows = []
    for layer, window in (("sliding window", int(options.get("window", 512))), ("full attention", None)):
        reference = None
        for kernel in kernels:
            row = {"layer": layer, "kernel": kernel, "length": length, "lengths": lengths,
                   "batch": int(options.get("batch", 16))}
            try:
                seconds, out, (*_, real, _) = _time(kernel, options, length, window, repeats, lengths == "vary",
                                                    device)
            except RuntimeError as e:  # no such kernel for these inputs on this machine: said, not fatal
                rows.append({**row, "error": str(e).splitlines()[0][:300]})
                continue
            reference = out if reference is None else reference
            rows.append({**row, "ms": round(seconds * 1000, 3),
                         "max_diff_vs_first_kernel": float(((out - reference).abs() * real).max())})
        timed = [r for r in rows if r["layer"] == layer and "ms" in r]
        for r in timed:
            r["speedup_vs_first_kernel"] = timed[0]["ms"] / r["ms"]
    return rows
