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
