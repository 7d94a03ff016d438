"""One loop of the agent_loop suite (`rl.bench.agent_loop`) in a process of its own: it builds the
loop's trainer, plays a warm-up batch, times one batch, and writes the loop's row as JSON.

    python -m rl.bench.agent_loop_run ours|trl OPTIONS_JSON ROW_PATH

OPTIONS_JSON: the suite's resolved options with one latency (`rl.bench.agent_loop.resolve_options`).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import resource
import sys
import time
from pathlib import Path

from rl.bench.agent_loop import LOOPS, SlowSudoku, TRLSudoku, agent_loop_config, batch, hermes_response_template

TURN_START, TURN_END = "<start_of_turn>model\n", "<end_of_turn>"
_TRL_TURNS: list[int] = []  # model turns of each episode TRL handed its reward function, in order


class PushClock:
    """Counts and times a weight push (ours: `VLLMBackend.load_weights`, TRL's: `sync_weights`)."""

    def __init__(self):
        self.count, self.seconds = 0, 0.0

    def wrap(self, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.count += 1
                self.seconds += time.perf_counter() - started

        return timed

    def take(self) -> tuple[int, float]:
        taken = (self.count, self.seconds)
        self.count, self.seconds = 0, 0.0
        return taken


def solved(prompts, completions, environments=None, **kwargs) -> list[float]:
    """TRL's reward: the puzzle solved. It also records each episode's model turns (its assistant
    messages), which TRL's loop reports nowhere else per episode."""
    _TRL_TURNS.extend(sum(m.get("role") == "assistant" for m in c) for c in completions)
    return [float(e.env.solved) for e in environments]


def ours_trainer(cfg, clock: PushClock):
    from rl.trainer import build_trainer

    if cfg.rollout.backend == "vllm":
        from rl.vllm_backend import VLLMBackend

        VLLMBackend.load_weights = clock.wrap(VLLMBackend.load_weights)  # this process's own engine class
    return build_trainer(cfg)


def trl_trainer(cfg, clock: PushClock):
    """TRL's GRPOTrainer with `environment_factory` on the same model, LoRA, caps and sampling as ours."""
    from datasets import Dataset
    from trl import GRPOTrainer

    from rl.models import load_model, load_tokenizer, lora_config
    from rl.trainer import grpo_args

    tokenizer = load_tokenizer(cfg.model)
    theirs_tokenizer = copy.deepcopy(tokenizer)
    theirs_tokenizer.response_template = hermes_response_template(TURN_START, TURN_END)
    model, _ = load_model(cfg.model, theirs_tokenizer)
    r = cfg.rollout
    args = grpo_args(cfg, model, [1.0])
    args.output_dir = str(args.output_dir) + "-trl"
    args.max_tool_calling_iterations = r.max_turns - 1  # turns = first + one per tool round
    args.reward_weights = None
    args.generation_kwargs = {"max_new_tokens": r.max_new_tokens}  # the same cap per model turn as ours
    if r.backend == "vllm":
        _trl_colocate(cfg, args, model, tokenizer)
    env_kwargs = {k: v for k, v in cfg.env.kwargs.items() if k != "latency_s"}
    latency = float(cfg.env.kwargs["latency_s"])
    seeds = sorted({row["seed"] for row in _inputs(cfg)})
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # environment_factory is what is measured
    trainer = GRPOTrainer(
        model=model, processing_class=theirs_tokenizer, reward_funcs=[solved], args=args,
        train_dataset=Dataset.from_list(batch(seeds, 1)), peft_config=lora_config(cfg.lora, model),
        environment_factory=lambda: TRLSudoku(latency, env_kwargs),
    )
    if r.backend == "vllm":
        trainer.vllm_generation.sync_weights = clock.wrap(trainer.vllm_generation.sync_weights)
        _skip_first_sync_on_cpu(trainer)
    return trainer


def _skip_first_sync_on_cpu(trainer) -> None:
    """On a CPU, TRL's sync (the engine model's `load_weights`, tensor by tensor) cannot run: vLLM's CPU
    linear layers keep only a packed copy of their weight and empty the `weight` parameter, so it fails
    with "'Parameter' object has no attribute 'weight_loader'". Its engine started from the trainer's
    very weights (`_trl_colocate`), so the first sync would push the same values: it is marked done.
    On a GPU TRL's own first sync runs, in the warm-up."""
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        trainer._last_loaded_step = trainer.state.global_step


def _trl_colocate(cfg, args, model, tokenizer) -> None:
    """TRL's own colocate mode, its engine set up as ours is (`rl.vllm_backend.VLLMBackend.from_settings`)."""
    import trl.generation.vllm_generation as trl_vllm
    from vllm.platforms import current_platform

    from rl.vllm_weights import save_for_vllm

    v, r = cfg.rollout.vllm, cfg.rollout
    # TRL starts its engine from `model.name_or_path`; the built-in tiny model and LoRA checkpoints have
    # no directory vLLM can read, so it gets the same merged start-up checkpoint ours writes.
    start = save_for_vllm(model, tokenizer, Path(args.output_dir) / "vllm-start")
    model.name_or_path = model.config._name_or_path = str(start)
    args.use_vllm, args.vllm_mode, args.vllm_enable_sleep_mode = True, "colocate", False
    args.vllm_gpu_memory_utilization, args.vllm_max_model_length = v.gpu_memory_utilization, v.max_model_len
    # vLLM's SamplingParams name the per-turn cap max_tokens; the stop ids are those TRL's transformers
    # path passes (the model's end-of-turn ids), as ours stops at them
    args.generation_kwargs = {"max_tokens": r.max_new_tokens,
                              "stop_token_ids": list(model.generation_config.eos_token_id)}
    # GRPOConfig has no field for these; ours sets them, so TRL's engine gets them too: the dtype
    # (auto: the trainer's), eager mode on a CPU, and the KV cache size when one is given
    dtype = v.dtype if v.dtype != "auto" else str(next(model.parameters()).dtype).removeprefix("torch.")
    extra = {"dtype": dtype, "enforce_eager": current_platform.is_cpu()}
    if v.kv_cache_gib is not None:
        extra["kv_cache_memory_bytes"] = int(v.kv_cache_gib * 2**30)
    trl_vllm.LLM = functools.partial(trl_vllm.LLM, **extra)


def _inputs(cfg) -> list[dict]:
    g = cfg.grpo
    episodes = g.per_device_train_batch_size * g.gradient_accumulation_steps
    return batch(list(range(episodes // g.num_generations)), g.num_generations)


def played(loop: str, trainer) -> list[int]:
    """Model turns of each episode of the last batch, as the loop itself counted them."""
    if loop == "ours":
        return [int(t.info["model_turns"]) for t in trainer.rollout_func.batch.trajectories]
    return list(_TRL_TURNS)


def measure(loop: str, trainer, inputs: list[dict]) -> dict:
    """Time one batch through `_generate_and_score_completions`, then its loss + backward passes."""
    import torch
    from trl.trainer.utils import split_tensor_dict

    SlowSudoku.calls = 0
    _TRL_TURNS.clear()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    trainer.model.train()
    started = time.perf_counter()
    out = trainer._generate_and_score_completions(inputs)
    rollout_s = time.perf_counter() - started
    calls, turns = SlowSudoku.calls, played(loop, trainer)
    steps = trainer.args.gradient_accumulation_steps
    trainer.current_gradient_accumulation_steps = steps  # set by train()
    started = time.perf_counter()
    for micro_batch in split_tensor_dict(out, steps):  # as train() does: one loss + backward per micro-batch
        trainer.compute_loss(trainer.model, micro_batch).backward()
    trainer.model.zero_grad(set_to_none=True)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    train_s = time.perf_counter() - started
    mask, tool_mask = out["completion_mask"], out.get("tool_mask")
    model_tokens = int((mask * tool_mask).sum() if tool_mask is not None else mask.sum())
    n = len(turns)  # episodes the loop played and reported, not the batch asked for
    row = {"episodes": n, "rollout_s": rollout_s, "episodes_per_s": n / rollout_s,
           "turns_per_episode": sum(turns) / n, "max_turns_seen": max(turns),
           "tool_calls_per_episode": calls / n, "model_tokens_per_episode": model_tokens / n,
           "model_tokens_per_s": model_tokens / rollout_s, "env_steps_per_s": (calls + n) / rollout_s,
           "train_s": train_s}
    if torch.cuda.is_available():
        row["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return row


def engine_dtype(loop: str, trainer) -> str | None:
    if loop == "ours":
        llm = getattr(trainer.rollout_func.backend, "llm", None)
    else:
        llm = getattr(getattr(trainer, "vllm_generation", None), "llm", None)
    return None if llm is None else str(llm.llm_engine.model_config.dtype).removeprefix("torch.")


def run(loop: str, opts: dict) -> dict:
    """The loop's row: a warm-up batch of one group (start-up costs, first weight sync), then the timed batch."""
    started = time.perf_counter()
    cfg = agent_loop_config(opts)
    clock = PushClock()
    trainer = (ours_trainer if loop == "ours" else trl_trainer)(cfg, clock)
    built_s = time.perf_counter() - started
    inputs = _inputs(cfg)
    started = time.perf_counter()
    measure(loop, trainer, inputs[:cfg.grpo.num_generations])
    warmup_s = time.perf_counter() - started
    _, warmup_sync_s = clock.take()
    row = {"loop": LOOPS[loop], "backend": cfg.rollout.backend, "latency_s": opts["latency_s"],
           **measure(loop, trainer, inputs)}
    row.update(weight_pushes_timed=clock.take()[0], warmup_weight_sync_s=warmup_sync_s, warmup_s=warmup_s,
               build_s=built_s,
               peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
               model=str(opts["model"]), max_turns=cfg.rollout.max_turns, pid=os.getpid())
    if cfg.rollout.backend == "vllm":
        row["engine_dtype"] = engine_dtype(loop, trainer)
    return row


def main(argv: list[str]) -> int:
    loop, options, row_path = argv
    if loop not in LOOPS:
        raise SystemExit(f"loop={loop!r} is not accepted (accepted: {', '.join(LOOPS)})")
    row = run(loop, json.loads(options))
    Path(row_path).write_text(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
