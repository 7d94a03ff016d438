"""Per-episode requests on an in-process vLLM engine (`VLLMBackend.stream()`), continuously batched.

Stop strings are matched on token ids here, not by vLLM: vLLM finds a stop string in the text it detokenizes
for every running row at every engine step, which cost 40% of a decode step in a Sudoku rollout on an H200
(`rl/bench/baselines/README.md`, "Generation and a GRPO step on one GPU"). A row asked to stop on strings gets
its new tokens at every step instead; when they end with a stop string's own tokenization the row is aborted,
and any finished row is checked once against the decoded text, so a stop string written in other tokens still
ends the turn where vLLM would have ended it: at the first token whose text holds it, that token kept.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rl.generation import Generation, SamplingParams


def generation_of(ids: list[int], logprobs: list[float], finish_reason: str | None, stop_reason: Any) -> Generation:
    """A finished vLLM row as a `Generation` (a stop token, or None for the model's EOS; a stop string)."""
    stopped_with = stop_string = None
    if finish_reason == "stop":
        if isinstance(stop_reason, str):
            stop_string = stop_reason
        else:
            stopped_with = stop_reason if stop_reason is not None else ids[-1]
    return Generation(ids, logprobs, stopped_with, stop_string)


def sampled_logprobs(out) -> list[float]:
    return [entry[token].logprob for entry, token in zip(out.logprobs or [], out.token_ids)]


class StopStrings:
    """Stop strings of one sampling setting: their token ids, and the exact text check."""

    def __init__(self, strings: list[str], tokenizer):
        self.strings, self.tokenizer = list(strings), tokenizer
        # only a tokenization that decodes back to the string itself is looked for in the ids
        self.suffixes = [ids for ids in (tuple(tokenizer.encode(s, add_special_tokens=False)) for s in self.strings)
                         if ids and tokenizer.decode(list(ids), skip_special_tokens=False) in self.strings]

    def ends_one(self, ids: list[int]) -> bool:
        return any(len(ids) >= len(s) and tuple(ids[-len(s):]) == s for s in self.suffixes)

    def first(self, ids: list[int]) -> tuple[int, str] | None:
        """(tokens up to and including the one that completes a stop string, that string), for the earliest one."""
        text = self._text(ids)
        if not any(s in text for s in self.strings):
            return None
        low, high = 1, len(ids)  # the shortest prefix whose text holds a stop string
        while low < high:
            mid = (low + high) // 2
            if any(s in self._text(ids[:mid]) for s in self.strings):
                high = mid
            else:
                low = mid + 1
        text = self._text(ids[:low])
        return low, min((s for s in self.strings if s in text), key=text.index)

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)


@dataclass
class _Row:
    """One request in flight: the tokens it has so far when it stops on strings."""

    future: asyncio.Future
    stops: StopStrings | None = None
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)

    def done(self, finish_reason: str | None, stop_reason: Any) -> Generation:
        ids, logprobs = self.ids, self.logprobs
        found = self.stops.first(ids) if self.stops is not None else None
        if found is not None:
            cut, string = found
            return Generation(ids[:cut], logprobs[:cut], None, string)
        return generation_of(ids, logprobs, finish_reason, stop_reason)


@dataclass
class _Result:
    value: Any


class EngineStream:
    """Each episode's turn joins the engine's running batch the moment it is asked for.

    A driver thread owns the engine while the stream is open: it adds queued requests,
    runs `engine.step()` while any request is unfinished, and resolves each episode's
    future as soon as its own request finishes, so the episode can step its env while the
    others keep generating. Requests are matched by their id, never by position.
    """

    _STOP = object()

    def __init__(self, backend):
        self.backend = backend
        self.engine = backend.llm.llm_engine
        self.tokenizer = None  # the engine's, once a row stops on strings
        self.stops: dict[tuple[str, ...], StopStrings] = {}
        self.loop = asyncio.get_running_loop()
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.requests = itertools.count()
        self.thread = threading.Thread(target=self._drive, name="vllm-engine", daemon=True)
        self.thread.start()

    async def generate(self, key: int, prompt: list[int], params: SamplingParams) -> Generation:
        self.backend.check_length(prompt)
        if params.max_new_tokens <= 0:
            return Generation([], [])
        n = next(self.requests)
        sampling = self.backend._sampling_params(params, n)
        row = _Row(self.loop.create_future(), self._stop_strings(params.stop_strings))
        if row.stops is not None:  # found here on the ids (see the module's docstring), not by vLLM in text
            from vllm.sampling_params import RequestOutputKind

            sampling.stop, sampling.detokenize, sampling.output_kind = None, False, RequestOutputKind.DELTA
        self.inbox.put((f"episode-{key}-{n}", list(prompt), sampling, row))
        return await row.future

    def _stop_strings(self, strings: list[str]) -> StopStrings | None:
        if not strings:
            return None
        if self.tokenizer is None:
            self.tokenizer = self.backend.llm.get_tokenizer()
        key = tuple(strings)
        if key not in self.stops:
            self.stops[key] = StopStrings(list(strings), self.tokenizer)
        return self.stops[key]

    def retire(self, key: int) -> None:
        pass

    pause = resume = retire  # every request is served on its own: nothing waits for others

    async def aclose(self) -> None:
        self.inbox.put(self._STOP)
        await self.loop.run_in_executor(None, self.thread.join)

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
        call = None  # an `exclusive` call waiting for the running requests to finish
        while True:
            while call is None:
                try:  # sleep only while the engine is idle
                    item = self.inbox.get(block=not self.engine.has_unfinished_requests())
                except queue.Empty:
                    break
                if item is self._STOP:
                    if rows:
                        self.engine.abort_request(list(rows))
                    return
                if item[0] is None:
                    call = (item[1], item[3].future)
                    break
                self._add(rows, *item)
            if self.engine.has_unfinished_requests():
                self._step(rows)
            elif call is not None:
                fn, future = call
                call = None
                try:
                    self._resolve(future, _Result(fn()))
                except Exception as e:  # noqa: BLE001 - goes to the caller
                    self._resolve(future, e)

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
            if out.finished or (row.stops is not None and row.stops.ends_one(row.ids)):
                if not out.finished:
                    stopped.append(out.request_id)
                del rows[out.request_id]
                try:
                    self._resolve(row.future, row.done(done.finish_reason, done.stop_reason))
                except Exception as e:  # noqa: BLE001 - goes to the episode that asked
                    self._resolve(row.future, e)
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
