"""A task a randomly initialised tiny model can learn: call `pick` with n=7.

The call format is deliberately minimal (the first digit of a reply is the argument),
so that a random model makes calls often enough for GRPO to have a signal. It is
registered like any user format, and exercises the same loop as real formats.
"""

import re

from envs.base import ToolCall, ToolEnv, tool
from rl.toolcalls import ParsedTurn, ToolCallFormat, register_format

TARGET = 7


class PickEnv(ToolEnv):
    default_max_steps = 3

    def setup(self, options):
        return "Pick a number."

    @tool
    def pick(self, n: int) -> str:
        """Pick a number from 0 to 9.

        Args:
            n: the number.
        """
        if n == TARGET:
            self.step_reward = 1.0 / self.turns  # sooner is better
            self.terminated = True
            return "Yes!"
        return "No, try again."

    @property
    def solved(self):
        return self.terminated

    def state_key(self):
        return self.budget_key()  # nothing else changes: the turn number is the state


class FirstDigitFormat(ToolCallFormat):
    name = "first_digit"
    example = "7"

    def parse(self, text):
        m = re.search(r"\d", text)
        if not m:
            return ParsedTurn(text)
        return ParsedTurn("", calls=[ToolCall("pick", {"n": int(m.group())})])

    def render_call(self, call):
        return str(call.arguments["n"])


register_format(FirstDigitFormat())


def two_step_run(tmp_path, name: str, *extra: str) -> list[str]:
    """Overrides for two GRPO steps of the tiny float32 model with LoRA on this task, rewards that vary in a group."""
    return [f"output_dir={tmp_path}", f"name={name}", "model.name=tiny", "model.dtype=float32",
            "model.tool_format=first_digit", "lora.enabled=true", "env.name=tests.integration.pick_env:PickEnv",
            "rollout.max_turns=3", "rollout.max_new_tokens=6", "rollout.max_completion_tokens=96",
            "grpo.num_generations=8", "grpo.per_device_train_batch_size=16", "grpo.max_steps=2",
            "grpo.save_steps=1000", "grpo.seed=3", "grpo.learning_rate=3e-3", "rewards.episode_return=1.0",
            "rewards.solved=0.0", "log.wandb=off", *extra]
