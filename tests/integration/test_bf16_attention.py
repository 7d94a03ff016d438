"""`model.attn_implementation: sdpa_bf16`: a float32 model whose attention runs in bfloat16 (rl/attention.py)."""

import json

import pytest
import torch

from rl.config import ModelSection, load_config
from rl.models import load_model


def _pair(monkeypatch):
    """The tiny model twice with the same float32 weights, plain SDPA and sdpa_bf16, its sliding window (8) shorter
    than the batch; and the dtypes SDPA was handed, in order."""
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(query, key, value, *args, **kwargs):
        seen.append((query.dtype, key.dtype, value.dtype))
        return sdpa(query, key, value, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    models = {}
    for impl in ("sdpa", "sdpa_bf16"):
        model, _ = load_model(ModelSection(name="tiny", dtype="float32", attn_implementation=impl))
        model.config.sliding_window = 8  # both layer kinds then mask: the window, and the padding
        models[impl] = model
    models["sdpa_bf16"].load_state_dict(models["sdpa"].state_dict())
    return models, seen


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


def test_a_grpo_run_trains_with_bfloat16_attention(tmp_path):
    cfg = load_config(None, [
        f"output_dir={tmp_path}", "name=bf16-attention", "model.name=tiny", "model.dtype=float32",
        "model.attn_implementation=sdpa_bf16", "model.tool_format=first_digit", "lora.enabled=true",
        "env.name=tests.integration.pick_env:PickEnv", "rollout.max_turns=3", "rollout.max_new_tokens=6",
        "rollout.max_completion_tokens=96", "grpo.num_generations=8", "grpo.per_device_train_batch_size=16",
        "grpo.max_steps=2", "grpo.save_steps=1000", "grpo.seed=3", "grpo.learning_rate=3e-3",
        "rewards.episode_return=1.0", "rewards.solved=0.0", "log.wandb=off",
    ])
    from rl.trainer import train

    logged = [json.loads(line) for line in (train(cfg) / "metrics.jsonl").open() if '"loss"' in line]
    assert [entry["step"] for entry in logged] == [1, 2]
    assert all(entry["grad_norm"] == pytest.approx(entry["grad_norm"]) for entry in logged)  # finite: NaN != NaN
    assert logged[0]["reward_std"] > 0 and logged[0]["grad_norm"] > 0  # a real update
