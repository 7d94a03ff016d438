"""Evaluation: batches of episodes outside training, on held-out seeds, with a model or a reference policy;
results, paired comparisons (McNemar) and the held-out tables of GRPO runs.

Episodes go through `run_episodes`, the same engine and token layout as GRPO rollouts, so an evaluation
measures exactly what training optimises (and a demonstration, `rl.demos`, is exactly the sequence the
model would have produced).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import envs as envs_registry
from envs.base import closing_envs
from envs.experts import expert_for, random_for
from rl.chat import ChatFormat
from rl.config import RunConfig
from rl.episode_log import eval_rows
from rl.rollout import Trajectory, run_episodes
from rl.toolcalls import get_format

POLICIES = {"expert": expert_for, "random": random_for}


def chat_for(cfg: RunConfig, tokenizer, images=None) -> ChatFormat:
    """The run's chat format; `images` (an `ImageTokenizer`) for a vision-language model."""
    return ChatFormat(tokenizer, get_format(cfg.model.tool_format), cfg.rollout.chat_template_kwargs, images=images)


def play(cfg: RunConfig, chat: ChatFormat, seeds: list[int], backend=None, policy: Callable | None = None,
         settings=None, batch_size: int = 16) -> list[Trajectory]:
    """Episodes for `seeds`, `batch_size` at a time, with a model backend or a policy."""
    env_cls = envs_registry.resolve(cfg.env.name)
    settings = settings or cfg.rollout
    out: list[Trajectory] = []
    for start in range(0, len(seeds), batch_size):
        chunk = seeds[start:start + batch_size]
        with closing_envs([]) as batch:  # a remote env's server session, a sandboxed env's worker: given back
            for _ in chunk:  # one at a time: those built before a constructor that raises are closed too
                batch.append(env_cls(**cfg.env.kwargs))
            out += run_episodes(batch, chunk, backend, chat, settings, policy=policy)
    return out


def make_policy(cfg: RunConfig, name: str, seed: int = 0, **kwargs) -> Callable:
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r} (accepted: {', '.join(POLICIES)})")
    probe = envs_registry.make(cfg.env.name, **cfg.env.kwargs)
    return POLICIES[name](probe, seed=seed, **kwargs)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a rate: sane at 0% and 100%, unlike the normal approximation."""
    if n == 0:
        return 0.0, 0.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(trajectories: list[Trajectory], k: int = 1) -> dict:
    """Solve rate with its 95% interval, returns, turns, error rates; pass@k over k samples per seed."""
    return summarize_infos([t.info for t in trajectories], k)


def summarize_infos(infos: list[dict], k: int = 1) -> dict:
    """`summarize` over the episodes' info dicts (what processes can gather)."""
    n = len(infos)
    solved = sum(bool(i.get("solved")) for i in infos)
    low, high = wilson_interval(solved, n)
    total = lambda key: sum(float(i.get(key) or 0) for i in infos)
    summary = {
        "episodes": n,
        "solve_rate": solved / n if n else 0.0,
        "solve_rate_ci95": [low, high],
        "mean_return": total("episode_return") / n if n else 0.0,
        "mean_turns": total("model_turns") / n if n else 0.0,
        "invalid_call_rate": total("invalid_actions") / max(total("turns"), 1),
        "format_error_rate": total("format_errors") / max(total("model_turns"), 1),
        "tool_call_rate": total("tool_calls") / max(total("model_turns"), 1),
        "env_errors": sum(bool(i.get("env_error")) for i in infos),
        "facts": mean_facts(infos),
    }
    shares = move_shares(summary["facts"])
    if shares:
        summary["move_shares"] = shares
    if k > 1:
        seeds = n // k
        summary[f"pass@{k}"] = sum(any(infos[j * seeds + s].get("solved") for j in range(k))
                                   for s in range(seeds)) / max(seeds, 1)
    return summary


def mean_facts(infos: list[dict]) -> dict[str, float]:
    """The mean of every numeric fact all episodes report (an env's own, e.g. 2048's `max_tile`, a kernel's
    `speedup`, a drive's `pedestrians_hit`), for rows where the solve rate alone says little."""
    keys = set.intersection(*(set(i) for i in infos)) if infos else set()
    numeric = [k for k in sorted(keys)
               if all(isinstance(i[k], (int, float)) and i[k] == i[k] for i in infos)]  # bools are ints; NaN is not
    return {k: sum(float(i[k]) for i in infos) / len(infos) for k in numeric}


def move_shares(facts: dict[str, float]) -> dict[str, float]:
    """Each kind of move's share of all moves, for an env whose facts count its moves (`moves`) and each kind of
    them (`<kind>_moves`, e.g. Sudoku's right, wrong, clash); {} for one that does not."""
    total = facts.get("moves", 0.0)
    kinds = [k for k in facts if k.endswith("_moves") and k != "moves"]
    return {k.removesuffix("_moves"): facts[k] / total for k in kinds} if total else {}


