"""toolgym's rollout engine against TRL's own `environment_factory` agent loop.

Both run inside the same method, `GRPOTrainer._generate_and_score_completions`, on the
same batch, model, LoRA config, chat template, env, turn cap, sampling settings and
generation family; only the rollout differs: ours is a `rollout_func` (one coroutine per
episode, env steps concurrent), TRL's is its tool-call loop (resets and tool calls one
rollout after another, the still-active batch regenerated turn by turn). Every env call,
`reset` included, sleeps `latency_s` first, like a remote env. The same batch then takes
one loss + backward pass, so the table also shows the time split with training.

Generation families (`backend`):

- `hf`: transformers `generate` on both sides (TRL's default, our `rollout.backend=hf`);
- `vllm`: a colocated vLLM engine on both sides: ours is `rollout.backend=vllm`, TRL's is
  its own colocate mode (`use_vllm=True, vllm_mode="colocate"`, sleep mode off). Both
  engines get the same memory share, dtype and maximum length (and KV cache size and eager
  mode on a CPU, which TRL's config has no field for; they are added to TRL's engine
  arguments as ours gets them). Each row gives the engine's dtype as it started.

Each loop runs in a fresh process of its own (`python -m rl.bench.agent_loop_run`), one
after the other, with the same options and seeds: two vLLM engines in one process would
share vLLM's process-global state, and TRL's colocate mode sets up torch.distributed for
its engine. Each process first plays a warm-up batch of `num_generations` episodes (start-up
costs: kernels, caches, lazy imports, our engine's start, TRL's first weight sync, which it
runs because its step 0 differs from its last loaded step -1), then the timed batch. No
weight sync falls inside the timed batch on either side (`weight_pushes_timed`, 0 on both);
`warmup_weight_sync_s` is each side's push time before it (ours: 0, its engine starts from
the trainer's weights, written to disk). On a CPU, TRL's sync cannot write into vLLM's packed
CPU layers, so its first one is skipped there (its engine starts from the same weights as
ours; `rl.bench.agent_loop_run`); on a GPU it runs. A training run pays a push per optimizer
step on both sides; this measures one rollout at fixed weights.

Per row: episodes/s, model tokens, mean model turns (`turns_per_episode`) and tool calls per
episode, the loss + backward time, peak memory of the loop's own process, and the speedup
of ours over TRL's at the same latency. `latency_s` may be a list (`latency_s=0,0.05`): each
latency gets its own pair of processes and rows.

    python launch/bench.py --suite agent_loop --set model=runs/sft-gemma --set latency_s=0.05
    python launch/bench.py --suite agent_loop --set backend=vllm --set model=runs/sft --set latency_s=0,0.05
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from envs.base import ToolCall
from envs.sudoku import SudokuEnv
from rl.bench import free_port, suite

BACKENDS = ("hf", "vllm")
LOOPS = {"ours": "toolgym rollout_func", "trl": "TRL environment_factory"}
# option -> default; the vLLM ones apply to both engines alike and only with backend=vllm
OPTIONS = {"backend": "hf", "latency_s": 0.05, "episodes": 16, "num_generations": 4, "micro_batch": 4, "max_turns": 4,
           "max_new_tokens": 48, "model": "gemma-3-270m", "config": "configs/sudoku.yaml",
           "chat_template": "gemma3_tools", "output_dir": "bench-results/runs"}
VLLM_OPTIONS = {"gpu_memory_utilization": 0.3, "dtype": "auto", "max_model_len": 4096, "kv_cache_gib": None}
VLLM_DTYPES = ("auto", "float32", "bfloat16", "float16")


class SlowSudoku(SudokuEnv):
    """Sudoku whose every reset and step first waits `latency_s`, as a remote env would.

    Episodes end as TRL's loop ends them, so both loops do the same work per episode: at a
    turn without a tool call, or at the turn cap; invalid moves never end one (TRL's loop
    cannot see an env's termination and would call on).
    """

    calls = 0  # tool calls made, over all instances of the process (both loops count the same way)

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


def batch(seeds: list[int], num_generations: int) -> list[dict]:
    """Rows as GRPO's sampler hands them over: each seed `num_generations` times in a row."""
    return [{"prompt": [{"role": "user", "content": ""}], "seed": s} for s in seeds for _ in range(num_generations)]


def resolve_options(options: dict) -> dict:
    """The suite's options with their defaults, checked before any model library loads; `latency_s`
    becomes a list of latencies."""
    known = {**OPTIONS, **VLLM_OPTIONS}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown agent_loop option(s) {unknown} (accepted: {', '.join(known)})")
    backend = options.get("backend", OPTIONS["backend"])
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not accepted (accepted: {', '.join(BACKENDS)})")
    if backend != "vllm" and set(options) & set(VLLM_OPTIONS):
        raise ValueError(f"option(s) {sorted(set(options) & set(VLLM_OPTIONS))} configure vLLM engines: "
                         f"they need backend=vllm (got backend={backend})")
    opts = {**known, **options}
    opts["latency_s"] = _latencies(opts["latency_s"])
    for key in ("episodes", "num_generations", "micro_batch", "max_turns", "max_new_tokens", "max_model_len"):
        if not isinstance(opts[key], int) or isinstance(opts[key], bool) or opts[key] < 1:
            raise ValueError(f"{key}={opts[key]!r} must be an integer >= 1")
    episodes, micro, num_generations = opts["episodes"], opts["micro_batch"], opts["num_generations"]
    if episodes % micro or micro % num_generations:
        raise ValueError(f"episodes={episodes} must be a multiple of micro_batch={micro}, "
                         f"itself a multiple of num_generations={num_generations}")
    if not 0 < float(opts["gpu_memory_utilization"]) <= 1:
        raise ValueError(f"gpu_memory_utilization={opts['gpu_memory_utilization']!r} must be in (0, 1]")
    if opts["dtype"] not in VLLM_DTYPES:
        raise ValueError(f"dtype={opts['dtype']!r} is not accepted (accepted: {', '.join(VLLM_DTYPES)})")
    if opts["kv_cache_gib"] is not None and not float(opts["kv_cache_gib"]) > 0:
        raise ValueError(f"kv_cache_gib={opts['kv_cache_gib']!r} must be a number > 0")
    return opts


def _latencies(value) -> list[float]:
    """`0.05`, `[0, 0.05]` or `"0,0.05"` (as `--set latency_s=0,0.05` arrives) -> [0.0, 0.05]."""
    items = value if isinstance(value, list) else str(value).split(",") if isinstance(value, str) else [value]
    latencies = []
    for item in items:
        try:
            latency = float(item)
        except (TypeError, ValueError):
            latency = math.nan
        if not (math.isfinite(latency) and latency >= 0) or isinstance(item, bool):
            raise ValueError(f"latency_s={value!r}: {item!r} is not a number of seconds >= 0 "
                             "(accepted: one, or several separated by commas, e.g. latency_s=0,0.05)")
        latencies.append(latency)
    if not latencies:
        raise ValueError(f"latency_s={value!r} names no latency (e.g. latency_s=0.05 or latency_s=0,0.05)")
    return latencies


@suite("agent_loop", options=[*OPTIONS, *VLLM_OPTIONS])
def agent_loop(options: dict) -> list[dict]:
    """Episodes/s: toolgym's rollout vs TRL's environment_factory loop, same model/env/latency (hf or vllm)."""
    opts = resolve_options(options)
    rows = []
    for latency in opts["latency_s"]:
        pair = [run_loop(loop, {**opts, "latency_s": latency}) for loop in LOOPS]
        if len(opts["latency_s"]) > 1:  # `--check` matches rows by their first column
            for row in pair:
                row["loop"] += f" @ {latency:g} s"
        rows += with_speedup(pair)
    return rows


def with_speedup(pair: list[dict]) -> list[dict]:
    """Ours and TRL's rows of one latency, each with ours' episodes/s over TRL's (TRL's own: 1)."""
    ours, trl = pair
    ours["speedup_vs_trl"] = ours["episodes_per_s"] / trl["episodes_per_s"]
    trl["speedup_vs_trl"] = 1.0
    return pair


def run_loop(loop: str, opts: dict) -> dict:
    """One loop, measured in a fresh Python process; its row. The process's output shows as it runs."""
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    # TRL's colocated engine sets up torch.distributed (world of 1) on these; a fixed port such as
    # 29500 may be held by another run on the machine
    env["MASTER_ADDR"], env["MASTER_PORT"] = "127.0.0.1", str(free_port())
    with tempfile.TemporaryDirectory(prefix="agent-loop-") as tmp:
        row_path = Path(tmp) / "row.json"
        command = [sys.executable, "-m", "rl.bench.agent_loop_run", loop, json.dumps(opts), str(row_path)]
        done = subprocess.run(command, env=env, check=False)  # a failure is reported below, with the loop
        if done.returncode != 0 or not row_path.exists():
            raise RuntimeError(f"agent_loop: the {LOOPS[loop]} process (backend={opts['backend']}, "
                               f"latency_s={opts['latency_s']}) exited with code {done.returncode} and no row; "
                               "its output is above")
        return json.loads(row_path.read_text())


def agent_loop_config(opts: dict):
    """The run config both loops share: the slow Sudoku env, the same model, caps, batch shape, backend."""
    from rl.config import load_config

    episodes, micro, model_name = opts["episodes"], opts["micro_batch"], str(opts["model"])
    warm = model_name not in ("gemma-3-270m", "tiny")
    overrides = [
        f"model.name={model_name}", "log.wandb=off", "name=bench-agent-loop", f"output_dir={opts['output_dir']}",
        "env.name=rl.bench.agent_loop:SlowSudoku", f"env.kwargs.latency_s={opts['latency_s']}",
        f"rollout.max_turns={opts['max_turns']}", f"rollout.max_new_tokens={opts['max_new_tokens']}",
        # TRL computes logprobs per micro-batch; full-vocabulary logits of 16 long episodes at
        # once need ~20 GB, so the batch of `episodes` is micro-batches of `micro_batch`.
        f"grpo.num_generations={opts['num_generations']}", f"grpo.per_device_train_batch_size={micro}",
        f"grpo.gradient_accumulation_steps={episodes // micro}",
        f"rollout.backend={opts['backend']}", f"model.chat_template={opts['chat_template']}",
    ]
    if opts["backend"] == "vllm":
        overrides += [f"rollout.vllm.gpu_memory_utilization={opts['gpu_memory_utilization']}",
                      f"rollout.vllm.dtype={opts['dtype']}", f"rollout.vllm.max_model_len={opts['max_model_len']}",
                      "rollout.vllm.enable_sleep_mode=false"]
        if opts["kv_cache_gib"] is not None:
            overrides.append(f"rollout.vllm.kv_cache_gib={opts['kv_cache_gib']}")
    if warm:  # a warm-started model calls tools and ends its turns by itself, as TRL's loop needs
        overrides += ["rollout.response_prefix=", "rollout.stop_after_tool_call=false"]
    return load_config(opts["config"], overrides)
