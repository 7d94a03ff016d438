"""The rollout engine: many multi-turn tool-calling episodes at once, at the token level.

Follow one episode from `reset` to its loss mask:

1. `env.reset(seed)` gives the first observation; the chat template turns it (and the
   env's tool schemas) into `prompt_ids`.
2. Each round, ONE batched `backend.generate` call serves every episode that waits for
   the model. The sampled tokens are appended to `completion_ids` with `env_mask` 1 and
   their logprobs.
3. The turn's text is parsed into tool calls. Malformed calls become error messages and
   `format_errors`; a turn without calls goes to the env as plain text.
4. All waiting envs step concurrently in threads, each under a deadline. A crash or a
   timeout ends only that episode (`env_error`), never the batch.
5. The tool results are rendered by the chat template and appended as TOKENS with
   `env_mask` 0; earlier turns are never re-tokenised.
6. An episode stops when one of `STOP_CONDITIONS` holds. Env tokens after the last model
   turn are dropped (nothing follows them to learn from), except the template's
   end-of-turn when the turn ended on a stop string (`stop_after_tool_call`).
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from envs.base import ToolCall, ToolEnv
from rl.chat import ChatFormat
from rl.config import RolloutSettings
from rl.generation import Generation, GenerationBackend, SamplingParams


@dataclass
class Trajectory:
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]
    env_mask: list[int]  # 1 = sampled by the model, 0 = written by the env/template
    info: dict[str, Any]


@dataclass
class _Episode:
    env: ToolEnv
    seed: int | None
    prompt_ids: list[int] = field(default_factory=list)
    completion_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    env_info: dict = field(default_factory=dict)
    env_done: bool = False
    env_error: str | None = None
    model_turns: int = 0
    format_errors: int = 0
    stop_reason: str | None = None
    pending: list[dict] = field(default_factory=list)  # env messages for the next tool turn
    stopped_with: int | None = None  # the stop token that ended the last model turn
    stop_string: str | None = None  # or the stop string that did

    def append(self, ids: list[int], logprobs: list[float] | None, mask: int) -> None:
        self.completion_ids += ids
        self.logprobs += logprobs if logprobs is not None else [0.0] * len(ids)
        self.env_mask += [mask] * len(ids)

    @property
    def context(self) -> list[int]:
        return self.prompt_ids + self.completion_ids


# Stop conditions: small named checks, evaluated after every env round.
STOP_CONDITIONS: dict[str, Callable[[_Episode, RolloutSettings], bool]] = {
    "env_error": lambda ep, s: ep.env_error is not None,
    "env_done": lambda ep, s: ep.env_done,
    "max_turns": lambda ep, s: ep.model_turns >= s.max_turns,
    "token_budget": lambda ep, s: len(ep.completion_ids) >= s.max_completion_tokens,
}


def _first_stop(ep: _Episode, settings: RolloutSettings) -> str | None:
    return next((name for name, check in STOP_CONDITIONS.items() if check(ep, settings)), None)


def _reset(ep: _Episode, options: dict | None) -> str:
    observation, ep.env_info = ep.env.reset(seed=ep.seed, options=options)
    return observation


def _act(ep: _Episode, chat: ChatFormat, text: str) -> None:
    """Parse one model turn and step the env with it; fills `ep.pending`."""
    turn = chat.tool_format.parse(text)
    ep.pending = [{"role": "tool", "name": "error", "content": err} for err in turn.errors]
    ep.format_errors += len(turn.errors)
    if not turn.calls and not turn.errors:
        observation, _, terminated, truncated, ep.env_info = ep.env.step(turn.content)
        ep.pending.append({"role": "user", "content": observation})
        ep.env_done = terminated or truncated
    for call in turn.calls:
        observation, _, terminated, truncated, ep.env_info = ep.env.step(call)
        ep.pending.append({"role": "tool", "name": call.name, "content": observation})
        if terminated or truncated:
            ep.env_done = True
            break


def _run_all(pool: cf.ThreadPoolExecutor, episodes: list[_Episode], fn: Callable[[_Episode], Any],
             timeout_s: float) -> list[Any]:
    """Run `fn` on every episode concurrently; a crash or timeout marks only that episode."""
    futures = [pool.submit(fn, ep) for ep in episodes]
    deadline = time.monotonic() + timeout_s
    results = []
    for ep, fut in zip(episodes, futures):
        try:
            results.append(fut.result(timeout=max(0.0, deadline - time.monotonic())))
        except cf.TimeoutError:
            ep.env_error = f"env step timed out after {timeout_s:g} s"
            results.append(None)
        except Exception as e:  # noqa: BLE001 - any env failure is reported, not raised
            ep.env_error = f"{type(e).__name__}: {e}"
            results.append(None)
    return results


def run_episodes(envs: list[ToolEnv], seeds: list[int | None], backend: GenerationBackend | None, chat: ChatFormat,
                 settings: RolloutSettings, options: dict | None = None, metrics: dict[str, float] | None = None,
                 policy: Callable[[ToolEnv], ToolCall | str] | None = None) -> list[Trajectory]:
    """Play one episode per (env, seed) pair, all together, and return their trajectories.

    `metrics`, if given, receives timing and token counts for the whole batch. `policy`,
    if given, stands in for the model (experts, random play): it sees the env and returns
    an action, which is rendered in the tool-call format and laid out exactly as model
    tokens would be.
    """
    if len(envs) != len(seeds):
        raise ValueError(f"got {len(envs)} envs but {len(seeds)} seeds")
    episodes = [_Episode(env, seed) for env, seed in zip(envs, seeds)]
    pool = cf.ThreadPoolExecutor(max_workers=max(1, min(settings.env_workers, len(episodes))))
    timing = {"generation_s": 0.0, "env_s": 0.0, "generated_tokens": 0}
    end_of_call = chat.tool_format.end_of_call if settings.stop_after_tool_call else ""
    params = SamplingParams(settings.temperature, settings.top_p, settings.top_k, settings.max_new_tokens,
                            chat.stop_token_ids, [end_of_call] if end_of_call else [])
    closing_ids = chat.closing_ids() if end_of_call else []
    prefix_ids = chat.encode(settings.response_prefix) if settings.response_prefix else []
    try:
        t0 = time.perf_counter()
        first = _run_all(pool, episodes, lambda ep: _reset(ep, options), settings.step_timeout_s)
        timing["env_s"] += time.perf_counter() - t0
        for ep, observation in zip(episodes, first):
            if observation is None:
                ep.stop_reason = "env_error"
                continue
            messages = [{"role": "user", "content": observation}]
            if settings.system_prompt:
                messages.insert(0, {"role": "system", "content": settings.system_prompt})
            ep.prompt_ids = chat.prompt_ids(messages, ep.env.tool_schemas()) + prefix_ids

        while active := [ep for ep in episodes if ep.stop_reason is None]:
            budget = max(settings.max_completion_tokens - len(ep.completion_ids) for ep in active)
            params.max_new_tokens = min(settings.max_new_tokens, budget)
            t0 = time.perf_counter()
            if policy is not None:
                generations = [_policy_turn(chat, policy(ep.env), settings.response_prefix) for ep in active]
            else:
                generations = backend.generate([ep.context for ep in active], params)
            timing["generation_s"] += time.perf_counter() - t0
            texts = []
            for ep, gen in zip(active, generations):
                room = settings.max_completion_tokens - len(ep.completion_ids)
                ids, logprobs = gen.token_ids[:room], gen.logprobs[:room]
                whole = len(ids) == len(gen.token_ids)
                ep.stopped_with = gen.stopped_with if whole else None
                ep.stop_string = gen.stop_string if whole else None
                ep.append(ids, logprobs, mask=1)
                ep.model_turns += 1
                timing["generated_tokens"] += len(ids)
                texts.append(settings.response_prefix + chat.decode(ids[:-1] if ep.stopped_with is not None else ids))

            t0 = time.perf_counter()
            by_episode = dict(zip(map(id, active), texts))
            _run_all(pool, active, lambda ep: _act(ep, chat, by_episode[id(ep)]), settings.step_timeout_s)
            timing["env_s"] += time.perf_counter() - t0

            for ep in active:
                ep.stop_reason = _first_stop(ep, settings)
                if ep.stop_reason is None:
                    tool_ids = chat.tool_turn_ids(ep.pending, ep.stopped_with) + prefix_ids
                    if len(ep.completion_ids) + len(tool_ids) < settings.max_completion_tokens:
                        ep.append(tool_ids, None, mask=0)
                        continue
                    ep.stop_reason = "token_budget"
                if ep.stop_string and len(ep.completion_ids) + len(closing_ids) <= settings.max_completion_tokens:
                    ep.append(closing_ids, None, mask=0)  # close the last turn as the template would
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # a hung env thread must not block us

    if metrics is not None:
        metrics.update(timing)
    return [_trajectory(ep) for ep in episodes]


def _policy_turn(chat: ChatFormat, action: ToolCall | str, prefix: str) -> Generation:
    """A policy's action as the tokens a model would have produced for it, ending its turn."""
    text = action if isinstance(action, str) else chat.tool_format.render_call(action)
    text = text.removeprefix(prefix)  # the prefix is context, not the policy's output
    ending = chat.closing_ids()
    stop = ending[-1] if ending and ending[-1] in chat.stop_token_ids else None
    ids = chat.encode(text) + ([stop] if stop is not None else [])
    return Generation(ids, [0.0] * len(ids), stop)


def _trajectory(ep: _Episode) -> Trajectory:
    info = {
        **ep.env_info,
        "model_turns": ep.model_turns,
        "format_errors": ep.format_errors,
        "stop_reason": ep.stop_reason,
        "env_error": ep.env_error or "",
        "model_tokens": sum(ep.env_mask),
    }
    return Trajectory(ep.prompt_ids, ep.completion_ids, ep.logprobs, ep.env_mask, info)
