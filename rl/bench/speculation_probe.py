"""vLLM's n-gram speculation (prompt lookup) against plain sampling: does every sampled token keep the logprob the
trainer computes for it?

The tiny Gemma 3 with its final norm scaled so that its logits are 200 times sharper (its samples then repeat
themselves, and drafts of its own earlier tokens get accepted); 16 rows of 24 tokens from one prompt at
`--temperature`, once without speculation and once with `speculative_config` (`ngram` on a CPU, `ngram_gpu` on CUDA),
each engine in a process of its own, float32 on both sides. Per engine, one JSON line: its steps, the tokens, the
NaN logprobs, the tokens under a logprob of -1, and the largest gap between a finite engine logprob and the
trainer's forward pass (log_softmax(logits / T) of the sampled token; T = 1 for greedy decoding). What vLLM 0.32's
CPU engine gave: rl/bench/baselines/README.md, "n-gram speculation: NaN logprobs on vLLM 0.32's CPU engine".

    python -m rl.bench.speculation_probe [--temperature 1.0] [--logprobs-mode processed_logprobs]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

PROMPT = [2] + [40, 41, 42] * 5


def sharp_tiny_model():
    import torch

    from rl.models import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    model = tiny_model(len(tokenizer), seed=3).eval()
    with torch.no_grad():  # Gemma's final norm scales by 1 + weight
        model.model.norm.weight.copy_(200 * (1 + model.model.norm.weight) - 1)
    return model, tokenizer


def one_engine(speculate: bool, temperature: float, logprobs_mode: str) -> dict:
    import torch
    from vllm import LLM, SamplingParams

    from rl.logprobs import forward_logprobs
    from rl.vllm_weights import save_for_vllm

    model, tokenizer = sharp_tiny_model()
    folder = tempfile.TemporaryDirectory(prefix="speculation-probe-")  # removed as the process ends
    save_for_vllm(model, tokenizer, folder.name)
    on_gpu = torch.cuda.is_available()
    method = "ngram_gpu" if on_gpu else "ngram"
    spec = {"method": method, "num_speculative_tokens": 4, "prompt_lookup_min": 2, "prompt_lookup_max": 4}
    llm = LLM(model=folder.name, dtype="float32", kv_cache_memory_bytes=2**28, max_model_len=2048, seed=0,
              enforce_eager=not on_gpu, logprobs_mode=logprobs_mode, speculative_config=spec if speculate else None,
              gpu_memory_utilization=0.3)
    steps, step = [], llm.llm_engine.step
    llm.llm_engine.step = lambda: steps.append(1) or step()
    params = SamplingParams(temperature=temperature, max_tokens=24, logprobs=0, seed=5)
    rows = [out.outputs[0] for out in llm.generate([{"prompt_token_ids": PROMPT}] * 16, params, use_tqdm=False)]
    engine = [[entry[t].logprob for entry, t in zip(row.logprobs, row.token_ids)] for row in rows]
    gaps = []
    for row, logprobs in zip(rows, engine):
        trainer = forward_logprobs(model, PROMPT, list(row.token_ids), temperature or 1.0)
        gaps += [abs(a - b) for a, b in zip(logprobs, trainer) if not math.isnan(a)]
    flat = [x for row in engine for x in row]
    return {"speculation": method if speculate else None, "temperature": temperature, "logprobs_mode": logprobs_mode,
            "engine_steps": len(steps), "tokens": len(flat), "nan_logprobs": sum(map(math.isnan, flat)),
            "under_minus_1": sum(x < -1 for x in flat), "largest_gap_to_trainer": max(gaps, default=None)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--logprobs-mode", default="processed_logprobs", help="vLLM's logprobs_mode")
    parser.add_argument("--one", choices=["plain", "speculate"], help=argparse.SUPPRESS)  # one engine, this process
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one_engine(args.one == "speculate", args.temperature, args.logprobs_mode)), flush=True)
        return 0
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    for one in ("plain", "speculate"):
        command = [sys.executable, "-m", "rl.bench.speculation_probe", "--one", one, "--temperature",
                   str(args.temperature), "--logprobs-mode", args.logprobs_mode]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            print(done.stderr[-3000:], file=sys.stderr)
            return done.returncode or 1
        print(lines[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
