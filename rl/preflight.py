"""Reward functions tried on real episodes before the model loads.

A reward that crashes would otherwise stop the run after its first generation batch (minutes on a CPU);
one that reads keyword arguments the rollout does not give returns a constant (often 0.0) for every
episode, and the run trains on nothing, silently. `check_rewards` plays a few episodes with the env's
expert, its baseline policy, a policy that never calls a tool and one that calls a tool the env does
not have (no model needed), hands every reward function exactly what GRPO will (`prompts`,
conversational `completions` of the model's messages, `completion_ids`, the episode facts), stops on a
crash with the reward's name and traceback, and warns about a reward that gives every one of those
episodes the same value.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import traceback

from envs.base import ToolCall
from rl.config import ConfigError, RunConfig
from rl.evaluation import make_policy, play

TRL_COLUMNS = ("prompt_ids", "completion_ids", "logprobs", "env_mask")  # what TRL consumes, not rewards
WRONG_TOOL = "no_such_tool"


def check_rewards(cfg: RunConfig, chat, reward_funcs: list, episodes: int = 4) -> list[str]:
    """Warnings (one per reward that is constant over `episodes` episodes of each policy); raises
    ConfigError naming a reward that crashes or returns the wrong number of values."""
    from rl.trl_hooks import RolloutBatch, to_trl

    start = cfg.env.train_seeds[0]
    seeds = list(range(start, start + episodes))
    trajectories, played = _probe_episodes(cfg, chat, seeds)
    who = " and ".join(filter(None, [", ".join(played[:-1]), played[-1]]))
    columns = to_trl(trajectories, fallback_id=chat.tokenizer.eos_token_id)
    n = len(trajectories)
    kwargs = {key: values for key, values in columns.items() if key not in TRL_COLUMNS}
    kwargs["seed"] = [start + i % episodes for i in range(n)]
    batch = RolloutBatch(trajectories, columns["env_mask"])
    prompts, completions = batch.prompts, batch.completions
    warnings = []
    for fn in reward_funcs:
        name = getattr(fn, "__name__", type(fn).__name__)
        try:
            values = fn(prompts=prompts, completions=completions, completion_ids=columns["completion_ids"],
                        trainer_state=None, log_extra=lambda *a, **k: None, log_metric=lambda *a, **k: None, **kwargs)
            if inspect.isawaitable(values):
                values = asyncio.run(values)
        except Exception as e:
            raise ConfigError(f"reward {name!r} failed on {n} {who} episodes (before any model loaded):\n"
                              f"{traceback.format_exc()}") from e
        if not isinstance(values, (list, tuple)) or len(values) != n:
            raise ConfigError(f"reward {name!r} must return one value (a number or None) per completion: got "
                              f"{values!r:.200} for {n} completions")
        scored = {float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))}
        if len(scored) == 1:
            warnings.append(f"reward {name!r} gave every one of {n} {who} episodes {scored.pop():g}, so it cannot "
                            "tell them apart; check what it reads (facts the rollout gives: "
                            f"{', '.join(sorted(kwargs))})")
    return warnings


def _probe_episodes(cfg: RunConfig, chat, seeds: list[int]) -> tuple[list, list[str]]:
    """Episodes of each probe policy on `seeds`, and the probes' names in order."""
    trajectories, played = [], []
    for name, label in (("expert", "expert"), ("random", "baseline")):
        try:
            policy = make_policy(cfg, name, seed=seeds[0])
        except (ValueError, KeyError, NotImplementedError):  # an env without that policy: check with what there is
            continue
        trajectories += play(cfg, chat, seeds, policy=policy, batch_size=len(seeds))
        played.append(label)
    # and a model that never calls a tool: format and validity rewards must tell it apart too
    trajectories += play(cfg, chat, seeds, policy=lambda env: "I will not call a tool.", batch_size=len(seeds))
    played.append("tool-less")
    # and one whose calls the env refuses: under a `rollout.response_prefix` the text above is a malformed call
    # (a format error, no env step), and a baseline of legal moves (4x4 Sudoku's) leaves no invalid action;
    # only where the tool format can write such a call (a format for one tool's argument cannot)
    if _can_render(chat, ToolCall(WRONG_TOOL, {})):
        trajectories += play(cfg, chat, seeds, policy=lambda env: ToolCall(WRONG_TOOL, {}), batch_size=len(seeds))
        played.append("wrong-tool")
    return trajectories, played


def _can_render(chat, call: ToolCall) -> bool:
    """Whether the run's tool format can write `call` as model text (a custom format may only know its own tools)."""
    try:
        return isinstance(chat.tool_format.render_call(call), str)
    except Exception:  # noqa: BLE001 -- a user's format that cannot write this call: that probe is skipped
        return False
