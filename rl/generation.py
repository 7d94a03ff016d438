"""Generation backends: token ids in, token ids and logprobs out.

The rollout engine talks only to `GenerationBackend` (`generate`, `update_weights`,
`name`), so it never knows which one it has. It asks for one episode's turn at a time
through a `GenerationStream`:

- a backend that can serve requests one by one (vLLM's engine, a vLLM server) opens its
  own stream with `backend.stream(episodes, wait_s)`: each request joins the running batch at
  once (an in-process engine set to `rollout.vllm.admit: together` holds them for the others);
- any other backend gets a `BatchedStream`, which gathers requests into batched
  `generate` calls (the transformers backend, scripted test policies, experts).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from rl.engine_clock import EngineClock
from rl.stop_strings import CONTEXT_TOKENS, StopStrings

if TYPE_CHECKING:
    import torch


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 64
    stop_token_ids: list[int] = field(default_factory=list)
    stop_strings: list[str] = field(default_factory=list)  # kept in the output, like vLLM's include_stop_str_in_output
    seed: int | None = None


@dataclass
class Generation:
    """One sampled continuation.

    `stopped_with` is the stop token it ended on; `stop_string` the stop string it ended
    with (its tokens are the last ones). Both None: cut off at `max_new_tokens`.
    """

    token_ids: list[int]
    logprobs: list[float]
    stopped_with: int | None = None
    stop_string: str | None = None

    @property
    def finished(self) -> bool:
        return self.stopped_with is not None or self.stop_string is not None


class GenerationError(RuntimeError):
    """A request that failed for good (after any retries). It fails only its own episode."""


class GenerationBackend(Protocol):
    name: str

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]: ...

    def update_weights(self, model: torch.nn.Module, version: int | None = None) -> bool: ...


def holds_version(backend, version: int | None) -> bool:
    """Whether `backend`'s engine already holds the trainer's weights of `version` (the trainer's global step), so a
    push of them would change nothing. None is no version: it is never held, and always pushed."""
    return version is not None and version == getattr(backend, "weights_version", None)


class GenerationStream(Protocol):
    """Per-episode generation requests, inside the rollout's event loop."""

    async def generate(self, key: int, prompt: list[int], params: SamplingParams) -> Generation: ...

    def retire(self, key: int) -> None:
        """Episode `key` asks for nothing more (it ended)."""

    def pause(self, key: int) -> None:
        """Episode `key` will not ask for a while (it waits for an env server); `resume` ends that."""

    def resume(self, key: int) -> None: ...

    async def aclose(self) -> None: ...


def run_sync(coro):
    """Run a coroutine to completion, also when the caller already runs an event loop (notebooks)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with cf.ThreadPoolExecutor(max_workers=1) as runner:
        return runner.submit(asyncio.run, coro).result()


Batch = Callable[[list[int], list[list[int]], SamplingParams], list[Generation]]


def open_stream(backend: GenerationBackend, episodes: int, batch_wait_s: float) -> GenerationStream:
    opener = getattr(backend, "stream", None)
    if opener is not None:
        return opener(episodes, batch_wait_s)
    return BatchedStream(lambda keys, prompts, params: backend.generate(prompts, params), episodes, batch_wait_s)


class RoundGate:
    """Asked turns held until every live episode has asked (a round), then released together, in one call.

    A `wait_s` timer starts when a turn is held with no released turn still out (not yet answered), or when the
    last one out is answered: a straggler (an episode in a slow env step) holds the others that long at most. A held
    turn whose episode was cancelled (its rollout raised; the episode retires) is dropped, and does not count toward
    a round. `BatchedStream` and the in-process vLLM stream (`rollout.vllm.admit: together`) gate turns by it.
    """

    def __init__(self, episodes: int, wait_s: float, release: Callable[[list], None]):
        self.live, self.wait_s, self.release = episodes, wait_s, release
        self.loop = asyncio.get_running_loop()
        self.held: list[tuple[asyncio.Future, object]] = []
        self.out = 0  # released turns not yet answered
        self.timer: asyncio.TimerHandle | None = None

    def ask(self, future: asyncio.Future, turn) -> None:
        """Hold `turn`, answered through `future`."""
        self.held.append((future, turn))
        self._check()

    def retire(self) -> None:
        self.live -= 1
        self._check()

    def resume(self) -> None:
        self.live += 1

    def close(self) -> None:
        """Stop the timer; the turns still held will never be released: their episodes hear it, rather than hang."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for future, _ in self.held:
            if not future.done():
                future.set_exception(RuntimeError("the stream closed before this turn was admitted"))
        self.held = []

    def _check(self, timed_out: bool = False) -> None:
        if timed_out:
            self.timer = None
        if timed_out or len(self.held) >= self.live:  # once a round, not at every ask
            self.held = [(future, turn) for future, turn in self.held if not future.done()]
        if not self.held:
            return
        if not timed_out and len(self.held) < self.live:
            if self.timer is None and not self.out:
                self.timer = self.loop.call_later(self.wait_s, self._check, True)
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        held, self.held = self.held, []
        self.out += len(held)
        for future, _ in held:
            future.add_done_callback(self._answered)
        self.release([turn for _, turn in held])

    def _answered(self, _future: asyncio.Future) -> None:
        self.out -= 1
        self._check()


class BatchedStream:
    """Per-episode requests gathered into batched calls, for backends that only batch.

    A batch starts when every live episode waits for the model, so episodes with fast
    envs move in lockstep, in episode order, with the batch composition of a round-based
    loop (deterministic, and as large as it can be). When some episode is still in a slow
    env step, the waiting ones start anyway `wait_s` after the first of them asked (or after
    the batch running then ended), so a straggler delays nobody for longer than that
    (`RoundGate`). Batches run one at a time, in one worker thread; requests that arrive
    meanwhile form the next.
    """

    def __init__(self, batch: Batch, episodes: int, wait_s: float):
        self.batch = batch
        self.gate = RoundGate(episodes, wait_s, self._start)
        self.worker = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        self.clock = EngineClock()  # its batched calls

    async def generate(self, key: int, prompt: list[int], params: SamplingParams) -> Generation:
        future = asyncio.get_running_loop().create_future()
        self.gate.ask(future, (key, prompt, params, future))
        return await future

    def retire(self, key: int) -> None:
        self.gate.retire()

    pause = retire  # a paused episode is not waited for

    def resume(self, key: int) -> None:
        self.gate.resume()

    async def aclose(self) -> None:
        self.gate.close()
        self.worker.shutdown(wait=False, cancel_futures=True)

    def _start(self, requests: list) -> None:
        asyncio.get_running_loop().create_task(self._run(sorted(requests, key=lambda r: r[0])))

    async def _run(self, requests: list) -> None:
        loop = asyncio.get_running_loop()
        # One call per distinct sampling setting; only the token budget may differ within one.
        groups: dict[str, list] = {}
        for request in requests:
            groups.setdefault(repr(replace(request[2], max_new_tokens=0)), []).append(request)
        for group in groups.values():
            params = replace(group[0][2], max_new_tokens=max(r[2].max_new_tokens for r in group))
            keys, prompts = [r[0] for r in group], [r[1] for r in group]
            try:
                outputs = await loop.run_in_executor(self.worker, self.clock.timed, self.batch, keys, prompts, params)
                if len(outputs) != len(group):  # a turn left unanswered would stall the gate's rounds
                    raise RuntimeError(f"the backend returned {len(outputs)} generations for {len(group)} prompts")
            except Exception as e:  # noqa: BLE001 - handed to the episodes that asked
                outputs = [e] * len(group)
            for (_, _, _, future), out in zip(group, outputs):
                if future.done():
                    continue
                if isinstance(out, Exception):
                    future.set_exception(out)
                else:
                    future.set_result(out)


class TransformersBackend:
    """Batched `model.generate` with left padding; logprobs of the sampled tokens.

    Logprobs are those of the temperature-scaled distribution before top-k/top-p
    filtering, the quantity the GRPO loss compares against.
    """

    name = "hf"
    takes_images = True  # a prompt may be an `rl.vision.ImagePrompt`, for a vision-language model

    def __init__(self, model: torch.nn.Module, tokenizer, batch_size: int | None = None, autocast: str = "none"):
        from rl.config_checks import AUTOCAST

        if autocast not in AUTOCAST:
            raise ValueError(f"autocast={autocast!r}: accepted: {', '.join(AUTOCAST)} (model.autocast)")
        self.model = model
        self.tokenizer = tokenizer
        self.autocast = autocast  # model.autocast (none, bfloat16): generate at the loss passes' matmul precision
        self.pad_token_id = tokenizer.pad_token_id
        self.batch_size = batch_size
        self._stop_criteria: dict[tuple[str, ...], tuple[object, StopStrings]] = {}

    def _stopping_criteria(self, stop_strings: list[str], prompts: list[list[int]], width: int):
        """The criteria of one `generate` call: a row stops where its own text holds a stop string (`_TextStops`).

        Their `StopStringCriteria` and `StopStrings` are built once per set of stop strings: building the former
        walks the whole vocabulary (2 s for Gemma's 262k tokens, measured on an H200 host), which
        `generate(stop_strings=...)` would do again on every call, i.e. every turn."""
        from transformers import StoppingCriteriaList
        from transformers.generation.stopping_criteria import StopStringCriteria

        key = tuple(stop_strings)
        if key not in self._stop_criteria:
            self._stop_criteria[key] = (StopStringCriteria(self.tokenizer, list(key)),
                                        StopStrings(list(key), self.tokenizer))
        hint, stops = self._stop_criteria[key]
        return StoppingCriteriaList([_TextStops(hint, stops, [p[-CONTEXT_TOKENS:] for p in prompts], width)])

    def update_weights(self, model: torch.nn.Module, version: int | None = None) -> bool:
        self.model = model  # same process, same tensors: nothing to copy
        return False

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        step = self.batch_size or len(prompts) or 1
        out: list[Generation] = []
        for i in range(0, len(prompts), step):
            out.extend(self._generate_batch(prompts[i:i + step], params))
        return out

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        import torch

        from rl.vision import batch_image_inputs, prompt_images

        if not prompts:
            return []
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention_mask[row, width - len(ids):] = 1
        # A vision-language model's image placeholder is the processor's to place, never the model's
        image_token_id = getattr(self.model.config, "image_token_id", None)
        rows = [prompt_images(p) for p in prompts]
        images = batch_image_inputs(rows, input_ids, image_token_id) if any(rows) else {}
        greedy = params.temperature <= 0
        # Given stop tokens replace the model's EOS ids (as in vLLM); without them the EOS ids stop and are reported
        stop_ids = list(params.stop_token_ids) or self._eos_ids()
        if params.seed is not None:
            torch.manual_seed(params.seed)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=self.autocast == "bfloat16"):
                result = self.model.generate(
                    input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                    max_new_tokens=params.max_new_tokens, do_sample=not greedy,
                    temperature=None if greedy else params.temperature,
                    top_p=None if greedy else params.top_p, top_k=None if greedy else (params.top_k or 0),
                    eos_token_id=stop_ids or None, pad_token_id=self.pad_token_id,
                    stopping_criteria=(self._stopping_criteria(params.stop_strings, prompts, width)
                                       if params.stop_strings else None),
                    output_logits=True, return_dict_in_generate=True,
                    # Each process plays its own episodes on whole weights (rl.sharding.full_weights), so
                    # generate never waits for the others (transformers would under ZeRO-3 or FSDP).
                    synced_gpus=False,
                    suppress_tokens=[image_token_id] if image_token_id is not None else None,
                    **{k: v.to(device) for k, v in images.items()},
                )
        finally:
            self.model.train(was_training)
        new_tokens = result.sequences[:, width:].cpu()
        # One step at a time: a float copy of all steps' logits at once is batch x new x vocab
        # floats (6 GB for 4 rows of 384 tokens with Gemma's 262k vocabulary).
        scale = params.temperature if not greedy else 1.0
        tokens = new_tokens.to(result.logits[0].device)
        logprobs = torch.stack([
            torch.log_softmax(step.float() / scale, dim=-1).gather(-1, tokens[:, i:i + 1]).squeeze(-1)
            for i, step in enumerate(result.logits)  # each (batch, vocab), unprocessed
        ], dim=1).cpu()
        stops = self._stop_criteria[tuple(params.stop_strings)][1] if params.stop_strings else None
        outputs = []
        for row, prompt in enumerate(prompts):
            ids, stopped_with, stop_string = _cut(new_tokens[row].tolist(), stop_ids, stops,
                                                  prompt[-CONTEXT_TOKENS:])
            outputs.append(Generation(ids, logprobs[row, :len(ids)].tolist(), stopped_with, stop_string))
        return outputs

    def _eos_ids(self) -> list[int]:
        config = getattr(self.model, "generation_config", None)
        eos = getattr(config, "eos_token_id", None)
        return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