def evaluate(cfg: RunConfig, policy: str = "", transcripts: list[dict] | None = None) -> dict:
    """Evaluate the configured model (or a reference `policy`: expert, random) on held-out seeds. A list given
    as `transcripts` gets the first `eval.transcripts` episodes' rows (`rl.episode_log.eval_rows`), made from
    what the played episodes hold: nothing is tokenized or played again."""
    from rl.generation import TransformersBackend
    from rl.models import load_image_tokenizer, load_model, load_tokenizer

    e = cfg.eval
    started = time.perf_counter()
    seeds = list(range(e.seed_start, e.seed_start + e.episodes))
    backend, policy_fn, images, engine_dir = None, None, None, None
    if policy:
        tokenizer = load_tokenizer(cfg.model)
        # the expert row is the expert that wrote the demonstrations, show_board habit included
        kwargs = {"explore": cfg.sft.explore, **cfg.sft.expert} if policy == "expert" else {}
        policy_fn = make_policy(cfg, policy, seed=e.seed_start, **kwargs, **e.policy_kwargs)
        label = "-".join([policy, *(f"{key}-{value}" for key, value in sorted(e.policy_kwargs.items()))])
    else:
        import torch

        torch.manual_seed(e.seed_start)
        model, tokenizer = load_model(cfg.model)
        if torch.cuda.is_available():
            model = model.to("cuda")
        images = load_image_tokenizer(cfg.model, tokenizer)  # a VLM sees the env's images, as in training
        if cfg.rollout.backend == "vllm" and images is None:  # an engine of its own, on this model's weights
            from rl.vllm_backend import VLLMBackend

            engine_dir = Path(tempfile.mkdtemp(prefix="toolgym-eval-"))
            backend = VLLMBackend.from_settings(model, tokenizer, engine_dir, cfg.rollout.vllm, seed=e.seed_start)
        else:  # vllm-server serves a training run's weights, not this model's; VLMs generate with transformers
            backend = TransformersBackend(model, tokenizer, autocast=cfg.model.autocast)
        label = cfg.model.name
    chat = chat_for(cfg, tokenizer, images)
    settings = dataclasses.replace(cfg.rollout, temperature=e.temperature)
    trajectories: list[Trajectory] = []
    try:
        for _ in range(e.k):  # sample j of every seed, then sample j+1: pass@k reads them back in this order
            trajectories += play(cfg, chat, seeds, backend=backend, policy=policy_fn, settings=settings,
                                 batch_size=e.batch_size)
    finally:
        if engine_dir is not None:
            backend.shutdown()  # the engine and the process group it set up
            shutil.rmtree(engine_dir, ignore_errors=True)
    if transcripts is not None:
        transcripts += eval_rows(trajectories, seeds, chat, e.transcripts)
    return eval_result(cfg, label, backend.name if backend else "policy", seeds, [t.info for t in trajectories],
                       e.temperature, e.k, wall_s=time.perf_counter() - started)  # model loading included


def eval_result(cfg: RunConfig, label: str, backend: str, seeds: list[int], infos: list[dict], temperature: float,
                k: int = 1, **extra) -> dict:
    """An eval result as `launch/eval.py` writes it: the summary and every episode's outcome.

    `infos[i]` is the episode of `seeds[i % len(seeds)]`, sample `i // len(seeds)` (all seeds of
    sample 0, then of sample 1, ...); the per-episode rows make results of other runs on the same
    seeds comparable pairwise (`paired_comparison`)."""
    per_episode = [{"seed": seeds[i % len(seeds)], "sample": i // len(seeds), "solved": bool(info.get("solved")),
                    "return": float(info.get("episode_return") or 0), "turns": int(info.get("model_turns") or 0)}
                   for i, info in enumerate(infos)]
    return {"label": label, "backend": backend, "env": cfg.env.name, "env_kwargs": cfg.env.kwargs,
            "seeds": [seeds[0], seeds[-1] + 1], "temperature": temperature, "k": k, **summarize_infos(infos, k),
            **extra, "per_episode": per_episode}


def save_result(result: dict, transcripts: list[dict], path: Path) -> None:
    """Write an eval result to `path` (`<out>/<env>-<label>.json`) and its episodes' rows beside it
    (`<env>-<label>.episodes.jsonl`), which the result names relative to itself, so the folder can move."""
    if transcripts:
        result["episodes_file"] = path.with_suffix(".episodes.jsonl").name
        (path.parent / result["episodes_file"]).write_text("".join(json.dumps(row) + "\n" for row in transcripts))
    path.write_text(json.dumps(result, indent=2))


