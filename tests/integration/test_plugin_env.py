"""A new env with its expert is two files of the user's own (the env module and its config), in a
folder of their own, and no edit of the framework: evaluation, the reward pre-flight and GRPO take it."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

GUESS = '''
import random as stdlib_random

from envs import ToolCall, ToolEnv, ToolError, tool
from envs.experts import register_policies


class Guess(ToolEnv):
    def setup(self, options):
        self.secret = int(self.np_random.integers(1, 101))
        self.low, self.high = 1, 100  # what the answers so far allow; the expert reads it
        return "Guess my number between 1 and 100."

    @tool
    def guess(self, n: int) -> str:
        """Guess the number.

        Args:
            n: Your guess, from 1 to 100.
        """
        if not 1 <= n <= 100:
            raise ToolError(f"n must be between 1 and 100, got {n}")
        if n == self.secret:
            self.step_reward, self.terminated = 1.0, True
            return "Correct!"
        if n < self.secret:
            self.low = max(self.low, n + 1)
            return "Higher."
        self.high = min(self.high, n - 1)
        return "Lower."

    @property
    def solved(self):
        return self.terminated


class GuessExpert:
    """Bisects what the answers allow: at most 7 guesses."""

    def __init__(self, explore: float = 0.0, seed: int | None = None):
        self.rng, self.explore = stdlib_random.Random(seed), explore

    def __call__(self, env):
        if self.rng.random() < self.explore:
            return ToolCall("guess", {"n": self.rng.randint(env.low, env.high)})
        return ToolCall("guess", {"n": (env.low + env.high) // 2})


class GuessRandom:
    def __init__(self, seed: int | None = None):
        self.rng = stdlib_random.Random(seed)

    def __call__(self, env):
        return ToolCall("guess", {"n": self.rng.randint(1, 100)})


register_policies(Guess, expert=GuessExpert, random=GuessRandom)
'''

CONFIG = """
model: {name: tiny}
env: {name: "guess.py:Guess", kwargs: {max_steps: 7}}
rollout: {max_turns: 7, max_new_tokens: 16, max_completion_tokens: 512}
grpo: {max_steps: 1, num_generations: 2, per_device_train_batch_size: 4, gradient_accumulation_steps: 1}
rewards: {solved: 1.0}
log: {wandb: "off"}
"""


def run(script, *args, cwd):
    result = subprocess.run([sys.executable, str(ROOT / "launch" / script), *args], capture_output=True, text=True,
                            timeout=600, cwd=cwd, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_an_env_of_ones_own_in_two_files_evaluates_and_trains(tmp_path):
    (tmp_path / "guess.py").write_text(GUESS)
    (tmp_path / "guess.yaml").write_text(CONFIG)
    for policy in ("expert", "random"):
        run("eval.py", "--config", "guess.yaml", "--policy", policy, "--episodes", "20", "--out", "evals",
            cwd=tmp_path)
    expert, rand = (json.loads((tmp_path / "evals" / f"Guess-{p}.json").read_text())
                    for p in ("expert", "random"))
    assert expert["solve_rate"] == 1.0 and expert["invalid_call_rate"] == 0  # bisection always finds it in 7
    assert rand["solve_rate"] < 0.5  # 7 blind guesses out of 100 rarely hit

    result = run("grpo.py", "--config", "guess.yaml", "--name", "g", "--set", f"output_dir={tmp_path}",
                 cwd=tmp_path)
    steps = [json.loads(line) for line in (tmp_path / "g" / "metrics.jsonl").open() if '"reward"' in line]
    assert [s["step"] for s in steps] == [1] and "rewards/solved/mean" in steps[0]
    # the pre-flight played the registered expert: without it, `solved` would be 0 everywhere and warned of
    assert "[toolgym] warning" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["guess.py", "guess.yaml"]
