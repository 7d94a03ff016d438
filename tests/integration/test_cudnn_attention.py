"""`model.attn_implementation: sdpa_cudnn`: `sdpa_bf16` whose loss passes run at a bucketed length with cuDNN's
fused attention asked first (rl/attention.py). Without a CUDA device SDPA falls back to its other kernels, so these
tests check what is ours: the padding, which calls get it, and that it changes nothing but the kernel's shape."""

import pytest
import torch

from rl.attention import CUDNN_BUCKET
from tests.integration.small_gemma import small_gemmas


def _models(monkeypatch):
    """A small Gemma 3 twice with the same float32 weights, sdpa_bf16 and sdpa_cudnn; what SDPA was handed (query
    and key shapes, whether gradients were on, the mask) and the kernel it was to try first."""
    shapes, orders = [], []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(query, key, value, *args, **kwargs):
        shapes.append((tuple(query.shape), tuple(key.shape), torch.is_grad_enabled(), kwargs.get("attn_mask")))
        orders.append(torch._C._get_sdp_priority_order()[0])  # the kernel SDPA tries first
        return sdpa(query, key, value, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    return small_gemmas("sdpa_bf16", "sdpa_cudnn"), shapes, orders


def _batch(length: int = 24):
    ids = torch.randint(3, 64, (4, length), generator=torch.Generator().manual_seed(0))
    attention = torch.ones_like(ids)
    attention[1, length - 8:] = 0  # right padding, as the completions have it
    attention[2, length - 4:] = 0
    attention[3, :5] = 0  # left padding, as TRL pads the prompts
    return ids, attention


def test_a_loss_pass_runs_at_the_bucketed_length_and_gives_the_same_logits_and_gradients(monkeypatch):
    from torch.nn.attention import SDPBackend

    models, shapes, orders = _models(monkeypatch)
    ids, attention = _batch()
    logits, grads = {}, {}
    for impl, model in models.items():
        shapes.clear(), orders.clear()
        out = model(input_ids=ids, attention_mask=attention, labels=ids.masked_fill(attention == 0, -100))
        out.loss.backward()
        logits[impl] = out.logits.detach()
        grads[impl] = torch.cat([p.grad.flatten() for p in model.parameters()])
        lengths = {(q[2], k[2]) for q, k, _, _ in shapes}
        assert lengths == ({(CUDNN_BUCKET, CUDNN_BUCKET)} if impl == "sdpa_cudnn" else {(24, 24)}), impl
        assert len(shapes) == 2  # one call per layer
        first = SDPBackend.CUDNN_ATTENTION if impl == "sdpa_cudnn" else torch._C._get_sdp_priority_order()[0]
        assert orders == [int(first)] * 2, impl
    for *_, mask in shapes:  # every added query row sees a key (on a GPU a row that sees none can be NaN)
        sees = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min
        assert sees[..., 24:, :].any(dim=-1).all()
    assert logits["sdpa_cudnn"].shape == logits["sdpa_bf16"].shape
    real = attention.bool()
    gap = (logits["sdpa_cudnn"][real] - logits["sdpa_bf16"][real]).abs().max().item()
    assert gap < 1e-5, gap  # masked keys add exact zeros: the same attention, at another shape
    assert torch.isfinite(grads["sdpa_cudnn"]).all()
    rel = ((grads["sdpa_cudnn"] - grads["sdpa_bf16"]).norm() / grads["sdpa_bf16"].norm()).item()
    assert rel < 1e-4, rel


def test_a_length_already_on_the_bucket_is_not_padded(monkeypatch):
    models, shapes, _ = _models(monkeypatch)
    ids, attention = _batch(CUDNN_BUCKET)
    models["sdpa_cudnn"](input_ids=ids, attention_mask=attention).logits.sum().backward()
    assert {(q[2], k[2]) for q, k, _, _ in shapes} == {(CUDNN_BUCKET, CUDNN_BUCKET)}


@pytest.mark.parametrize("batch_rows", [1, 3])
def test_passes_without_gradients_and_generation_keep_their_own_lengths(monkeypatch, batch_rows):
    models, shapes, orders = _models(monkeypatch)
    ids, attention = _batch()
    ids, attention = ids[:batch_rows], attention[:batch_rows]
    model = models["sdpa_cudnn"]
    with torch.no_grad():
        scored = model(input_ids=ids, attention_mask=attention).logits
    assert {(q[2], k[2], grad) for q, k, grad, _ in shapes} == {(24, 24, False)}
    with torch.no_grad():
        expected = models["sdpa_bf16"](input_ids=ids, attention_mask=attention).logits
    assert torch.equal(scored, expected)  # not padded: the very same call as sdpa_bf16
    shapes.clear()
    model.generate(input_ids=ids, attention_mask=attention, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert shapes and all(q[2] <= 24 and not grad for q, _, grad, _ in shapes)  # the prompt, then one token a step
    assert set(orders) == {torch._C._get_sdp_priority_order()[0]}  # PyTorch's own order: no cuDNN plan per step
