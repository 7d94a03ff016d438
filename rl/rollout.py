"""The rollout engine: many multi-turn tool-calling episodes at once, at the token level.

Each episode is its own coroutine, scheduled on its own: it goes back to the generator
as soon as its tool result is in, never waiting for the slowest env of the batch.
Follow one episode from `reset` to its loss mask:

1. `env.reset(seed)` gives the first observation; the chat template turns it (and the
   env's tool schemas) into `prompt_ids`. An env on a remote server first waits for a free
   one (`env.lease()`, bounded by its own queue timeout), so the reset's deadline starts
   only once it has one. Images an env makes (`env.take_images()`) travel with their
   observation; a vision-language `ChatFormat` turns them into image tokens (`rl.vision`).
2. The episode asks the backend's stream for one turn (`rl.generation`): a vLLM engine or
   server takes it into its running batch at once; a batch-only backend gathers it with
   the other waiting episodes. The sampled tokens are appended to `completion_ids` with
   `env_mask` 1 and their logprobs.
3. The turn's text is parsed into tool calls. Malformed calls become error messages and
   `format_errors`; a turn without calls goes to the env as plain text.
4. The env steps in a thread of a shared pool, under a deadline, while other episodes
   generate or step. A crash or a timeout ends only that episode (`env_error`); so does a
   generation request that failed for good (`generation_error`).
5. The tool results (each observation cut to `max_observation_chars`, with a marker, and
   counted in `obs_truncated`) are rendered by the chat template and appended as TOKENS
   with `env_mask` 0; earlier turns are never re-tokenised.
6. An episode stops when one of `STOP_CONDITIONS` holds. Env tokens after the last model turn are dropped (nothing
   follows them to learn from), except the template's end-of-turn when the turn ended on a stop string
   (`stop_after_tool_call`). An env that holds a server gets `env.end_episode()`, which frees the server for a
   waiting episode, also when the batch raised; once its step (or a policy turn) returns if one still runs
   (`envs.threads`)."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from envs.base import RunStop, ToolCall, ToolEnv
from envs.sandbox.protocol import clip
from envs.threads import after_calls, calling, submit
from rl.chat import ChatFormat
from rl.config import RolloutSection
from rl.credit import state_digest
from rl.generation import (
    BatchedStream,
    Generation,
    GenerationBackend,
    GenerationError,
    GenerationStream,
    SamplingParams,
    open_stream,
    run_sync,
)
from rl.toolcalls import parse_turn
from rl.vision import ImagePrompt

# the episode facts the trainer averages into each step's log as env/<fact> (rl/trainer.py)
STEP_FACTS = ("solved", "model_turns", "tool_calls", "invalid_actions", "no_tool_calls", "format_errors",
              "tool_errors", "obs_truncated")


@dataclass
class Trajectory:
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]
    env_mask: list[int]  # 1 = sampled by the model, 0 = written by the env/template
    info: dict[str, Any]
    images: list = field(default_factory=list)  # model inputs of the images in the tokens, in order (VLMs)
    # per model turn: (start, end) of its tokens in completion_ids, and a digest of the env's
    # `state_key()` when the turn was asked for (None: the env does not say)
    turns: list[tuple[int, int, int | None]] = field(default_factory=list)
    # per model turn: its text as the env read it (the response prefix, then the model's tokens without
    # the stop token): what reward functions get as the model's messages, never the env's replies
    texts: list[str] = field(default_factory=list)
    # the messages the episode started from (the system prompt, the env's first observation): what reward
    # functions get as `prompts`
    prompt: list[dict] = field(default_factory=list)
    # per model turn: the env's messages after it (tool results, parse errors, a plain-text reply) as the chat
    # template got them, images as the env made them: what episodes.jsonl shows as the env's side of each turn
    replies: list[list[dict]] = field(default_factory=list)


@dataclass
class _Episode:
    env: ToolEnv
    seed: int | None
    prompt_ids: list[int] = field(default_factory=list)
    completion_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    images: list = field(default_factory=list)  # processed images whose tokens are in the context
    env_info: dict = field(default_factory=dict)
    env_done: bool = False
    env_error: str | None = None
    generation_error: str | None = None
    model_turns: int = 0
    format_errors: int = 0
    stop_reason: str | None = None
    pending: list[dict] = field(default_factory=list)  # env messages for the next tool turn
    turns: list[tuple[int, int, int | None]] = field(default_factory=list)  # see Trajectory.turns
    texts: list[str] = field(default_factory=list)  # see Trajectory.texts
    prompt: list[dict] = field(default_factory=list)  # see Trajectory.prompt
    replies: list[list[dict]] = field(default_factory=list)  # see Trajectory.replies
    stopped_with: int | None = None  # the stop token that ended the last model turn
    stop_string: str | None = None  # or the stop string that did
    obs_truncated: int = 0  # observations cut to `max_observation_chars`

    def append(self, ids: list[int], logprobs: list[float] | None, mask: int) -> None:
        self.completion_ids += ids
        self.logprobs += logprobs if logprobs is not None else [0.0] * len(ids)
        self.env_mask += [mask] * len(ids)

    @property
    def context(self) -> list[int]:
        ids = self.prompt_ids + self.completion_ids
        return ImagePrompt(ids, list(self.images)) if self.images else ids


# Stop conditions: small named checks, evaluated after every env round.
STOP_CONDITIONS: dict[str, Callable[[_Episode, RolloutSection], bool]] = {
    "env_error": lambda ep, s: ep.env_error is not None,
    "env_done": lambda ep, s: ep.env_done,
    "max_turns": lambda ep, s: ep.model_turns >= s.max_turns,
    "token_budget": lambda ep, s: len(ep.completion_ids) >= s.max_completion_tokens,
}


def _first_stop(ep: _Episode, settings: RolloutSection) -> str | None:
    return next((name for name, check in STOP_CONDITIONS.items() if check(ep, settings)), None)


def _observed(ep: _Episode, message: dict, limit: int) -> dict:
    """An env message: its text cut to `limit` characters, with a marker, and counted (`obs_truncated`; a
    tool that answers with megabytes must not cost seconds of tokenizing and the episode's token budget),
    and the images the env made since it was last asked, if any."""
    content = message["content"]
    if isinstance(content, str) and len(content) > limit:
        ep.obs_truncated += 1
        message = {**message, "content": clip(content, limit)}
    take = getattr(ep.env, "take_images", None)
    images = take() if take is not None else []
    return {**message, "images": images} if images else message


def _reset(ep: _Episode, options: dict | None, limit: int) -> dict:
    observation, ep.env_info = ep.env.reset(seed=ep.seed, options=options)
    return _observed(ep, {"role": "user", "content": observation}, limit)


def _act(ep: _Episode, chat: ChatFormat, text: str, limit: int) -> None:
    """Parse one model turn and step the env with it; fills `ep.pending`."""
    turn = parse_turn(chat.tool_format, text)
    ep.pending = [{"role": "tool", "name": "error", "content": err} for err in turn.errors]
    ep.format_errors += len(turn.errors)
    if not turn.calls and not turn.errors:
        observation, _, terminated, truncated, ep.env_info = ep.env.step(turn.content)
        ep.pending.append(_observed(ep, {"role": "user", "content": observation}, limit))
        ep.env_done = terminated or truncated
    for call in turn.calls:
        observation, _, terminated, truncated, ep.env_info = ep.env.step(call)
        ep.pending.append(_observed(ep, {"role": "tool", "name": call.name, "content": observation}, limit))
        if terminated or truncated:
            ep.env_done = True
            break


class _Busy:
    """Wall time during which at least one job of a kind is in flight (jobs overlap)."""

    def __init__(self):
        self.running, self.since, self.total = 0, 0.0, 0.0

    def __enter__(self):
        if self.running == 0:
            self.since = time.perf_counter()
        self.running += 1

    def __exit__(self, *exc):
        self.running -= 1
        if self.running == 0:
            self.total += time.perf_counter() - self.since


class _Rollout:
    """One batch of episodes, each played by its own coroutine on one event loop."""

    def __init__(self, episodes: list[_Episode], chat: ChatFormat, settings: RolloutSection, options: dict | None,
                 stream: GenerationStream, progress: Callable[[int, int, int], None] | None = None):
        self.episodes = episodes
        self.progress = progress
        self.finished = 0
        self.chat = chat
        self.settings = settings
        self.options = options
        self.stream = stream
        self.pool = cf.ThreadPoolExecutor(max_workers=max(1, min(settings.env_workers, len(episodes))),
                                          thread_name_prefix="env")
        # Waiting for a server, and giving it back, happen beside the env threads: episodes
        # queued for a server must not hold the threads that the episodes with one step in.
        leasing = [ep for ep in episodes if hasattr(ep.env, "lease") or hasattr(ep.env, "end_episode")]
        self.lease_pool = (cf.ThreadPoolExecutor(max_workers=len(leasing), thread_name_prefix="lease")
                           if leasing else None)
        self.generating, self.stepping = _Busy(), _Busy()
        self.generated_tokens = 0
        self.ending: set[int] = set()  # episodes in their last act (`play`'s finally): giving their env back
        self.params = turn_params(chat, settings)
        self.closing_ids = chat.closing_ids() if self.params.stop_strings else []
        self.prefix_ids = chat.encode(settings.response_prefix) if settings.response_prefix else []

    async def run(self) -> None:
        plays = [asyncio.ensure_future(self.play(key, ep)) for key, ep in enumerate(self.episodes)]
        try:
            await asyncio.gather(*plays)
        finally:  # after an episode raised, the others stop; each ends its env (`play`) before the pools go
            for key, task in enumerate(plays):
                if key not in self.ending:  # one already ending its env finishes that (a cancel would cut it short)
                    task.cancel()
            await asyncio.gather(*plays, return_exceptions=True)
            self.pool.shutdown(wait=False, cancel_futures=True)  # a hung env thread must not block us
            if self.lease_pool is not None:
                self.lease_pool.shutdown(wait=False, cancel_futures=True)
            await self.stream.aclose()

    async def play(self, key: int, ep: _Episode) -> None:
        settings = self.settings
        try:
            if hasattr(ep.env, "lease"):
                self.stream.pause(key)  # a batch need not wait for an episode queued for a server
                await self.lease_call(ep, "lease")
                self.stream.resume(key)
            limit = settings.max_observation_chars
            reset = lambda: _reset(ep, self.options, limit)  # run in the env's thread
            observation = await self.env_call(ep, reset) if ep.env_error is None else None
            if ep.env_error is not None:
                ep.stop_reason = "env_error"
                return
            messages = [observation]
            if settings.system_prompt:
                messages.insert(0, {"role": "system", "content": settings.system_prompt})
            ep.prompt = messages
            prompt_ids, ep.images = self.chat.prompt(messages, ep.env.tool_schemas())
            ep.prompt_ids = prompt_ids + self.prefix_ids
            while ep.stop_reason is None:
                budget = settings.max_completion_tokens - len(ep.completion_ids)
                params = replace(self.params, max_new_tokens=min(settings.max_new_tokens, budget))
                try:
                    with self.generating:
                        gen = await self.stream.generate(key, ep.context, params)
                except GenerationError as e:
                    ep.generation_error = str(e)
                    ep.stop_reason = "generation_error"
                    return
                text = self.take_turn(ep, gen)
                await self.env_call(ep, lambda text=text: _act(ep, self.chat, text, limit))
                self.after_env(ep)
        finally:
            self.ending.add(key)
            self.stream.retire(key)
            await self.lease_call(ep, "end_episode")
            self.finished += 1
            if self.progress is not None:
                self.progress(self.finished, len(self.episodes), self.generated_tokens)

    async def lease_call(self, ep: _Episode, method: str) -> None:
        """`env.lease()` (wait for a free server, bounded by the env's own queue timeout) or
        `env.end_episode()` (give it back), for envs that have them; a failure marks only `ep`."""
        fn = getattr(ep.env, method, None)
        if fn is None or method == "end_episode" and after_calls(ep.env, fn):
            return
        try:
            await asyncio.wrap_future(submit(self.lease_pool, ep.env, fn))
        except Exception as e:  # noqa: BLE001 - reported as the episode's env error
            ep.env_error = ep.env_error or f"{type(e).__name__}: {e}"

    async def env_call(self, ep: _Episode, fn: Callable[[], Any]) -> Any:
        """`fn` in an env thread under the step deadline; a crash or timeout marks only `ep`."""
        timeout = self.settings.step_timeout_s
        with self.stepping:
            try:
                return await asyncio.wait_for(asyncio.wrap_future(submit(self.pool, ep.env, fn)), timeout)
            except TimeoutError:
                ep.env_error = f"env step timed out after {timeout:g} s"
            except RunStop:
                raise
            except Exception as e:  # noqa: BLE001 - any env failure is reported, not raised
                ep.env_error = f"{type(e).__name__}: {e}"
        return None

    def take_turn(self, ep: _Episode, gen: Generation) -> str:
        """Append one model turn (cut to the token budget); returns the text the env sees."""
        room = self.settings.max_completion_tokens - len(ep.completion_ids)
        ids, logprobs = gen.token_ids[:room], gen.logprobs[:room]
        whole = len(ids) == len(gen.token_ids)
        ep.stopped_with = gen.stopped_with if whole else None
        ep.stop_string = gen.stop_string if whole else None
        ep.turns.append((len(ep.completion_ids), len(ep.completion_ids) + len(ids), state_digest(ep.env)))
        ep.append(ids, logprobs, mask=1)
        ep.model_turns += 1
        self.generated_tokens += len(ids)
        text = self.settings.response_prefix + self.chat.decode(ids[:-1] if ep.stopped_with is not None else ids)
        ep.texts.append(text)
        return text

    def after_env(self, ep: _Episode) -> None:
        """Stop, or append the env's reply as context for the next turn."""
        budget = self.settings.max_completion_tokens
        ep.replies.append(list(ep.pending))
        ep.stop_reason = _first_stop(ep, self.settings)
        if ep.stop_reason is None:
            tool_ids, images = self.chat.tool_turn(ep.pending, ep.stopped_with)
            tool_ids += self.prefix_ids
            if len(ep.completion_ids) + len(tool_ids) < budget:
                ep.append(tool_ids, None, mask=0)
                ep.images += images
                return
            ep.stop_reason = "token_budget"
        if ep.stop_string and len(ep.completion_ids) + len(self.closing_ids) <= budget:
            ep.append(self.closing_ids, None, mask=0)  # close the last turn as the template would


def turn_params(chat: ChatFormat, settings: RolloutSection) -> SamplingParams:
    """What every model turn of `run_episodes` is sampled with (each turn's token budget is set as it goes)."""
    end_of_call = chat.tool_format.end_of_call if settings.stop_after_tool_call else ""
    return SamplingParams(settings.temperature, settings.top_p, settings.top_k, settings.max_new_tokens,
                          chat.stop_token_ids, [end_of_call] if end_of_call else [])


def run_episodes(envs: list[ToolEnv], seeds: list[int | None], backend: GenerationBackend | None, chat: ChatFormat,
                 settings: RolloutSection, options: dict | None = None, metrics: dict[str, float] | None = None,
                 policy: Callable[[ToolEnv], ToolCall | str] | None = None,
                 progress: Callable[[int, int, int], None] | None = None) -> list[Trajectory]:
    """Play one episode per (env, seed) pair, all together, and return their trajectories.

    `metrics`, if given, receives timing and token counts for the whole batch: `generation_s` / `env_s` are the wall
    time during which some episode was generating / in an env step (they overlap), `wall_s` the whole rollout; where
    this process runs the engine's steps (an engine in this process or its core's outputs, a batch-only backend's
    calls: `EngineClock`), `engine_steps` and `engine_busy_s`, the time in them. `policy`, if given, stands in for the
    model (experts, random play): it sees the env and returns an action, which is rendered in the tool-call format and
    laid out exactly as model tokens would be. `progress`, if given, is called as each episode ends with (episodes
    ended, episodes, tokens generated so far).
    """
    if len(envs) != len(seeds):
        raise ValueError(f"got {len(envs)} envs but {len(seeds)} seeds")
    if chat.images is not None and policy is None and not getattr(backend, "takes_images", False):
        raise ValueError(f"the {getattr(backend, 'name', type(backend).__name__)!r} generation backend cannot "
                         "take images, but the model is a vision-language one (backends that can: hf)")
    episodes = [_Episode(env, seed) for env, seed in zip(envs, seeds)]
    started = time.perf_counter()

    async def main() -> _Rollout:
        if policy is not None:
            def turns(keys: list[int], prompts, params) -> list[Generation]:
                return [_policy_turn(chat, policy, episodes[k].env, settings.response_prefix) for k in keys]
            stream: GenerationStream = BatchedStream(turns, len(episodes), settings.batch_wait_s)
        else:
            stream = open_stream(backend, len(episodes), settings.batch_wait_s)
        rollout = _Rollout(episodes, chat, settings, options, stream, progress)
        await rollout.run()
        return rollout

    rollout = run_sync(main())
    if metrics is not None:
        metrics.update(generation_s=rollout.generating.total, env_s=rollout.stepping.total,
                       generated_tokens=rollout.generated_tokens, wall_s=time.perf_counter() - started)
        clock = getattr(rollout.stream, "clock", None)  # a stream that runs the engine's steps (not a server's)
        if clock is not None:
            metrics.update(engine_steps=clock.steps, engine_busy_s=clock.busy_s)
    return [_trajectory(ep) for ep in episodes]


def _policy_turn(chat: ChatFormat, policy: Callable[[ToolEnv], ToolCall | str], env: ToolEnv,
                 prefix: str) -> Generation:
    """The policy's action in `env` as the tokens a model would have produced for it, ending its turn."""
    with calling(env):  # the policy reads the env: its end and close wait for it, as for a step
        action = policy(env)
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
        "generation_error": ep.generation_error or "",
        "model_tokens": sum(ep.env_mask),
        "obs_truncated": ep.obs_truncated,
    }
    return Trajectory(ep.prompt_ids, ep.completion_ids, ep.logprobs, ep.env_mask, info, ep.images, ep.turns, ep.texts,
                      ep.prompt, ep.replies)
