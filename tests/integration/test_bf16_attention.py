"""`model.attn_implementation: sdpa_bf16`: a float32 model whose attention runs in bfloat16 (rl/attention.py)."""

import json
import math

import pytest
import torch

from rl.config import ModelSection, load_config
from rl.models import load_model
from tests.integration.pick_env import two_step_run
from tests.integration.small_gemma import small_gemmas


def _pair(monkeypatch):
    """A small Gemma 3 twice with the same float32 weights (`small_gemmas`), plain SDPA and sdpa_bf16; and the
    dtypes SDPA was handed, in order."""
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(query, key, value, *args, **kwargs):
        seen.append((query.dtype, key.dtype, value.dtype))
        return sdpa(query, key, value, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    return small_gemmas("sdpa", "sdpa_bf16"), seen


def _batch(vocab: int):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (3, 24), generator=generator)
    attention = torch.ones_like(ids)
    attention[1, 16:] = 0  # right padding, as the loss passes have it
    attention[2, 20:] = 0
    return ids, attention


def test_attention_runs_in_bfloat16_and_the_rest_stays_float32(monkeypatch):
    models, seen = _pair(monkeypatch)
    ids, attention = _batch(models["sdpa"].config.vocab_size)
    logits = {}
    for impl, model in models.items():
        seen.clear()
        logits[impl] = model(input_ids=ids, attention_mask=attention).logits
        dtypes = set(seen)
        assert len(seen) == model.config.num_hidden_layers
        assert dtypes == ({(torch.bfloat16,) * 3} if impl == "sdpa_bf16" else {(torch.float32,) * 3}), impl
    assert logits["sdpa_bf16"].dtype == torch.float32
    assert models["sdpa_bf16"].model.layers[0].self_attn.q_proj.weight.dtype == torch.float32
    assert [layer.self_attn.is_sliding for layer in models["sdpa"].model.layers] == [True, False]
    real = attention.bool()
    plain, half = logits["sdpa"][real].log_softmax(-1), logits["sdpa_bf16"][real].log_softmax(-1)
    gap = (plain - half).abs().max().item()
    assert 0 < gap < 2e-2, gap  # rounded, not another computation


def test_gradients_flow_through_the_bfloat16_attention_in_float32(monkeypatch):
    models, _ = _pair(monkeypatch)
    ids, attention = _batch(models["sdpa"].config.vocab_size)
    grads = {}
    for impl, model in models.items():
        out = model(input_ids=ids, attention_mask=attention, labels=ids.masked_fill(attention == 0, -100))
        out.loss.backward()
        grads[impl] = model.model.layers[0].self_attn.q_proj.weight.grad
    assert grads["sdpa_bf16"].dtype == torch.float32 and torch.isfinite(grads["sdpa_bf16"]).all()
    rel = ((grads["sdpa_bf16"] - grads["sdpa"]).norm() / grads["sdpa"].norm()).item()
    assert 0 < rel < 5e-2, rel


def test_a_grpo_run_trains_with_bfloat16_attention(tmp_path, monkeypatch):
    seen = set()
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(query, key, value, *args, **kwargs):
        seen.add((query.dtype, torch.is_grad_enabled()))
        return sdpa(query, key, value, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    cfg = load_config(None, two_step_run(tmp_path, "bf16-attention", "model.attn_implementation=sdpa_bf16"))
    from rl.trainer import train

    logged = [json.loads(line) for line in (train(cfg) / "metrics.jsonl").open() if '"loss"' in line]
    assert [entry["step"] for entry in logged] == [1, 2]
    assert all(math.isfinite(entry["grad_norm"]) for entry in logged)
    assert logged[0]["reward_std"] > 0 and logged[0]["grad_norm"] > 0  # a real update
    assert seen == {(torch.bfloat16, False), (torch.bfloat16, True)}  # generation and the loss passes alike


def test_a_float_mask_stays_finite_and_other_dtypes_pass_through():
    from rl.attention import bf16_sdpa_attention_forward

    module = torch.nn.Module()
    module.is_causal = False
    query, key, value = (torch.randn(1, 2, 5, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    mask = torch.zeros(1, 1, 5, 5)
    mask[..., 3:] = torch.finfo(torch.float32).min  # float32's lowest overflows bfloat16 to -inf
    out, _ = bf16_sdpa_attention_forward(module, query, key, value, mask)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    kept = torch.nn.functional.scaled_dot_product_attention(query, key[..., :3, :], value[..., :3, :])
    assert (out - kept.transpose(1, 2)).abs().max() < 5e-2  # the masked keys ignored, as in float32
    half = [t.to(torch.float16) for t in (query, key, value)]
    same, _ = bf16_sdpa_attention_forward(module, *half, None)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    assert same.dtype == torch.float16  # not float32: left as it is, never rounded to bfloat16
    assert torch.equal(same, sdpa_attention_forward(module, *half, None)[0])


def test_an_unknown_attention_implementation_is_refused_before_the_model_loads():
    from rl.config import ConfigError

    with pytest.raises(ConfigError, match=r"model.attn_implementation='sdpa_bf61': unknown attention "
                                          r"implementation \(accepted: sdpa, sdpa_bf16, sdpa_cudnn, eager, "):
        load_model(ModelSection(name="tiny", attn_implementation="sdpa_bf61"))
