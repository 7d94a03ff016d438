"""vLLM's n-gram speculation (prompt lookup) against plain sampling: does every sampled token keep the logprob the
trainer computes for it?

The tiny Gemma 3 with its final norm scaled so that its logits are 200 times sharper (its samples then repeat
themselves, and drafts of its own earlier tokens get accepted); `--rows` (16) rows of 24 tokens from one prompt at
`--temperature`, each row its own draw (the engine's `--seed`), once without speculation and once with
`speculative_config` (`ngram` on a CPU, `ngram_gpu` on CUDA), each engine in a process of its own, float32 on both
sides. Per engine, one JSON line: its steps, the tokens, the NaN logprobs, the tokens under a logprob of -1, the
distinct rows, the mean of the finite logprobs (and its standard error over the rows), and the largest gap between a
finite engine logprob and the trainer's forward pass (log_softmax(logits / T) of the sampled token; T = 1 for greedy
decoding). What vLLM 0.32's CPU engine gave: rl/bench/baselines/README.md, "n-gram speculation: NaN logprobs on vLLM
0.32's CPU engine".

    python -m rl.bench.speculation_probe [--temperature 1.0] [--logprobs-mode processed_logprobs] [--rows 16]
        [--seed 5] [--expand-by-torch]

`--expand-by-torch` runs both engines with vLLM's `expand_batch_to_tokens` (the rejection sampler's per-token copy of
each row's temperature, top-k and top-p) done by `torch.repeat_interleave`: on a build without Triton, vLLM's CPU
stand-in for that kernel writes into a copy of the output and leaves the output itself unset
(https://github.com/vllm-project/vllm/issues/55005).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
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


def expand_by_torch(x, cu_num_tokens, num_tokens, replace_from=0, replace_to=0):
    """vLLM's `expand_batch_to_tokens`: row i's value repeated for each of its tokens, `replace_from` made
    `replace_to`."""
    import torch

    counts = torch.diff(cu_num_tokens, prepend=cu_num_tokens.new_zeros(1))
    out = torch.repeat_interleave(x, counts, output_size=num_tokens)
    return out if replace_from == replace_to else out.masked_fill(out == replace_from, replace_to)


def one_engine(speculate: bool, temperature: float, logprobs_mode: str, expand: bool = False, n_rows: int = 16,
               seed: int = 5) -> dict:
    import torch
    import vllm.v1.sample.rejection_sampler as rejection
    from vllm import LLM, SamplingParams

    from rl.logprobs import forward_logprobs
    from rl.vllm_weights import save_for_vllm

    if expand:  # the engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0)
        rejection.expand_batch_to_tokens = expand_by_torch
    model, tokenizer = sharp_tiny_model()
    folder = tempfile.TemporaryDirectory(prefix="speculation-probe-")  # removed as the process ends
    save_for_vllm(model, tokenizer, folder.name)
    on_gpu = torch.cuda.is_available()
    method = "ngram_gpu" if on_gpu else "ngram"
    spec = {"method": method, "num_speculative_tokens": 4, "prompt_lookup_min": 2, "prompt_lookup_max": 4}
    llm = LLM(model=folder.name, dtype="float32", kv_cache_memory_bytes=2**28, max_model_len=2048, seed=seed,
              enforce_eager=not on_gpu, logprobs_mode=logprobs_mode, speculative_config=spec if speculate else None,
              gpu_memory_utilization=0.3)
    steps, step = [], llm.llm_engine.step
    llm.llm_engine.step = lambda: steps.append(1) or step()
    params = SamplingParams(temperature=temperature, max_tokens=24, logprobs=0)  # the engine's seed: rows differ
    rows = [out.outputs[0] for out in llm.generate([{"prompt_token_ids": PROMPT}] * n_rows, params, use_tqdm=False)]
    engine = [[entry[t].logprob for entry, t in zip(row.logprobs, row.token_ids)] for row in rows]
    gaps = []
    for row, logprobs in zip(rows, engine):
        trainer = forward_logprobs(model, PROMPT, list(row.token_ids), temperature or 1.0)
        gaps += [abs(a - b) for a, b in zip(logprobs, trainer) if not math.isnan(a)]
    flat = [x for row in engine for x in row]
    finite = [x for x in flat if not math.isnan(x)]
    row_means = [statistics.fmean(r) for r in engine if r and not any(map(math.isnan, r))]
    return {"speculation": method if speculate else None, "temperature": temperature, "logprobs_mode": logprobs_mode,
            "expand": "torch" if expand else "vllm",
            "engine_steps": len(steps), "tokens": len(flat), "nan_logprobs": sum(map(math.isnan, flat)),
            "under_minus_1": sum(x < -1 for x in flat), "distinct_rows": len({tuple(r.token_ids) for r in rows}),
            "mean_logprob": statistics.fmean(finite) if finite else None,
            "mean_logprob_stderr": statistics.stdev(row_means) / len(row_means) ** 0.5 if len(row_means) > 1 else None,
            "largest_gap_to_trainer": max(gaps, default=None)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--logprobs-mode", default="processed_logprobs", help="vLLM's logprobs_mode")
    parser.add_argument("--rows", type=int, default=16, help="rows sampled from the prompt")
    parser.add_argument("--seed", type=int, default=5, help="the sampling seed")
    parser.add_argument("--expand-by-torch", action="store_true",
                        help="vLLM's expand_batch_to_tokens done by torch.repeat_interleave (vLLM issue 55005)")
    parser.add_argument("--one", choices=["plain", "speculate"], help=argparse.SUPPRESS)  # one engine, this process
    args = parser.parse_args(argv)
    if args.one:
        row = one_engine(args.one == "speculate", args.temperature, args.logprobs_mode, args.expand_by_torch,
                         args.rows, args.seed)
        print(json.dumps(row), flush=True)
        return 0
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    for one in ("plain", "speculate"):
        command = [sys.executable, "-m", "rl.bench.speculation_probe", "--one", one, "--temperature",
                   str(args.temperature), "--logprobs-mode", args.logprobs_mode]
        command += ["--rows", str(args.rows), "--seed", str(args.seed)]
        command += ["--expand-by-torch"] if args.expand_by_torch else []
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            print(done.stderr[-3000:], file=sys.stderr)
            return done.returncode or 1
        print(lines[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
