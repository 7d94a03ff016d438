"""The GRPO loss pass: TRL's scoring of every completion token against model tokens only (rl/logprobs.py).

    python launch/bench.py --suite scoring --set episodes=8 --set micro_batch=2
    python launch/bench.py --suite scoring --set model=runs/sft --set config=configs/sudoku-sft.yaml
    python launch/bench.py --suite micro_batches --set episodes=16 --set micro_batch=4

The expert plays `episodes` episodes of the config's env through the rollout engine, so the
batch has the exact token layout of RL episodes (prompt, model turns, tool results). Each
mode then runs what a GRPO step's loss passes run over that batch: per-token log-probabilities
and entropies through TRL's fused LM head, in micro-batches of `micro_batch` rows, with a
backward pass each (through the config's LoRA, as in training). TRL's scoring is the baseline,
measured in the same run; the log-probabilities of the model's tokens must agree.

`micro_batches` runs a GRPO step's loss passes over one batch split two ways, in one run, taking turns that swap
places every pass: TRL's shuffled split and `grpo.micro_batches=by_length` (`rl.trl_hooks.regroup_by_length`),
over episodes of varied length (the random player's by default). Each micro-batch pads to its own longest
completion; the summed gradient (a dapo loss, normalised over the whole batch) must be the same both ways.
`--set attention=sdpa_bf16` (comma-separated) runs the grouped split again with each such attention implementation
(`model.attn_implementation`), in the same turns; `--set autocast=bfloat16` runs it again under bfloat16 mixed
precision (`model.autocast`), with the config's attention and with each named one. `--set profile=N` adds a row with
the N kernels that took the most device time (on a CPU, the operators that took the most CPU time) in one more run
of the last row's passes, under `torch.profiler`: where a loss pass goes.
"""

from __future__ import annotations

import functools
import resource
from types import SimpleNamespace

from rl.bench import fastest, suite, timed

MODES = ("model_tokens", "trl")  # ours first: the CPU's peak-RSS mark only rises


def _episodes(cfg, tokenizer, n: int, policy: str = "expert"):
    import torch

    from rl.evaluation import chat_for, make_policy, play

    start = cfg.env.train_seeds[0]
    kwargs = cfg.sft.expert if policy == "expert" else {}
    trajectories = play(cfg, chat_for(cfg, tokenizer), list(range(start, start + n)),
                        policy=make_policy(cfg, policy, seed=0, **kwargs), batch_size=n)
    prompt = max(len(t.prompt_ids) for t in trajectories)
    width = max(len(t.completion_ids) for t in trajectories)
    pad = tokenizer.pad_token_id or 0
    ids = torch.full((n, prompt + width), pad)
    attention = torch.zeros_like(ids)
    score = torch.zeros(n, width, dtype=torch.bool)
    for i, t in enumerate(trajectories):  # TRL's layout: prompts left-padded, completions right-padded
        p, c = len(t.prompt_ids), len(t.completion_ids)
        ids[i, prompt - p:prompt + c] = torch.tensor(t.prompt_ids + t.completion_ids)
        attention[i, prompt - p:prompt + c] = 1
        score[i, :c] = torch.tensor(t.env_mask, dtype=torch.bool)
    turns = sum(t.info["model_turns"] for t in trajectories) / n
    return ids, attention, width, score, turns


def _model(cfg, device):
    from peft import get_peft_model
    from trl.trainer.utils import add_fused_lm_head

    from rl.models import load_model, lora_config

    model, tokenizer = load_model(cfg.model)
    add_fused_lm_head(model, temperature=cfg.rollout.temperature, outputs=("log_probs", "entropy"))
    peft = lora_config(cfg.lora, model)
    return (get_peft_model(model, peft) if peft else model).to(device), tokenizer


def _loss_passes(model, mode: str, ids, attention, keep: int, score, micro: int, trainer):
    """One GRPO step's loss passes: log-probs and entropies of every row, backward per micro-batch."""
    import torch
    from trl import GRPOTrainer

    from rl.logprobs import score_tokens

    out = []
    for start in range(0, ids.size(0), micro):
        rows = slice(start, start + micro)
        if mode == "trl":
            logps, _, _ = GRPOTrainer._get_per_token_logps_and_entropies(
                trainer, model, ids[rows], attention[rows], keep, compute_entropy=True)
        else:
            logps, _ = score_tokens(model, ids[rows], attention[rows], keep, score[rows], compute_entropy=True)
        mask = score[rows] & attention[rows, -keep:].bool()
        (-(logps * mask).sum() / mask.sum().clamp(min=1)).backward()
        out.append(logps.detach().where(mask, torch.zeros((), device=logps.device)))
    model.zero_grad(set_to_none=True)
    return torch.cat(out)


