"""`model.autocast: bfloat16`: float32 weights and optimizer state, matmuls in bfloat16 (mixed precision)."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from rl.config import load_config
from tests.integration.pick_env import two_step_run


def _recording_linear(monkeypatch) -> set:
    """(output dtype, grad enabled) of every `F.linear` call from here on: the model's matmuls, LoRA's included."""
    seen = set()
    linear = torch.nn.functional.linear

    def recording(*args, **kwargs):
        out = linear(*args, **kwargs)
        seen.add((out.dtype, torch.is_grad_enabled()))
        return out

    monkeypatch.setattr(torch.nn.functional, "linear", recording)
    return seen


@pytest.mark.parametrize("autocast, matmuls", [("bfloat16", torch.bfloat16), ("none", torch.float32)])
def test_a_grpo_run_trains_float32_weights_with_bfloat16_matmuls(tmp_path, monkeypatch, autocast, matmuls):
    seen = _recording_linear(monkeypatch)
    cfg = load_config(None, two_step_run(tmp_path, f"autocast-{autocast}", f"model.autocast={autocast}"))
    from safetensors.torch import load_file

    from rl.trainer import train

    out = train(cfg)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").open() if '"loss"' in line]
    assert [entry["step"] for entry in logged] == [1, 2]
    assert all(math.isfinite(entry["grad_norm"]) for entry in logged)
    assert logged[0]["reward_std"] > 0 and logged[0]["grad_norm"] > 0  # a real update
    # generation (no grad) and the loss passes (grad) alike, and no matmul outside the autocast
    assert seen == {(matmuls, False), (matmuls, True)}
    adapter = load_file(out / "final" / "adapter_model.safetensors")
    assert adapter and {t.dtype for t in adapter.values()} == {torch.float32}  # the trained weights stay float32


def test_the_hf_backend_generates_under_the_autocast(monkeypatch):
    from rl.generation import SamplingParams, TransformersBackend
    from rl.models import load_model

    model, tokenizer = load_model(load_config(None, ["model.name=tiny", "model.dtype=float32"]).model)
    prompt = tokenizer("hello there")["input_ids"]
    seen = _recording_linear(monkeypatch)
    outputs = {}
    for autocast in ("none", "bfloat16"):
        seen.clear()
        backend = TransformersBackend(model, tokenizer, autocast=autocast)
        [outputs[autocast]] = backend.generate([prompt], SamplingParams(max_new_tokens=4, temperature=0.0))
        assert {dtype for dtype, _ in seen} == {torch.bfloat16 if autocast == "bfloat16" else torch.float32}
    assert next(model.parameters()).dtype == torch.float32  # the autocast casts per matmul, never the weights
    assert all(math.isfinite(x) for x in outputs["bfloat16"].logprobs) and outputs["bfloat16"].token_ids


def test_sft_trains_under_the_autocast_too(tmp_path, monkeypatch):
    from rl.sft import train_sft

    seen = _recording_linear(monkeypatch)
    out = train_sft(load_config(None, [
        f"output_dir={tmp_path}", "name=sft", "model.name=tiny", "model.dtype=float32", "model.autocast=bfloat16",
        "env.name=sudoku", "sft.num_episodes=2", "sft.max_steps=1", "sft.save_steps=1",
        "sft.per_device_train_batch_size=2", "log.wandb=off"]))
    assert (torch.bfloat16, True) in seen and (torch.float32, True) not in seen
    args = torch.load(out / "checkpoint-1" / "training_args.bin", weights_only=False)
    assert args.bf16 is True
    from safetensors.torch import load_file

    adapter = load_file(out / "checkpoint-1" / "adapter_model.safetensors")
    assert adapter and {t.dtype for t in adapter.values()} == {torch.float32}


@pytest.mark.parametrize("variable, launcher", [("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"),
                                                ("ACCELERATE_USE_FSDP", "FSDP")])
def test_a_sharded_run_refuses_the_autocast(tmp_path, monkeypatch, variable, launcher):
    """DeepSpeed would cast every weight to bf16 and drop the autocast; FSDP2's policy gathers weights in bf16."""
    from rl.config import ConfigError
    from rl.trainer import grpo_args

    monkeypatch.setenv(variable, "true")  # as `accelerate launch` with such a config sets it
    float32 = SimpleNamespace(dtype=torch.float32)
    cfg = load_config(None, [f"output_dir={tmp_path}", "model.autocast=bfloat16", "log.wandb=off"])
    try:
        with pytest.raises(ConfigError, match=f"model.autocast='bfloat16' is not supported under {launcher}.*"
                                              r"\(accepted there: none"):
            grpo_args(cfg, float32, [1.0])
        cfg.model.autocast = "none"
        assert grpo_args(cfg, float32, [1.0]).bf16 is False
    finally:  # the DeepSpeed arguments leave a process-wide config behind
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()


def test_autocast_weights_are_float32_where_auto_would_be_bfloat16(monkeypatch):
    from rl.config import ConfigError, ModelSection
    from rl.models import weights_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU with bfloat16 products
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert weights_dtype(ModelSection(dtype="auto")) == torch.bfloat16
    assert weights_dtype(ModelSection(dtype="auto", autocast="bfloat16")) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a T4
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")
    with pytest.raises(ConfigError, match=r"model.autocast='bfloat16': this GPU \(Tesla T4\) has no bfloat16 products"):
        weights_dtype(ModelSection(autocast="bfloat16"))


def test_eval_plays_the_hf_backend_under_the_autocast(monkeypatch):
    from rl.evaluation import evaluate

    seen = _recording_linear(monkeypatch)
    for autocast, matmuls in (("bfloat16", torch.bfloat16), ("none", torch.float32)):
        seen.clear()
        result = evaluate(load_config(None, ["model.name=tiny", f"model.autocast={autocast}", "eval.episodes=2",
                                             "eval.batch_size=2", "rollout.max_turns=2", "rollout.max_new_tokens=4"]))
        assert result["episodes"] == 2 and {dtype for dtype, _ in seen} == {matmuls}, autocast


def test_the_sync_check_scores_the_trainers_weights_outside_the_autocast():
    """accelerate wraps a mixed-precision model's forward in its autocast; the check of a weight push compares the
    float32 weights with the float32 engine's, or the products' rounding hides whether the push arrived."""
    from types import MethodType

    from accelerate.utils import convert_outputs_to_fp32

    from rl.models import load_model
    from rl.vllm_weights import sync_gap

    model, _ = load_model(load_config(None, ["model.name=tiny", "model.dtype=float32"]).model)
    ids = list(range(3, 40))

    def logprobs() -> list[float]:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
        return torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1).tolist()

    exact = logprobs()
    engine = SimpleNamespace(prompt_logprobs=lambda _: exact)  # an engine that holds the trainer's weights
    # as accelerate.Accelerator.prepare_model does under mixed_precision="bf16"
    model._original_forward = model.forward
    model.forward = MethodType(convert_outputs_to_fp32(torch.autocast("cpu", torch.bfloat16)(model.forward.__func__)),
                               model)
    rounded = logprobs()
    assert max(abs(a - b) for a, b in zip(rounded, exact)) > 1e-3  # the wrapped forward computes in bf16
    assert sync_gap(engine, model, ids)["max"] < 1e-6
