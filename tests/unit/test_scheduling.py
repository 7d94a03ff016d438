"""Episode-level scheduling: an episode goes back to the generator as soon as its own env
step is done; a slow env delays only its own episode."""

import asyncio
import time

from envs.sudoku import SudokuEnv
from rl.config import RolloutSection
from rl.generation import BatchedStream, Generation, SamplingParams
from rl.rollout import run_episodes

SHOW = '<tool_call>{"name": "show_board", "arguments": {}}</tool_call>'


class TimedEnv(SudokuEnv):
    """Sudoku whose steps take `delay_s` and record when they finished."""

    def __init__(self, delay_s: float = 0.0):
        super().__init__()
        self.delay_s = delay_s
        self.finished_at: list[float] = []

    def step(self, action):
        time.sleep(self.delay_s)
        out = super().step(action)
        self.finished_at.append(time.monotonic())
        return out


def test_fast_episodes_do_not_wait_for_a_slow_env(chat, scripted):
    slow, *fast = [TimedEnv(0.8)] + [TimedEnv(0.0) for _ in range(3)]
    backend = scripted(lambda context, turn: SHOW)
    settings = RolloutSection(max_turns=4, batch_wait_s=0.05)
    trajectories = run_episodes([slow, *fast], [0, 1, 2, 3], backend, chat, settings)

    assert all(t.info["model_turns"] == 4 and t.info["env_error"] == "" for t in trajectories)
    # All 4 turns of every fast episode were done before the slow env finished its first step.
    assert max(env.finished_at[-1] for env in fast) < slow.finished_at[0]
    # ... so the slow episode's later turns were generated alone.
    assert [len(batch) for batch in backend.calls] == [4, 3, 3, 3, 1, 1, 1]


def test_fast_envs_move_in_lockstep_batches(chat, scripted):
    backend = scripted(lambda context, turn: SHOW)
    envs = [TimedEnv(0.0) for _ in range(5)]
    run_episodes(envs, list(range(5)), backend, chat, RolloutSection(max_turns=3, batch_wait_s=30))
    # every live episode waits for the model before a batch starts: one full batch per round
    assert [len(batch) for batch in backend.calls] == [5, 5, 5]
    # ... in episode order, whatever order the env threads finished in
    first_rows = [chat.decode(p) for p in backend.calls[0]]
    expected = [chat.decode(run_episodes([TimedEnv(0.0)], [s], backend, chat,
                                         RolloutSection(max_turns=1))[0].prompt_ids) for s in range(5)]
    assert first_rows == expected


def test_overlapping_time_is_reported_as_wall_time(chat, scripted):
    metrics = {}
    envs = [TimedEnv(0.2) for _ in range(4)]
    run_episodes(envs, list(range(4)), scripted(lambda c, t: SHOW), chat, RolloutSection(max_turns=2),
                 metrics=metrics)
    # four 0.2 s steps ran side by side in each of 2 rounds: about 0.4 s of env time, not 1.6 s
    assert 0.35 < metrics["env_s"] < 1.2 and metrics["wall_s"] >= metrics["env_s"]
    assert metrics["generated_tokens"] > 0


def test_the_engine_clock_holds_the_backends_calls_and_not_the_env_steps_between_them(chat, scripted):
    metrics = {}

    def slow(context, turn):
        time.sleep(0.05)  # per row: a call for both episodes takes 0.1 s
        return SHOW

    run_episodes([TimedEnv(0.2) for _ in range(2)], [0, 1], scripted(slow), chat,
                 RolloutSection(max_turns=3, batch_wait_s=30), metrics=metrics)
    assert metrics["engine_steps"] == 3  # one batched call a round
    assert 0.3 <= metrics["engine_busy_s"] < 0.85  # the env steps counted in would make it 0.9 s or more
    # the three rounds' env steps (0.2 s each, the two episodes' side by side) are the rest of the rollout
    assert metrics["wall_s"] - metrics["engine_busy_s"] >= 0.55 and metrics["env_s"] >= 0.55


def test_turns_of_episodes_cancelled_while_they_waited_are_never_generated():
    """A batch that raises cancels its other episodes (rl/rollout.py); a batch-only backend must not be handed
    the turns they were waiting for once they stop, when it would start their batch."""
    asked = []

    def generate(keys, prompts, params):
        asked.append(keys)
        return [Generation([1], [0.0]) for _ in keys]

    async def batch():
        stream = BatchedStream(generate, episodes=3, wait_s=5.0)
        waiting = [asyncio.ensure_future(stream.generate(key, [1, 2], SamplingParams())) for key in (1, 2)]
        await asyncio.sleep(0)  # both wait for the third episode, still in its env step
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        for key in range(3):  # each episode ends: two of them wait no more, which would start their batch
            stream.retire(key)
        await asyncio.sleep(0.3)  # long enough for a batch to reach the backend in its worker thread
        await stream.aclose()

    asyncio.run(batch())
    assert asked == []


def test_a_backend_answering_fewer_prompts_than_asked_fails_that_batch_instead_of_stalling_the_rounds():
    calls = []

    def generate(keys, prompts, params):
        calls.append(keys)
        return [Generation([1], [0.0])] * (1 if len(calls) == 1 else len(keys))

    async def rollout():
        stream = BatchedStream(generate, episodes=2, wait_s=5.0)
        asked = (stream.generate(key, [1, 2], SamplingParams()) for key in (0, 1))
        first = await asyncio.wait_for(asyncio.gather(*asked, return_exceptions=True), 2)
        again = await asyncio.wait_for(asyncio.gather(*(stream.generate(k, [1], SamplingParams()) for k in (0, 1))), 2)
        await stream.aclose()
        return first, again

    first, again = asyncio.run(rollout())
    assert all(isinstance(e, RuntimeError) and "1 generations for 2 prompts" in str(e) for e in first)
    assert [g.token_ids for g in again] == [[1], [1]] and calls == [[0, 1], [0, 1]]


def test_closing_the_stream_fails_turns_still_held():
    async def rollout():
        stream = BatchedStream(lambda keys, prompts, params: [Generation([1], [0.0])] * len(keys), 2, wait_s=5.0)
        held = asyncio.ensure_future(stream.generate(0, [1], SamplingParams()))
        await asyncio.sleep(0)  # it waits for episode 1
        await stream.aclose()
        return await asyncio.wait_for(asyncio.gather(held, return_exceptions=True), 2)

    [error] = asyncio.run(rollout())
    assert isinstance(error, RuntimeError) and "closed before this turn was admitted" in str(error)
