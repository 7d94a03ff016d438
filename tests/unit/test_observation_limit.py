"""Observations longer than `rollout.max_observation_chars` are cut, with a marker, and counted per episode."""

import time

from envs import ToolEnv, tool
from rl.config import RolloutSection
from rl.rollout import run_episodes


class Loud(ToolEnv):
    """An env whose first observation and `dump` tool can be as long as asked."""

    def __init__(self, opening: int = 10, **kwargs):
        super().__init__(**kwargs)
        self.opening = opening

    def setup(self, options):
        return "start " + "r" * self.opening

    @tool
    def dump(self, n: int) -> str:
        """Answer with n characters.

        Args:
            n: How many characters.
        """
        return "d" * n


def call(n: int) -> str:
    return f'<tool_call>\n{{"name": "dump", "arguments": {{"n": {n}}}}}\n</tool_call>'


def test_huge_observations_are_cut_with_a_marker_and_counted(chat, scripted):
    replies = [call(5_000_000), call(20), call(1)]
    backend = scripted(lambda context, turn: replies[turn])
    settings = RolloutSection(max_turns=3, max_completion_tokens=100_000, max_observation_chars=1000)
    started = time.monotonic()
    [traj] = run_episodes([Loud(opening=50_000)], [0], backend, chat, settings)
    assert time.monotonic() - started < 30  # 5 MB through the tokenizer alone takes seconds
    assert traj.info["obs_truncated"] == 2 and traj.info["stop_reason"] == "max_turns"
    prompt = chat.decode(traj.prompt_ids)
    assert "start rrr" in prompt and f"[... {50_006 - 952} more characters cut]" in prompt
    completion = chat.decode(traj.completion_ids)
    assert f"[... {5_000_000 - 952} more characters cut]" in completion and "d" * 953 not in completion
    assert "d" * 20 in completion  # a short observation is left whole
    assert len(traj.prompt_ids) + len(traj.completion_ids) < 5_000


def test_observations_within_the_limit_are_untouched(chat, scripted):
    backend = scripted(lambda context, turn: call(999))
    settings = RolloutSection(max_turns=1, max_completion_tokens=100_000, max_observation_chars=1000)
    [traj] = run_episodes([Loud(opening=994)], [0], backend, chat, settings)  # "start " + 994: exactly 1000
    assert traj.info["obs_truncated"] == 0 and "r" * 994 in chat.decode(traj.prompt_ids)