def _cut(ids: list[int], stop_token_ids: list[int], stops: StopStrings | None,
         context: list[int]) -> tuple[list[int], int | None, str | None]:
    """A padded row cut after the first token whose text (after the prompt's last tokens, `context`) holds a stop
    string, or else after its first stop token, as the vLLM paths cut it (a stop token whose own text completes a
    stop string ends the row on the string, as in vLLM with the stop string kept in the output)."""
    tokens = set(stop_token_ids)
    end = next((j + 1 for j, tok in enumerate(ids) if tok in tokens), None)
    found = stops.first(ids[:end], context) if stops is not None else None
    if found is not None:
        return ids[:found[0]], None, found[1]
    if end is not None:
        return ids[:end], ids[end - 1], None
    return ids, None, None


class _TextStops:
    """transformers stopping criteria that stop a row where its own text holds a stop string.

    transformers' `StopStringCriteria` is asked first, at every step (tensor operations on the rows' last tokens,
    no decoding). It also matches a stop string begun in the prompt's tokens and finished by the row's first ones,
    and it matches token strings, not decoded text, so a row it flags stops only where `StopStrings` finds a stop
    string in the row's text, decoded after the prompt's last tokens (`contexts`). Rows start at column `width`
    (left padding). A stop string it misses ends the row at the same token all the same, once the row has ended
    (`_cut`): such a row costs only the tokens generated after it.
    """

    def __init__(self, hint, stops: StopStrings, contexts: list[list[int]], width: int):
        self.hint, self.stops, self.contexts, self.width = hint, stops, contexts, width
        self.stopped: set[int] = set()  # rows stopped here: transformers pads them from then on

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        import torch

        flagged = self.hint(input_ids, scores, **kwargs)
        rows = flagged.nonzero().flatten().tolist()  # a sync, as transformers' own stop check makes every step
        if not rows:
            return flagged
        keep = [row for row in rows if row in self.stopped
                or self.stops.holds(input_ids[row, self.width:].tolist(), self.contexts[row])]
        self.stopped.update(keep)
        done = torch.zeros_like(flagged)
        done[keep] = True
        return done
