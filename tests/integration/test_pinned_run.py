"""A fixed-seed GRPO run of the tiny model gives the same metrics, to the last bit, release after
release: a refactor of the rollout, the TRL seam, credit or the envs must not change what a run learns.

The numbers below were measured (2 CPU threads, torch 2.13.0+cpu, x86-64) before the envs moved into
packages and again after; both gave them exactly. A change that is meant to alter them (a new default, a fix)
updates them in the same commit and says why.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# A reward that differs between episodes, so that every step has advantages, a loss and a gradient
# (the tiny model never solves a puzzle: the built-in rewards would all be 0).
LENGTH_REWARD = ("def length(prompts, completions, completion_ids, **kwargs):\n"
                 "    return [len(ids) / 100 for ids in completion_ids]\n")

PINNED = [
    {"loss": -0.18469227850437164, "grad_norm": 0.871468186378479, "entropy": 5.937844753265381,
     "reward": 3.882500171661377, "reward_std": 0.13573871552944183, "num_tokens": 2952.0,
     "completions/mean_length": 113.0, "step_advantage/abs_mean": 0.7453692235833053,
     "env/format_errors": 3.0, "env/model_turns": 3.0},
    {"loss": -0.2561124265193939, "grad_norm": 0.8323773741722107, "entropy": 5.936917781829834,
     "reward": 3.815000057220459, "reward_std": 0.22575806081295013, "num_tokens": 5865.0,
     "completions/mean_length": 103.25, "step_advantage/abs_mean": 0.8412365612808252,
     "env/format_errors": 3.0, "env/model_turns": 3.0},
    {"loss": -0.03618255630135536, "grad_norm": 0.9330770373344421, "entropy": 5.936777114868164,
     "reward": 3.7350001335144043, "reward_std": 0.026457488536834717, "num_tokens": 8750.0,
     "completions/mean_length": 96.25, "step_advantage/abs_mean": 0.7530825587793134,
     "env/format_errors": 3.0, "env/model_turns": 3.0},
]


def test_a_fixed_seed_tiny_run_gives_the_pinned_metrics(tmp_path):
    (tmp_path / "lenrew.py").write_text(LENGTH_REWARD)
    result = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "grpo.py"), "--env", "sudoku", "--model", "tiny", "--name", "pin",
         "--reward", "lenrew.py:length=1", "--set", f"output_dir={tmp_path}", "--set", "log.wandb=off",
         "--set", "grpo.max_steps=3", "--set", "grpo.per_device_train_batch_size=4",
         "--set", "grpo.gradient_accumulation_steps=1", "--set", "rollout.max_turns=3", "--set", "grpo.save_steps=100",
         "--set", "grpo.learning_rate=1e-3", "--set", "grpo.step_advantage_weight=1"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False,
        env={**os.environ, "OMP_NUM_THREADS": "2"})  # the thread count changes float sums: pinned as measured
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [json.loads(line) for line in (tmp_path / "pin" / "metrics.jsonl").open() if '"loss"' in line]
    assert len(steps) == len(PINNED)
    for step, pinned in zip(steps, PINNED, strict=True):
        for key, value in pinned.items():
            # token counts exactly; floats to float32 rounding (the same machine type gives them bit for bit)
            assert step[key] == pytest.approx(value, rel=1e-6, abs=1e-9), (step["step"], key, step[key], value)
