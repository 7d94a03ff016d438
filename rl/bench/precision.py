"""Matmul precision: full float32 against TF32 (`model.tf32`, float32 weights), bfloat16, float32 weights with
TF32 matmuls and bfloat16 attention (`model.attn_implementation: sdpa_bf16`, rl/attention.py), and float32 weights
under bfloat16 mixed precision (`model.autocast: bfloat16`: every product in bf16 under `torch.autocast`).

    python launch/bench.py --suite precision --set rows=256 --set context=1000
    python launch/bench.py --suite precision --set arch=path/to/config.json   # random weights, no download

Per mode: greedy `generate` time for `rows` prompts of `context` random tokens (exactly `new_tokens`
each), one forward+backward over `train_rows` x `train_len` tokens (a GRPO micro-batch), and how
far the mode's per-token log-probabilities of that batch move from full float32 (the policy's
numbers in the loss). The full-float32 row is the baseline, measured in the same run.
"""

from __future__ import annotations

import functools

from rl.bench import suite, timed

# mode: (weights' dtype, float32 matmul precision, attention implementation, bfloat16 autocast)
MODES = {"float32": ("float32", "highest", "sdpa", False), "tf32": ("float32", "high", "sdpa", False),
         "bfloat16": ("bfloat16", "highest", "sdpa", False), "bf16_attention": ("float32", "high", "sdpa_bf16", False),
         "autocast": ("float32", "high", "sdpa", True)}


def _model(options: dict, dtype, attn_implementation: str = "sdpa"):
    import torch

    from rl.config import ModelSection
    from rl.models import load_model

    if options.get("arch"):  # an architecture's config.json, with seeded random weights
        from transformers import AutoConfig, AutoModelForCausalLM

        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(options["arch"]), dtype=dtype,
                                                attn_implementation=attn_implementation)
    section = ModelSection(name=options.get("model", "gemma-3-270m"), dtype=str(dtype).removeprefix("torch."),
                           attn_implementation=attn_implementation)
    return load_model(section)[0]


def _generate(model, prompts, new_tokens: int, cast) -> None:
    import torch

    with torch.no_grad(), cast():
        model.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                       max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)


def _train_step(model, batch, cast) -> None:
    import torch

    model.zero_grad(set_to_none=True)
    with cast():
        logits = model(batch).logits[:, :-1].float()
    torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)).backward()


@suite("precision", options=["model", "arch", "rows", "context", "new_tokens", "train_rows", "train_len",
                                 "repeats", "modes"])
def precision(options: dict) -> list[dict]:
    """Generation, train step and log-prob drift: full float32 vs TF32 vs bfloat16 vs bfloat16 attention vs
    mixed precision, same model."""
    import torch

    rows, context = int(options.get("rows", 64)), int(options.get("context", 512))
    new_tokens = int(options.get("new_tokens", 32))
    train_rows, train_len = int(options.get("train_rows", 4)), int(options.get("train_len", 1024))
    repeats = int(options.get("repeats", 2))
    modes = options.get("modes", ",".join(MODES)).split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown precision mode(s) {unknown} (accepted: {', '.join(MODES)})")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    previous = torch.get_float32_matmul_precision()
    out, reference = [], None
    try:
        for mode in ["float32"] + [m for m in modes if m != "float32"]:  # the baseline first: drift is against it
            dtype_name, matmul, attention, autocast = MODES[mode]
            model = _model(options, getattr(torch, dtype_name), attention).to(device)
            cast = functools.partial(torch.autocast, device.type, torch.bfloat16, enabled=autocast)
            # after loading: load_model sets the precision itself for float32 on a GPU (model.tf32)
            torch.set_float32_matmul_precision(matmul)
            vocab = model.config.get_text_config().vocab_size
            g = torch.Generator().manual_seed(0)
            prompts = torch.randint(3, vocab, (rows, context), generator=g).to(device)
            batch = torch.randint(3, vocab, (train_rows, train_len), generator=g).to(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()

            generate_s, _ = timed(functools.partial(_generate, model, prompts, new_tokens, cast), repeats, device)
            train_s, _ = timed(functools.partial(_train_step, model, batch, cast), repeats, device)
            with torch.no_grad(), cast():
                logps = torch.log_softmax(model(batch).logits[:, :-1].float(), -1)
                logps = logps.gather(-1, batch[:, 1:, None])[..., 0].cpu()
            reference = logps if reference is None else reference
            drift = (logps - reference).abs()
            row = {"mode": mode, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                   "generate_s": generate_s, "generated_tokens_per_s": rows * new_tokens / generate_s,
                   "train_step_s": train_s, "train_tokens_per_s": train_rows * train_len / train_s,
                   "logprob_drift_max": float(drift.max()), "logprob_drift_mean": float(drift.mean())}
            if device.type == "cuda":
                row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            out.append(row)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    finally:
        torch.set_float32_matmul_precision(previous)
    base = out[0]
    for row in out:
        row["generate_speedup"] = base["generate_s"] / row["generate_s"]
        row["train_speedup"] = base["train_step_s"] / row["train_step_s"]
    return [r for r in out if r["mode"] in modes]
