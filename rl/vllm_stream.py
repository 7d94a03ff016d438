"""Per-episode requests on an in-process vLLM engine (`VLLMBackend.stream()`), continuously batched.

Stop strings are matched on token ids here, not by vLLM: vLLM finds a stop string in the text it detokenizes
for every running row at every engine step, which made a decode step 40% longer in a replay of Sudoku turns on an
H200 (`rl/bench/baselines/README.md`, "Generation and a GRPO step on one GPU"). A row asked to stop on strings gets
its new tokens at every step instead; when they end with a stop string's own tokenization the row is aborted,
and any finished row is checked once against its text, decoded after the prompt's last tokens as vLLM decodes it
(`rl.stop_strings.StopStrings`, the rule the transformers backend cuts by too), so a stop string written in other
tokens still ends the turn where vLLM would have ended it: at the first token whose text holds it, that token kept.

`VLLMBackend.generate` leaves the search to vLLM, except for a prompt that ends inside a character (with its
first bytes, `StopStrings.ends_inside_a_character`): there vLLM 0.32's detokenizer writes the whole prompt's text
into the row's, and its search then finds stop strings only the prompt holds. Such a row is cut here once it ends,
as the stream's are.

The driver thread only collects a finished row's tokens; the episode that asked for it makes its `Generation` (the
text check above decodes the row several times). With the engine core in this process, Python work in the driver
between two engine steps delays the next one, while the episode's work runs in the event loop's thread beside it.
With the core in its own process (`rollout.vllm.engine_process`) the core steps on while this process works, and
`engine.step()` here takes the outputs it has sent.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import queue
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rl.engine_clock import EngineClock
from rl.generation import Generation, RoundGate, SamplingParams
from rl.stop_strings import CONTEXT_TOKENS, StopStrings


def generation_of(ids: list[int], logprobs: list[float], finish_reason: str | None, stop_reason: Any) -> Generation:
    """A finished vLLM row as a `Generation` (a stop token, or None for the model's EOS; a stop string)."""
    stopped_with = stop_string = None
    if finish_reason == "stop":
        if isinstance(stop_reason, str):
            stop_string = stop_reason
        else:
            stopped_with = stop_reason if stop_reason is not None else ids[-1]
    return Generation(ids, logprobs, stopped_with, stop_string)


def stopped_generation(ids: list[int], logprobs: list[float], finish_reason: str | None, stop_reason: Any,
                       stops: StopStrings | None = None, context: Sequence[int] = (),
                       matched: str | None = None) -> Generation:
    """A finished row as a `Generation`, cut after the first token whose text holds one of `stops` (found here, not
    by vLLM; `context`: the prompt's last `CONTEXT_TOKENS`). `matched`: the stop string whose own tokens the row was
    aborted on, if it was."""
    found = stops.first(ids, context) if stops is not None else None
    if found is not None:
        cut, string = found
        return Generation(ids[:cut], logprobs[:cut], None, string)
    if matched is not None:  # its tokens, but no text holding it: stopped there all the same
        return Generation(ids, logprobs, None, matched)
    return generation_of(ids, logprobs, finish_reason, stop_reason)


def sampled_logprobs(out) -> list[float]:
    return [entry[token].logprob for entry, token in zip(out.logprobs or [], out.token_ids)]


@dataclass
class _Row:
    """One request in flight: the tokens it has so far when it stops on strings."""

    future: asyncio.Future
    stops: StopStrings | None = None
    context: list[int] = field(default_factory=list)  # the prompt's last tokens, when it stops on strings
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)

    def done(self, finish_reason: str | None, stop_reason: Any, matched: str | None = None) -> Generation:
        """The row's generation; `matched`: the stop string whose tokens it was aborted on, if it was."""
        return stopped_generation(self.ids, self.logprobs, finish_reason, stop_reason, self.stops, self.context,
                                  matched)


@dataclass
class _Result:
    value: Any


