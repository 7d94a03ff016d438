"""toolgym's rollout engine against TRL's own `environment_factory` agent loop.

Both run inside the same method, `GRPOTrainer._generate_and_score_completions`, on the
same batch, model, LoRA config, chat template, env and generation family (transformers
`generate`); only the rollout differs: ours is a `rollout_func` (one coroutine per
episode, env steps concurrent), TRL's is its tool-call loop (resets and tool calls one
rollout after another, the still-active batch regenerated turn by turn). Every env call,
`reset` included, sleeps `latency_s` first, like a remote env. The same batch then takes
one loss + backward pass, so the table also shows the time split with training.

    python launch/bench.py --suite agent_loop --set model=runs/sft-gemma --set latency_s=0.05
"""

from __future__ import annotations

import copy
import time
from typing import Any

from envs.base import ToolCall
from envs.sudoku import SudokuEnv
from rl.bench import suite


class SlowSudoku(SudokuEnv):
    """Sudoku whose every reset and step first waits `latency_s`, as a remote env would.

    Episodes end as TRL's loop ends them, so both loops do the same work per episode: at a
    turn without a tool call, or at the turn cap; invalid moves never end one (TRL's loop
    cannot see an env's termination and would call on).
    """

    calls = 0  # tool calls made, over all instances (both loops count the same way)

    def __init__(self, latency_s: float = 0.05, **kwargs: Any):
        kwargs["max_invalid"] = None
        super().__init__(**kwargs)
        self.latency_s = latency_s

    def on_text(self, text: str) -> str:
        self.terminated = True  # TRL's loop stops at a turn without a tool call
        return super().on_text(text)

    def reset(self, *, seed=None, options=None):
        time.sleep(self.latency_s)
        return super().reset(seed=seed, options=options)

    def step(self, action):
        time.sleep(self.latency_s)
        if isinstance(action, (ToolCall, dict)):
            SlowSudoku.calls += 1
        return super().step(action)


class TRLSudoku:
    """The same env in the shape TRL's `environment_factory` wants: public methods are tools."""

    def __init__(self, latency_s: float, env_kwargs: dict):
        self.env = SlowSudoku(latency_s=latency_s, **env_kwargs)

    def reset(self, seed: int, **kwargs) -> str:
        observation, _ = self.env.reset(seed=int(seed))
        return observation

    def place(self, row: int, col: int, digit: int) -> str:
        """Write a digit into an empty cell of the board.

        Args:
            row: Row number, counting from 1 at the top.
            col: Column number, counting from 1 at the left.
            digit: The digit to write, from 1 to the board size.
        """
        return self.env.step(ToolCall("place", {"row": row, "col": col, "digit": digit}))[0]

    def show_board(self) -> str:
        """Show the current board."""
        return self.env.step(ToolCall("show_board", {}))[0]


def hermes_response_template(turn_start: str, turn_end: str) -> dict:
    """A transformers `response_template` for Hermes tool calls in a Gemma-style turn, so TRL
    can parse the tool calls our chat template's models make."""
    return {
        "defaults": {"role": "assistant"},
        "start_anchor": turn_start,
        "fields": {
            "tool_calls": {"open": "<tool_call>", "close_pattern": r"</tool_call>\s*", "repeats": True,
                           "content": "json", "transform": {"type": "function", "function": "{content}"}},
            "content": {"close_pattern": rf"{turn_end}\s*", "content": "text"},
        },
    }


def _batch(seeds: list[int], num_generations: int) -> list[dict]:
    """Rows as GRPO's sampler hands them over: each seed `num_generations` times in a row."""
    return [{"prompt": [{"role": "user", "content": ""}], "seed": s} for s in seeds for _ in range(num_generations)]


def _solved(environments=None, **kwargs) -> list[float]:
    return [float(e.env.solved) for e in environments]