@suite("scoring", options=["model", "config", "episodes", "micro_batch", "repeats"])
def scoring(options: dict) -> list[dict]:
    """GRPO loss passes over expert episodes: scoring only the model's tokens vs TRL's scoring of every token."""
    import torch
    from accelerate import Accelerator

    from rl.config import load_config

    overrides = [f"model.name={options['model']}"] if options.get("model") else []
    cfg = load_config(options.get("config", "configs/sudoku-sft.yaml"), overrides)
    n, micro = int(options.get("episodes", 8)), int(options.get("micro_batch", 2))
    repeats = int(options.get("repeats", 1))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = _model(cfg, device)
    ids, attention, keep, score, turns = _episodes(cfg, tokenizer, n)
    ids, attention, score = ids.to(device), attention.to(device), score.to(device)
    trainer = SimpleNamespace(accelerator=Accelerator(cpu=device.type == "cpu"))  # what TRL's method reads off self
    model_tokens = int((score & attention[:, -keep:].bool()).sum())
    completion_tokens = int(attention[:, -keep:].sum())
    rows, reference = [], None
    for mode in MODES:  # warm-up: one micro-batch each (first-call allocations, kernel choices)
        _loss_passes(model, mode, ids[:micro], attention[:micro], keep, score[:micro], micro, trainer)
    for mode in MODES:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        best, logps = timed(functools.partial(_loss_passes, model, mode, ids, attention, keep, score, micro, trainer),
                            repeats, device)
        reference = logps if reference is None else reference
        row = {"mode": mode, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "episodes": n, "mean_turns": turns, "sequence_tokens": int(attention.sum()),
               "completion_tokens": completion_tokens, "model_tokens": model_tokens,
               "lm_head_positions": model_tokens if mode == "model_tokens" else (
                   completion_tokens if device.type == "cuda" else ids.numel() - n),
               "loss_passes_s": best, "model_tokens_per_s": model_tokens / best,
               "logprob_max_diff": float((logps - reference).abs().max())}
        if device.type == "cuda":
            row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        else:  # the process's high-water mark so far: ours runs first, so TRL's row shows a rise only
            row["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        rows.append(row)
    base = rows[-1]["loss_passes_s"]
    for row in rows:
        row["speedup"] = base / row["loss_passes_s"]
    return rows


def _summed_gradient(model, chunks: list[dict], keep: int, tokens: int, autocast: str = "none"):
    """The flattened gradient of the loss passes over `chunks` (micro-batches of rows): a dapo-style
    loss, every micro-batch's token sum over the whole batch's `tokens`, as TRL normalises it; each forward
    under `torch.autocast` in bfloat16 with `autocast: bfloat16` (`model.autocast`), as the trainer runs it."""
    import torch

    from rl.logprobs import score_tokens

    device = next(model.parameters()).device.type
    cast = functools.partial(torch.autocast, device, torch.bfloat16, enabled=autocast == "bfloat16")
    model.zero_grad(set_to_none=True)
    for chunk in chunks:
        logps, _ = score_tokens(model, chunk["ids"], chunk["attention"], keep, chunk["score"], compute_entropy=True,
                                autocast=cast)
        mask = chunk["score"] & chunk["attention"][:, -keep:].bool()
        (-(logps * mask).sum() / tokens).backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    return grads


def _top_operators(fn, top: int) -> list[dict]:
    """The `top` operators of one call of `fn` by their own time: on a GPU its kernels (and copies) by device time,
    on a CPU the operators by CPU time; each with its calls, milliseconds and share of all of that kind's time.
    (On a GPU an operator such as aten::mm also carries its kernels' device time: counting both would count it
    twice.)"""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        fn()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = [e for e in prof.key_averages()
              if getattr(e, key) > 0 and (e.device_type != DeviceType.CPU) == cuda]
    total = sum(getattr(e, key) for e in events) or 1.0
    return [{"operator": e.key, "calls": e.count, "self_ms": round(getattr(e, key) / 1e3, 3),
             "share": round(getattr(e, key) / total, 4)}
            for e in sorted(events, key=lambda e: getattr(e, key), reverse=True)[:top]]


def _splits(rows: dict, n: int, micro: int) -> dict[str, list[dict]]:
    """The batch's rows in TRL's shuffled micro-batches (one seeded permutation) and regrouped by length."""
    import torch

    from rl.trl_hooks import regroup_by_length

    order = torch.randperm(n, generator=torch.Generator().manual_seed(0)).to(rows["ids"].device)
    shuffled = {k: v[order] for k, v in rows.items()}
    splits = {"shuffled": [{k: v[i:i + micro] for k, v in shuffled.items()} for i in range(0, n, micro)]}
    splits["by_length"] = regroup_by_length(splits["shuffled"])
    return splits


def _split_rows(results: dict, variants: dict, own: str, lengths, common: dict) -> list[dict]:
    """One row per run: its split, attention, autocast (`variants`: name -> (split, attention, autocast)), padded
    positions, time and gradient against the shuffled split's; `speedup` against the shuffled split, and a run with
    another attention's (`attention_speedup`: against the config's attention under the same autocast) or under the
    autocast (`autocast_speedup`) against the grouped split's."""
    out, reference = [], results["shuffled"][2]
    for name, (positions, seconds, grads, _, passes) in results.items():
        _, attention, autocast = variants[name]
        out.append({"split": name, "attention": attention, "autocast": autocast, **common,
                    "completion_tokens_min_mean_max": [int(lengths.min()), float(lengths.float().mean()),
                                                       int(lengths.max())],
                    "padded_completion_positions": positions, "loss_passes_s": seconds,
                    "passes_s": [round(s, 3) for _, s in passes],
                    "gradient_max_diff": float((grads - reference).abs().max() / reference.abs().max())})
    shuffled, grouped = results["shuffled"][1], results["by_length"][1]
    for row in out:
        row["speedup"] = shuffled / row["loss_passes_s"]
        if row["attention"] != own:  # against the grouped split with the config's attention, same autocast
            same = grouped if row["autocast"] == "none" else results[f"by_length, autocast {row['autocast']}"][1]
            row["attention_speedup"] = same / row["loss_passes_s"]
        if row["autocast"] != "none":
            row["autocast_speedup"] = grouped / row["loss_passes_s"]
    return out


@suite("micro_batches", options=["model", "config", "episodes", "micro_batch", "policy", "repeats", "profile",
                                 "attention", "autocast"])
def micro_batches(options: dict) -> list[dict]:
    """A GRPO step's loss passes over one batch in TRL's shuffled micro-batches vs grouped by length."""
    import torch

    from rl.config import load_config
    from rl.config_checks import AUTOCAST, check_attn_implementation

    autocast = str(options.get("autocast", "none"))
    if autocast not in AUTOCAST:
        raise ValueError(f"autocast={autocast!r}: accepted: {', '.join(AUTOCAST)}")
    overrides = [f"model.name={options['model']}"] if options.get("model") else []
    # the config's rules for it (float32 weights), and the weights it keeps
    cfg = load_config(options.get("config", "configs/sudoku-sft.yaml"), [*overrides, f"model.autocast={autocast}"])
    n, micro = int(options.get("episodes", 16)), int(options.get("micro_batch", 4))
    if n % micro:
        raise ValueError(f"episodes={n}: must be a multiple of micro_batch ({micro})")
    others = [a.strip() for a in str(options.get("attention", "")).split(",") if a.strip()]
    for other in others:  # before anything loads
        check_attn_implementation(other, "attention")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = _model(cfg, device)
    ids, attention, keep, score, turns = _episodes(cfg, tokenizer, n, str(options.get("policy", "random")))
    rows = {"ids": ids.to(device), "attention": attention.to(device), "score": score.to(device),
            "completion_mask": attention[:, -keep:].to(device)}
    splits, own = _splits(rows, n, micro), model.config._attn_implementation
    tokens = int((rows["score"] & rows["completion_mask"].bool()).sum())
    padded = {name: sum(len(c["ids"]) * int(c["completion_mask"].sum(1).max()) for c in chunks)
              for name, chunks in splits.items()}

    def run(name: str, attention: str = own, chunks: slice = slice(None), cast: str = "none"
            ) -> tuple[int, torch.Tensor]:
        if model.config._attn_implementation != attention:  # each run sets its own: the order may swap
            model.set_attn_implementation(attention)
        grads = _summed_gradient(model, splits[name][chunks], keep, tokens, cast)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return padded[name], grads

    # name -> (split, attention, autocast): both splits as the config has them, then the grouped split again with
    # each other attention, and under the autocast
    variants = {name: (name, own, "none") for name in splits}
    variants |= {f"by_length, {other}": ("by_length", other, "none") for other in others}
    if autocast != "none":  # under the autocast: the grouped split with the config's attention, then each other
        variants[f"by_length, autocast {autocast}"] = ("by_length", own, autocast)
        variants |= {f"by_length, {other}, autocast {autocast}": ("by_length", other, autocast) for other in others}
    # first-call allocations and kernel choices, for each attention and autocast
    for attention, cast in dict.fromkeys((a, c) for _, a, c in variants.values()):
        run("shuffled", attention, slice(1), cast)
    runs = {name: functools.partial(run, split, attention, cast=cast)
            for name, (split, attention, cast) in variants.items()}
    # the runs take turns and swap places every pass: none always runs first, a slow stretch slows them all
    results = fastest(runs, int(options.get("repeats", 2)), swap=True)
    out = _split_rows(results, variants, own, rows["completion_mask"].sum(dim=1),
                      {"episodes": n, "micro_batch": micro, "mean_turns": turns})
    if int(options.get("profile", 0)) > 0:  # the last variant: the grouped split with the most options applied
        name, (split, attention, cast) = list(variants.items())[-1]
        out.append({"split": f"{name}, profiled", "episodes": n, "micro_batch": micro,
                    "top_operators": _top_operators(functools.partial(run, split, attention, cast=cast),
                                                    int(options["profile"]))})
    return out
