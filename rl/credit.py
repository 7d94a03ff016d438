"""Step-level credit for multi-turn episodes: each turn measured against the other episodes of its
group that acted in the same state.

GRPO gives every token of an episode the episode's advantage: its reward against its group's mean.
In a multi-turn episode that blames a good move for the bad one three turns later. The turns of a
group's episodes that acted in an equal state (the env's `state_key()`: same board, same turns
taken, same invalid actions) form an anchor group (GiGPO, Feng et al. 2025, "Group-in-Group Policy
Optimization for LLM Agent Training"). A turn's step advantage is its episode's reward against the
mean reward of the episodes in its anchor group: the baseline is what the episodes that got as far as
this state went on to earn, so the advantage says what this turn's action did from there. A
turn's tokens get `episode advantage + weight * step advantage`; a turn in a state no other episode
of its group reached gets its episode advantage alone.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections import defaultdict
from typing import Any

Turns = list[tuple[int, int, int | None]]  # (start, end, state digest) per model turn of an episode


def anchor_groups(rewards: list[float], turns: list[Turns], group_size: int) -> dict[tuple[int, int], set[int]]:
    """(group, state digest) -> the scorable episodes of that group with a turn in that state."""
    if group_size < 1 or len(rewards) % group_size or len(turns) != len(rewards):
        raise ValueError(f"need one turn list per reward and whole groups: {len(rewards)} rewards, "
                         f"{len(turns)} turn lists, group size {group_size}")
    anchors: dict[tuple[int, int], set[int]] = defaultdict(set)
    for row, row_turns in enumerate(turns):
        if not math.isnan(rewards[row]):
            for _, _, key in row_turns:
                if key is not None:
                    anchors[(row // group_size, key)].add(row)
    return anchors


def step_advantages(rewards: list[float], turns: list[Turns], group_size: int,
                    scale: bool = True) -> tuple[list[list[float]], float]:
    """Per episode, per turn, the step advantage (0 where the turn's state is unknown or no other
    episode of the group acted in it), and the share of turns that had such company (for the logs).

    `rewards[i]` is episode i's reward (NaN: unscorable, all zeros), `turns[i]` its turns, episodes
    `group_size` at a time from the same prompt. An episode counts once in an anchor group however
    many of its turns acted in that state (a malformed call leaves the state as it was). `scale`
    divides by the anchor group's standard deviation, as `grpo.scale_rewards` does for episodes."""
    anchors = anchor_groups(rewards, turns, group_size)
    out, shared, total = [], 0, 0
    for row, row_turns in enumerate(turns):
        values = []
        for _, _, key in row_turns:
            members = anchors.get((row // group_size, key), ()) if key is not None else ()
            total += 1
            if len(members) < 2 or row not in members:
                values.append(0.0)
                continue
            shared += 1
            rewards_here = [rewards[r] for r in members]
            advantage = rewards[row] - statistics.fmean(rewards_here)
            if scale:
                advantage /= statistics.stdev(rewards_here) + 1e-4
            values.append(advantage)
        out.append(values)
    return out, shared / total if total else 0.0


def state_digest(env: Any) -> int | None:
    """A 64-bit digest of the env's `state_key()`, equal in every process (Python's own `hash` of a
    string is not), so that step-level advantages can group turns across data-parallel ranks."""
    try:
        key = env.state_key()
    except Exception:  # noqa: BLE001 - a broken key only costs this turn its step-level advantage
        return None
    if key is None:
        return None
    return int.from_bytes(hashlib.blake2b(repr(key).encode(), digest_size=8).digest(), "big", signed=True)
