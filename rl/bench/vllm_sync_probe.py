"""Does a colocated vLLM engine keep generating from the right weights after a per-tensor push?

TRL's colocate mode syncs weights by calling the engine model's `load_weights([(name, tensor)])`
once per parameter; toolgym's backend sends them all through `reload_weights`. This script
pushes weights both ways into an in-process engine on a GPU and checks, after each push:

- which engine tensors changed storage (a CUDA graph replays the addresses it captured, so a
  parameter whose storage was replaced would keep being read from the old one),
- whether the engine's values equal what was sent, and whether its logits are finite,
- whether the engine's log-probabilities of a fixed sequence equal transformers' on the same
  weights (the check that the engine generates from the pushed weights),
- whether sampling still returns token ids inside the vocabulary.

    python -m rl.bench.vllm_sync_probe --out probe.json [--eager] [--untie] [--model DIR] [--vocab N] \
        [--temperature T] [--no-seed]

Set VLLM_USE_V2_MODEL_RUNNER=0 or 1 to pick vLLM's model runner (0.26 picks V2 for dense
models). Without --model it builds the tiny Gemma 3 (vocabulary 384) of the tests.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process: tensors handed over


def tiny_checkpoint(directory: Path, untie: bool = False, vocab: int | None = None) -> Path:
    """The tiny model, wider and deeper (256 x 4 layers), saved as a Gemma 3 checkpoint vLLM can load."""
    import torch

    from rl.models import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_model(vocab or len(tok), hidden_size=256, layers=4)
    model.config.architectures = ["Gemma3ForCausalLM"]
    if untie:
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(model.model.embed_tokens.weight.detach().clone())
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def _engine_state(engine) -> dict:
    return {n: (p.data_ptr(), p.detach().clone()) for n, p in engine.named_parameters()}


def _compare(before: dict, engine) -> dict:
    moved, changed, nonfinite = [], [], []
    for name, p in engine.named_parameters():
        ptr, old = before[name]
        if p.data_ptr() != ptr:
            moved.append(name)
        if not bool(p.isfinite().all()):
            nonfinite.append(name)
        if p.shape != old.shape or float((p.float() - old.float()).abs().max()) > 0:
            changed.append(name)
    return {"storage_replaced": moved, "values_changed": len(changed), "nonfinite": nonfinite}


def _hf_logprobs(model, ids: list[int]) -> list[float]:
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids], device=model.device)).logits[0, :-1].float()
    return logits.log_softmax(-1).gather(1, torch.tensor(ids[1:], device=model.device)[:, None])[:, 0].tolist()


def _engine_logprobs(llm, ids: list[int]) -> list[float]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False)
    out = llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)[0]
    return [entry[t].logprob for entry, t in zip(out.prompt_logprobs[1:], ids[1:])]


def _sample(llm, prompts: list[list[int]], vocab: int, temperature: float = 1.0, seed: int | None = 0) -> dict:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=24, temperature=temperature, seed=seed, detokenize=False)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    ids = [t for o in outs for t in o.outputs[0].token_ids]
    outside = sorted({t for t in ids if not 0 <= t < vocab})
    return {"tokens": len(ids), "out_of_vocab": sum(1 for t in ids if not 0 <= t < vocab), "outside_ids": outside[:16]}


def _gap(llm, hf, ids) -> dict:
    a, b = _engine_logprobs(llm, ids), _hf_logprobs(hf, ids)
    diffs = [abs(x - y) for x, y in zip(a, b)]
    finite = all(math.isfinite(x) for x in a)
    return {"max": max(diffs) if finite else None, "mean": sum(diffs) / len(diffs) if finite else None,
            "engine_finite": finite}


def _push_trl_style(engine, hf) -> float:
    """What TRL 1.16's colocate sync does: one `load_weights` call per trainer parameter."""
    import torch

    started = time.perf_counter()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            engine.load_weights([(name, p.data)])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def _push_reload(llm, hf) -> float:
    """toolgym's route: every tensor through vLLM's layerwise `reload_weights`."""
    import torch

    from rl.vllm_weights import fused_groups, weights_for_sync

    engine = llm.llm_engine.model_executor.driver_worker.worker.get_model()
    started = time.perf_counter()
    with torch.no_grad():
        llm.collective_rpc("reload_weights", kwargs={
            "weights_iterator": iter(weights_for_sync(hf, fused_groups(engine), changing_only=False))})
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a saved model folder (default: the tests' tiny Gemma 3)")
    parser.add_argument("--out", default="vllm_sync_probe.json")
    parser.add_argument("--eager", action="store_true", help="enforce_eager=True (no CUDA graphs)")
    parser.add_argument("--untie", action="store_true", help="tiny model with its own lm_head")
    parser.add_argument("--route", choices=["trl", "reload"], default="trl")
    parser.add_argument("--vocab", type=int, help="the tiny model's vocabulary size (default: its tokenizer's, 384)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0: greedy)")
    parser.add_argument("--no-seed", action="store_true", help="sample without a per-request seed")
    parser.add_argument("--noise", type=float, default=1e-2, help="std of the update pushed in the second push")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM
    from vllm import LLM

    path = Path(args.model) if args.model else tiny_checkpoint(Path(f"/tmp/vllm-sync-probe-{os.getpid()}"), args.untie,
                                                                    args.vocab)
    llm = LLM(model=str(path), kv_cache_memory_bytes=2**30, max_model_len=1024, enforce_eager=args.eager,
              seed=0, logprobs_mode="processed_logprobs")
    runner = llm.llm_engine.model_executor.driver_worker.worker.model_runner
    engine = runner.model
    dtype = engine.model.embed_tokens.weight.dtype
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(engine.model.embed_tokens.weight.device).eval()
    vocab = llm.llm_engine.model_config.get_vocab_size()
    g = torch.Generator().manual_seed(0)
    top = min(vocab, len(llm.get_tokenizer()))  # prompts stay inside the tokenizer's ids
    ids = torch.randint(3, top, (64,), generator=g).tolist()
    prompts = [torch.randint(3, top, (16,), generator=g).tolist() for _ in range(32)]
    sample = functools.partial(_sample, llm, prompts, vocab, args.temperature, None if args.no_seed else 0)
    push = _push_trl_style if args.route == "trl" else (lambda _e, model: _push_reload(llm, model))
    report: dict = {"vllm_use_v2_model_runner": os.environ.get("VLLM_USE_V2_MODEL_RUNNER"),
                    "runner": type(runner).__module__ + "." + type(runner).__name__, "eager": args.eager,
                    "route": args.route, "temperature": args.temperature, "seed": not args.no_seed,
                    "engine_dtype": str(dtype),
                    "vocab": vocab, "start": {"gap": _gap(llm, hf, ids), "sample": sample()}}

    for stage, noise in (("same_weights", 0.0), ("updated_weights", args.noise)):
        if noise:
            with torch.no_grad():
                for p in hf.parameters():
                    p.add_(torch.randn_like(p) * noise)
        before = _engine_state(engine)
        seconds = push(engine, hf)
        report[stage] = {"push_s": seconds, **_compare(before, engine), "gap": _gap(llm, hf, ids)}
        Path(args.out).write_text(json.dumps(report, indent=1))  # kept if sampling kills the process
        report[stage]["sample"] = sample()
        Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main())