# A stream may set Python's GIL switch interval while it is open (`rollout.vllm.switch_interval_s`; by default it
# leaves it). The driver thread runs engine steps in this process, and an episode whose turn ended waits for the GIL
# before it can ask for the next one: each of the 5-6 times a turn needs the GIL, up to a whole interval. In a
# replay of 339 recorded Sudoku turns through this stream, its engine a stand-in holding the GIL for 4 ms a step
# (2-core CPU), 0.5 ms against Python's 5 ms cut that wait from a median 43 ms to 8.6 ms and the replay from 4.5 s
# to 3.7 s; on an H100 with the real engine, the rollout was no faster at 0.5 ms (two runs).
_switch_lock = threading.Lock()
_switch = {"open": 0, "found": 0.0}  # streams holding the interval; the one the first of them found


def _lower_switch_interval(seconds: float | None) -> bool:
    if seconds is None:
        return False
    with _switch_lock:
        if _switch["open"] == 0:
            _switch["found"] = sys.getswitchinterval()
            sys.setswitchinterval(seconds)
        _switch["open"] += 1
    return True


def _restore_switch_interval() -> None:
    with _switch_lock:
        _switch["open"] -= 1
        if _switch["open"] == 0:
            sys.setswitchinterval(_switch["found"])


class EngineStream:
    """Each episode's turn joins the engine's running batch the moment it is asked for, or with `episodes` given,
    once every live one of them has asked (`rollout.vllm.admit: together`).

    A driver thread owns the engine while the stream is open: it adds queued requests,
    runs `engine.step()` while any request is unfinished, and resolves each episode's
    future as soon as its own request finishes, so the episode can step its env while the
    others keep generating. Requests are matched by their id, never by position. While it
    is open, the process's GIL switch interval is `switch_interval_s` (None: left as it is).

    With `episodes`, a `RoundGate` holds asked turns until every live episode (not retired, not paused) has asked;
    they are then added together, before one engine step (a long prefill may still take several:
    `max_num_batched_tokens`): the batches of a round-based loop, while each row is still handed back the moment it
    ends. Once no admitted turn is left generating, a slow episode (its env step) holds the others `wait_s` at most.
    """

    _STOP = object()

    def __init__(self, backend, switch_interval_s: float | None, episodes: int | None, wait_s: float):
        self.backend = backend
        self.engine = backend.llm.llm_engine
        self.loop = asyncio.get_running_loop()
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.requests = itertools.count()
        self.gate = None if episodes is None else RoundGate(episodes, wait_s, self.inbox.put)  # a round: one item
        self.clock = EngineClock()  # its engine steps with their outputs' handling, in the driver thread
        self.thread = threading.Thread(target=self._drive, name="vllm-engine", daemon=True)
        self.switched = _lower_switch_interval(switch_interval_s)
        self.thread.start()

    async def generate(self, key: int, prompt: list[int], params: SamplingParams) -> Generation:
        self.backend.check_length(prompt)
        if params.max_new_tokens <= 0:
            return Generation([], [])
        n = next(self.requests)
        sampling = self.backend._sampling_params(params, n)
        row = _Row(self.loop.create_future(), self.backend.stop_strings(params.stop_strings))
        if row.stops is not None:  # found here on the ids (see the module's docstring), not by vLLM in text
            from vllm.sampling_params import RequestOutputKind

            sampling.stop, sampling.detokenize, sampling.output_kind = None, False, RequestOutputKind.DELTA
            row.context = list(prompt[-CONTEXT_TOKENS:])
        request = (f"episode-{key}-{n}", list(prompt), sampling, row)
        if self.gate is None:
            self.inbox.put(request)
        else:
            self.gate.ask(row.future, request)
        finished = await row.future  # the row's `done`, with how it ended (see the module's docstring)
        return finished()

    def retire(self, key: int) -> None:
        if self.gate is not None:
            self.gate.retire()

    pause = retire  # a paused episode is not waited for

    def resume(self, key: int) -> None:
        if self.gate is not None:
            self.gate.resume()

    async def aclose(self) -> None:
        if self.gate is not None:
            self.gate.close()  # held turns' episodes hear it, rather than hang
        self.inbox.put(self._STOP)
        try:
            await self.loop.run_in_executor(None, self.thread.join)
        finally:
            if self.switched:
                self.switched = False
                _restore_switch_interval()

    async def exclusive(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` in the driver thread once the requests already running have finished.

        Requests asked for after it wait until it is done: a weight update never lands in
        the middle of a sequence.
        """
        future = self.loop.create_future()
        self.inbox.put((None, fn, None, _Row(future)))
        return await future

    def _drive(self) -> None:
        rows: dict[str, _Row] = {}
        held: list[tuple] = []  # an `exclusive` call waiting for the running requests to finish
        try:
            self._serve(rows, held)
        except Exception as e:  # noqa: BLE001 - the driver itself broke: every caller, now or later, hears it
            for row in [*rows.values(), *(item[3] for item in held)]:
                self._resolve(row.future, e)
            while (item := self.inbox.get()) is not self._STOP:
                for request in item if isinstance(item, list) else [item]:
                    self._resolve(request[3].future, e)

    def _serve(self, rows: dict[str, _Row], held: list[tuple]) -> None:
        while True:
            while not held:
                try:  # sleep only while the engine is idle
                    item = self.inbox.get(block=not self.engine.has_unfinished_requests())
                except queue.Empty:
                    break
                if item is self._STOP:
                    if rows:
                        self.engine.abort_request(list(rows))
                        closed = RuntimeError("the stream closed while this turn was generating")
                        for row in rows.values():
                            self._resolve(row.future, closed)
                    return
                if isinstance(item, list):  # turns admitted together
                    for request in item:
                        self._add(rows, *request)
                    continue
                if item[0] is None:
                    held.append(item)
                    break
                self._add(rows, *item)
            if self.engine.has_unfinished_requests():
                self.clock.timed(self._step, rows)
            elif held:
                _, fn, _, row = held.pop()
                try:
                    self._resolve(row.future, _Result(fn()))
                except Exception as e:  # noqa: BLE001 - goes to the caller
                    self._resolve(row.future, e)

    def _add(self, rows: dict[str, _Row], request_id: str, prompt: list[int], sampling, row: _Row) -> None:
        from vllm.inputs import TokensPrompt

        try:
            self.engine.add_request(request_id, TokensPrompt(prompt_token_ids=prompt), sampling)
            rows[request_id] = row
        except Exception as e:  # noqa: BLE001 - goes to the episode that asked
            self._resolve(row.future, e)

    def _step(self, rows: dict[str, _Row]) -> None:
        try:
            outputs = self.engine.step()
        except Exception as e:  # noqa: BLE001 - the engine is broken: every waiting episode hears it
            for row in rows.values():
                self._resolve(row.future, e)
            rows.clear()
            return
        stopped = []
        for out in outputs:
            row, done = rows.get(out.request_id), out.outputs[0]
            if row is None:  # aborted on its stop string in an earlier step
                continue
            row.ids += done.token_ids
            row.logprobs += sampled_logprobs(done)
            matched = None if out.finished or row.stops is None else row.stops.ended(row.ids, len(done.token_ids))
            if out.finished or matched is not None:
                if not out.finished:
                    stopped.append(out.request_id)
                del rows[out.request_id]
                self._resolve(row.future, functools.partial(row.done, done.finish_reason, done.stop_reason, matched))
        if stopped:
            self.engine.abort_request(stopped)

    def _resolve(self, future: asyncio.Future, result: Any) -> None:
        def settle() -> None:
            if future.done():
                return
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result.value if isinstance(result, _Result) else result)

        self.loop.call_soon_threadsafe(settle)