def _measure(trainer, inputs: list[dict]) -> dict:
    import torch
    from trl.trainer.utils import split_tensor_dict

    SlowSudoku.calls = 0
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    trainer.model.train()
    started = time.perf_counter()
    batch = trainer._generate_and_score_completions(inputs)
    rollout_s = time.perf_counter() - started
    calls = SlowSudoku.calls
    steps = trainer.args.gradient_accumulation_steps
    trainer.current_gradient_accumulation_steps = steps  # set by train()
    started = time.perf_counter()
    for micro_batch in split_tensor_dict(batch, steps):  # as train() does: one loss + backward per micro-batch
        trainer.compute_loss(trainer.model, micro_batch).backward()
    trainer.model.zero_grad(set_to_none=True)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    train_s = time.perf_counter() - started
    mask = batch["completion_mask"]
    tool_mask = batch.get("tool_mask")
    model_tokens = int((mask * tool_mask).sum() if tool_mask is not None else mask.sum())
    n = len(inputs)
    row = {"episodes": n, "rollout_s": rollout_s, "episodes_per_s": n / rollout_s,
           "model_tokens_per_episode": model_tokens / n,
           "model_tokens_per_s": model_tokens / rollout_s, "env_steps_per_s": (calls + n) / rollout_s,
           "tool_calls_per_episode": calls / n, "train_s": train_s}
    if torch.cuda.is_available():
        row["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return row


@suite("agent_loop")
def agent_loop(options: dict) -> list[dict]:
    """Episodes/s: toolgym's rollout vs TRL's environment_factory loop, same model/env/latency, transformers."""
    import resource

    from trl import GRPOTrainer

    from rl.models import load_model, lora_config
    from rl.trainer import build_trainer

    latency = float(options.get("latency_s", 0.05))
    episodes, num_generations = int(options.get("episodes", 16)), int(options.get("num_generations", 4))
    model_name = str(options.get("model", "gemma-3-270m"))
    cfg = _agent_loop_config(options, latency, episodes, num_generations, model_name)
    seeds = list(range(episodes // num_generations))
    inputs = _batch(seeds, num_generations)

    ours = build_trainer(cfg)
    tokenizer = ours.processing_class
    turn_start, turn_end = "<start_of_turn>model\n", "<end_of_turn>"
    theirs_tokenizer = copy.deepcopy(tokenizer)
    theirs_tokenizer.response_template = hermes_response_template(turn_start, turn_end)
    model, _ = load_model(cfg.model, theirs_tokenizer)
    env_kwargs = {k: v for k, v in cfg.env.kwargs.items() if k != "latency_s"}
    r = cfg.rollout
    args = copy.deepcopy(ours.args)
    args.output_dir = str(ours.args.output_dir) + "-trl"
    args.max_tool_calling_iterations = r.max_turns - 1  # turns = first + one per tool round
    args.reward_weights = None
    args.generation_kwargs = {"max_new_tokens": r.max_new_tokens}  # the same cap per model turn as ours
    theirs = GRPOTrainer(
        model=model, processing_class=theirs_tokenizer, reward_funcs=[_solved], args=args,
        train_dataset=_dataset(seeds), peft_config=lora_config(cfg.lora, model),
        environment_factory=lambda: TRLSudoku(latency, env_kwargs),
    )

    rows = []
    for name, trainer in (("toolgym rollout_func", ours), ("TRL environment_factory", theirs)):
        _measure(trainer, inputs[:num_generations])  # warm-up: kernels, caches, lazy imports
        row = {"loop": name, **_measure(trainer, inputs)}
        row["peak_rss_gib_so_far"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        rows.append(row)
    ours_rate, trl_rate = rows[0]["episodes_per_s"], rows[1]["episodes_per_s"]
    for row in rows:
        row.update(model=model_name, latency_s=latency, max_turns=r.max_turns, speedup_vs_trl=row["episodes_per_s"] / trl_rate)
    rows[0]["speedup_vs_trl"] = ours_rate / trl_rate
    return rows


def _agent_loop_config(options: dict, latency: float, episodes: int, num_generations: int, model_name: str):
    """The run config both loops share: the slow Sudoku env, the same model, caps and batch shape."""
    from rl.config import load_config

    micro = int(options.get("micro_batch", 4))
    if episodes % micro or micro % num_generations:
        raise ValueError(f"episodes={episodes} must be a multiple of micro_batch={micro}, "
                         f"itself a multiple of num_generations={num_generations}")
    warm = model_name not in ("gemma-3-270m", "tiny")
    overrides = [
        f"model.name={model_name}", "log.wandb=off", "name=bench-agent-loop",
        f"output_dir={options.get('output_dir', 'bench-results/runs')}",
        "env.name=rl.bench.agent_loop:SlowSudoku", f"env.kwargs.latency_s={latency}",
        f"rollout.max_turns={int(options.get('max_turns', 4))}",
        f"rollout.max_new_tokens={int(options.get('max_new_tokens', 48))}",
        # TRL computes logprobs per micro-batch; full-vocabulary logits of 16 long episodes at
        # once need ~20 GB, so the batch of `episodes` is micro-batches of `micro_batch`.
        f"grpo.num_generations={num_generations}", f"grpo.per_device_train_batch_size={micro}",
        f"grpo.gradient_accumulation_steps={episodes // micro}",
        "rollout.backend=hf", f"model.chat_template={options.get('chat_template', 'gemma3_tools')}",
    ]
    if warm:  # a warm-started model calls tools and ends its turns by itself, as TRL's loop needs
        overrides += ["rollout.response_prefix=", "rollout.stop_after_tool_call=false"]
    return load_config(options.get("config", "configs/sudoku.yaml"), overrides)


def _dataset(seeds: list[int]):
    from datasets import Dataset

    return Dataset.from_list(_batch(seeds, 1))