def paired_comparison(a: dict, b: dict, differ: tuple[str, ...] = ()) -> dict:
    """B against A on the episodes both played (same env settings, seed and sample), with McNemar's
    exact test: only the seeds one solved and the other did not carry information, and under "no
    difference" each such seed is a fair coin. Far more sensitive than comparing two intervals.
    `differ`: env settings the two may differ in, where the caller knows the seeds still give the same tasks
    (e.g. Sudoku's `list_empty_cells`, which changes what the board shows, not the puzzle)."""
    for name, result in (("first", a), ("second", b)):
        if "per_episode" not in result:
            raise ValueError(f"the {name} result ({result.get('label')!r}) has no per-episode outcomes: it was "
                             "written by an older eval.py; evaluate that model again")
    kept = [{k: v for k, v in (r.get("env_kwargs") or {}).items() if k not in differ} for r in (a, b)]
    if a["env"] != b["env"] or kept[0] != kept[1]:
        raise ValueError(f"different env settings: {a['env']} {a.get('env_kwargs')} "
                         f"vs {b['env']} {b.get('env_kwargs')}"
                         + (f" (beyond {', '.join(differ)})" if differ else " (--differ KEY allows one, where the "
                            "seeds still give the same tasks)"))
    first = {(e["seed"], e["sample"]): e["solved"] for e in a["per_episode"]}
    second = {(e["seed"], e["sample"]): e["solved"] for e in b["per_episode"]}
    common = sorted(first.keys() & second.keys())
    if not common:
        raise ValueError(f"no episodes in common: seeds {a['seeds']} vs {b['seeds']}")
    only_b = sum(second[k] and not first[k] for k in common)
    only_a = sum(first[k] and not second[k] for k in common)
    n = only_a + only_b
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n) if n else 1.0
    differing = {k: [(r.get("env_kwargs") or {}).get(k) for r in (a, b)] for k in differ}
    return {"a": a["label"], "b": b["label"], "episodes": len(common),
            **({"env_kwargs_a_b": {k: v for k, v in differing.items() if v[0] != v[1]}} if differ else {}),
            "a_solve_rate": sum(first[k] for k in common) / len(common),
            "b_solve_rate": sum(second[k] for k in common) / len(common),
            "solved_by_b_only": only_b, "solved_by_a_only": only_a, "p_value": p}


def paired_line(c: dict) -> str:
    return (f"{c['b']} vs {c['a']} on the same {c['episodes']} episodes: "
            f"{c['b_solve_rate']:.1%} vs {c['a_solve_rate']:.1%}; "
            f"solved by {c['b']} only: {c['solved_by_b_only']}, by {c['a']} only: {c['solved_by_a_only']}; "
            f"McNemar exact p = {c['p_value']:.3g}")


def markdown_row(result: dict) -> str:
    low, high = result["solve_rate_ci95"]
    cells = [result["label"], result["env"], str(result["episodes"]),
             f"{result['solve_rate']:.1%} [{low:.1%}, {high:.1%}]", f"{result['mean_return']:.3f}",
             f"{result['mean_turns']:.2f}", f"{result['invalid_call_rate']:.1%}", f"{result['format_error_rate']:.1%}",
             f"{result['tool_call_rate']:.0%}",
             f"{result['pass@' + str(result['k'])]:.1%}" if result["k"] > 1 else "-"]
    return "| " + " | ".join(cells) + " |"


MARKDOWN_HEADER = ("| policy | env | episodes | solve rate [95% CI] | mean return | mean turns | invalid calls "
                   "| format errors | tool calls per turn | pass@k |\n|---|---|---|---|---|---|---|---|---|---|")


def heldout_results(run: str | Path) -> list[dict]:
    """A GRPO run's held-out measurements (`<run>/heldout/step-<N>.json`, written with eval.every_steps), by step."""
    paths = sorted(Path(run, "heldout").glob("step-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    if not paths:
        raise ValueError(f"{run}: no heldout/step-*.json (train with --set eval.every_steps=N to write them)")
    return [json.loads(p.read_text()) for p in paths]


def heldout_table(runs: list[str | Path]) -> str:
    """Markdown: every held-out measurement of each run, each against the run's first one (paired, on
    the same episodes), then each run's last against the first run's last."""
    header = ("| run | step | episodes | solve rate [95% CI] | invalid calls | format errors | moves by kind | "
              "vs its first: solved only now / only then, McNemar p |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    lasts = []
    for run in runs:
        results = heldout_results(run)
        first = results[0]
        for r in results:
            low, high = r["solve_rate_ci95"]
            c = paired_comparison(first, r)
            lines.append(f"| {Path(run).name} | {r.get('step', '?')} | {r['episodes']} | {r['solve_rate']:.1%} "
                         f"[{low:.1%}, {high:.1%}] | {r['invalid_call_rate']:.1%} | {r['format_error_rate']:.1%} | "
                         f"{kinds_cell(r)} | {c['solved_by_b_only']} / {c['solved_by_a_only']}, "
                         f"p = {c['p_value']:.3g} |")
        lasts.append(results[-1])
    lines += ["", *(paired_line(paired_comparison(lasts[0], last)) for last in lasts[1:])]
    return "\n".join(lines) + "\n"


def kinds_cell(result: dict) -> str:
    """`clash 21% / right 61% / wrong 8% / ...` (kinds in name order): a result's `move_shares` (results of envs
    that count no moves, and those written before moves were counted, have none: '-')."""
    return " / ".join(f"{kind} {share:.0%}" for kind, share in result.get("move_shares", {}).items()) or "-"

