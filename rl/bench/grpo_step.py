"""Where a GRPO step's time goes on each generation backend: generation, scoring, training.

    python launch/bench.py --suite grpo_step --set model=runs/sft --set episodes=256 --set steps=4
    python launch/bench.py --suite grpo_step --set model=runs/sft --set episodes=256 --set steps=4 \
        --set accelerate=configs/accelerate/zero2.yaml --set processes=2

Each backend (`backends=vllm,hf`) trains `steps` GRPO steps with `launch/grpo.py`, in a process of its own, as a
user runs it: the config (`configs/sudoku-sft.yaml`: its sizes, dtype, rewards), `model`, and `episodes` per step
(`num_generations` x puzzles; gradient accumulation takes the rest), with `overrides` (`;`-separated `key=value`)
on top. With `accelerate` (a config file) and `processes`, each run is `accelerate launch` of those processes,
the `episodes` spread over them. Rows are means over the steps after the first, which also starts the engine and
captures CUDA graphs; each step's parts come from the run's metrics.jsonl:

- generation: `rollout/wall_s`, the rollout from weight sync to the last episode's end;
- scoring: `time/generate_and_score_s` minus that: the logprob passes, rewards, advantages, sample log;
- training: the step's wall time (`perf/step_s`, optimizer step included) minus `time/generate_and_score_s`:
  the loss passes, clipping and the optimizer step;
- engine: `rollout/engine_steps` and `rollout/engine_busy_s`, the engine's steps (`hf`: its batched `generate`
  calls) and the time in them, where they run in the trainer's process (`rl/engine_clock.py`); the rest of the
  generation is the weight push and its check, adding requests, and the engine waiting for its episodes;
- on `vllm`, the check of each weight push: `sync_logprob_diff_mean` (engine vs trainer after the
  push) and `sync_logprob_diff_stale_mean` (before it), in nats per token.

A `vllm` entry may set `rollout.vllm` fields for its own run, each as `:field=value`, so two settings of the engine
race in one run: `backends=vllm,vllm:engine_process=true,hf` or `backends=vllm:admit=each,vllm:admit=together`.

Every row also has episodes/s and its step time over the first backend's (`step_s_over_first`); the parts are
process 0's (every process waits for the others at the step's collectives).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rl.bench import free_port, suite

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = ("vllm", "hf")


def backend_runs(given: str) -> list[tuple[str, list[str]]]:
    """`backends` as (entry, its own overrides): `vllm:admit=each` is vllm with rollout.vllm.admit=each."""
    from rl.config import VLLMSection

    fields = [f.name for f in dataclasses.fields(VLLMSection) if not str(f.type).startswith(("dict", "list"))]
    runs = []
    for entry in (b.strip() for b in given.split(",")):
        if not entry:
            continue
        backend, *sets = entry.split(":")
        if backend not in BACKENDS:
            raise ValueError(f"backends={given!r}: {backend!r} is no backend (accepted: vllm and/or hf, "
                             "comma-separated; vllm-server needs servers started apart)")
        bad = [s for s in sets if backend != "vllm" or s.partition("=")[0] not in fields or "=" not in s]
        if bad:
            raise ValueError(f"backends={given!r}: {entry!r} sets {bad} (accepted after vllm: :field=value, a field "
                             f"of rollout.vllm that takes one value: {', '.join(fields)}; others go in overrides)")
        runs.append((entry, [f"rollout.vllm.{s}" for s in sets]))
    if not runs:
        raise ValueError(f"backends={given!r}: none given (accepted: vllm and/or hf, comma-separated)")
    if len({entry for entry, _ in runs}) < len(runs):
        raise ValueError(f"backends={given!r}: an entry is given twice")
    return runs


def resolve_options(options: dict) -> dict:
    backends = backend_runs(str(options.get("backends", "vllm,hf")))
    steps, episodes = int(options.get("steps", 3)), int(options.get("episodes", 256))
    if steps < 2:
        raise ValueError(f"steps={steps}: must be at least 2 "
                         "(the first step also starts the engine and is not counted)")
    overrides = [o.strip() for o in str(options.get("overrides", "")).split(";") if o.strip()]
    processes, accelerate = int(options.get("processes", 1)), options.get("accelerate")
    if processes < 1 or (processes > 1 and not accelerate):
        raise ValueError(f"processes={processes}: must be 1, or more with accelerate=<config file> "
                         "(e.g. accelerate=configs/accelerate/ddp.yaml)")
    if accelerate and not Path(accelerate).is_file():
        raise ValueError(f"accelerate={accelerate!r}: no such file (accepted: an accelerate config, e.g. "
                         "configs/accelerate/zero2.yaml)")
    return {"backends": backends, "steps": steps, "episodes": episodes, "overrides": overrides,
            "processes": processes, "accelerate": str(Path(accelerate).resolve()) if accelerate else None,
            "model": _here(str(options.get("model", "gemma-3-270m"))),
            "config": _here(str(options.get("config", ROOT / "configs" / "sudoku-sft.yaml")))}


def _here(name: str) -> str:
    """A path given relative to where the bench runs, made absolute (the runs start in the checkout's root)."""
    return str(Path(name).resolve()) if Path(name).exists() else name


def run_name(entry: str) -> str:
    """The run's folder for a `backends` entry: `vllm:admit=each` runs as vllm-admit-each."""
    return entry.replace(":", "-").replace("=", "-")


def grpo_command(opts: dict, entry: tuple[str, list[str]], out: Path) -> list[str]:
    """launch/grpo.py for one `backends` entry: `episodes` per optimizer step, no checkpoint, no wandb."""
    from rl.config import load_config

    name, own = entry
    overrides = [*opts["overrides"], *own]
    cfg = load_config(Path(opts["config"]), overrides)
    per_step = cfg.grpo.per_device_train_batch_size * opts["processes"]
    if opts["episodes"] % per_step or opts["episodes"] % cfg.grpo.num_generations:
        raise ValueError(f"episodes={opts['episodes']}: must be a multiple of grpo.per_device_train_batch_size "
                         f"x processes ({per_step}) and grpo.num_generations ({cfg.grpo.num_generations})")
    sets = [f"grpo.max_steps={opts['steps']}", f"grpo.gradient_accumulation_steps={opts['episodes'] // per_step}",
            f"grpo.save_steps={opts['steps'] + 1}", f"rollout.backend={name.split(':')[0]}", "log.wandb=off",
            f"output_dir={out}", *overrides]
    launcher = [sys.executable]
    if opts["accelerate"]:
        launcher += ["-m", "accelerate.commands.launch", "--config_file", opts["accelerate"],
                     "--num_processes", str(opts["processes"]), "--main_process_port", str(free_port())]
    return launcher + [str(ROOT / "launch" / "grpo.py"), "--config", opts["config"], "--env", cfg.env.name,
            "--model", opts["model"], "--name", run_name(name)] + [arg for s in sets for arg in ("--set", s)]


def step_parts(rows: list[dict]) -> dict:
    """Mean seconds per step of each part, over the steps after the first; and every step's own row (`per_step`)."""
    logged = [r for r in rows if "perf/step_s" in r]  # the step rows, the first (untimed) one too
    timed = [r for r in logged if "time/generate_and_score_s" in r][1:]
    if not timed:
        raise RuntimeError(f"grpo_step: no timed step after the first in {len(rows)} metrics rows")

    def mean(fn) -> float:
        return statistics.fmean(fn(r) for r in timed)

    parts = {"steps_timed": len(timed), "step_s": mean(lambda r: r["perf/step_s"]),
             "generation_s": mean(lambda r: r["rollout/wall_s"]),
             "scoring_s": mean(lambda r: r["time/generate_and_score_s"] - r["rollout/wall_s"]),
             "training_s": mean(lambda r: r["perf/step_s"] - r["time/generate_and_score_s"]),
             "weight_sync_s": mean(lambda r: r.get("rollout/weight_sync_s", 0.0)),
             "solved": mean(lambda r: r.get("env/solved", 0.0))}
    # an engine's check of each push (rl.vllm_weights.push_checked): the mean logprob gap to the trainer after
    # the push, and before it (the engine still on the last step's weights)
    # and where the engine's steps run in the trainer's process (rl.engine_clock), their count and time in them
    for key in ("sync_logprob_diff_mean", "sync_logprob_diff_stale_mean", "engine_steps", "engine_busy_s"):
        if all(f"rollout/{key}" in r for r in timed):
            parts[key] = mean(lambda r, k=f"rollout/{key}": r[k])
    # every step as its row in the run's log has it
    parts["per_step"] = [{"step": r.get("step"), "reward": r.get("reward"), "solved": r.get("env/solved"),
                          "turns": r.get("env/model_turns"), "step_s": r["perf/step_s"],
                          "generation_s": r.get("rollout/wall_s"), "engine_busy_s": r.get("rollout/engine_busy_s"),
                          "env_s": r.get("rollout/env_s")} for r in logged]
    return parts


@suite("grpo_step", options=["model", "config", "backends", "steps", "episodes", "overrides", "processes",
                                 "accelerate"])
def grpo_step(options: dict) -> list[dict]:
    """Seconds per GRPO step split into generation / scoring / training, on each backend, same config."""
    opts = resolve_options(options)
    rows = []
    with tempfile.TemporaryDirectory(prefix="grpo-step-") as tmp:
        for entry in opts["backends"]:
            backend = entry[0]
            command = grpo_command(opts, entry, Path(tmp))
            done = subprocess.run(command, cwd=ROOT, check=False)  # its output shows as it trains
            metrics = Path(tmp) / run_name(backend) / "metrics.jsonl"
            if done.returncode != 0 or not metrics.exists():
                raise RuntimeError(f"grpo_step: the {backend} run exited with code {done.returncode}; its output "
                                   f"is above (command: {' '.join(command)})")
            parts = step_parts([json.loads(line) for line in metrics.read_text().splitlines() if line.strip()])
            rows.append({"backend": backend, "model": opts["model"], "processes": opts["processes"],
                         "episodes": opts["episodes"], **parts, "episodes_per_s": opts["episodes"] / parts["step_s"]})
    for row in rows:
        row["step_s_over_first"] = row["step_s"] / rows[0]["step_s"]
    return rows
