"""Generation benchmarks: the transformers backend against vLLM colocate, on real Sudoku prompts.

    python launch/bench.py --suite generation --set prompts=16 --set max_turns=4
    python launch/bench.py --suite generation --set prompts=64 --set max_turns=8 \
        --set 'engine_args={compilation_config: {cudagraph_mode: FULL}}'
    python launch/bench.py --suite weight_sync

Both load Gemma 3 270M (float32 on CPU; bf16 on a GPU, where the model sits for the hf backend) and
start one in-process vLLM engine. Rates are the best of `repeats` runs, since a shared machine
mostly adds noise that only slows runs down.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from rl.bench import fastest, suite

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "sudoku.yaml"
ENGINE_OPTIONS = ["kv_cache_gib", "max_model_len", "engine_args"]  # what `_engine` reads


def _setup(options: dict):
    import torch

    import envs
    from rl.chat import ChatFormat
    from rl.config import load_config
    from rl.models import load_model
    from rl.toolcalls import get_format

    cfg = load_config(CONFIG, [f"model.name={options.get('model', 'gemma-3-270m')}"])
    model, tokenizer = load_model(cfg.model)
    if torch.cuda.is_available():  # the hf backend generates where the trainer would hold the model
        model.to("cuda")
    model.eval()
    chat = ChatFormat(tokenizer, get_format(cfg.model.tool_format), cfg.rollout.chat_template_kwargs)
    return cfg, model, tokenizer, chat, envs.resolve(cfg.env.name)


@contextmanager
def _engine(cfg, model, tokenizer, options: dict):
    """The suite's vLLM engine, shut down (with the process group it set up) when the suite is done."""
    engine = _start_engine(cfg, model, tokenizer, options)
    try:
        yield engine
    finally:
        engine.shutdown()


def _start_engine(cfg, model, tokenizer, options: dict):
    import tempfile

    from rl.config_checks import engine_args_problem
    from rl.models import TINY, model_path
    from rl.vllm_backend import VLLMBackend

    sizes = {"dtype": str(model.dtype).removeprefix("torch."), "kv_cache_gib": float(options.get("kv_cache_gib", 1.0)),
             "max_model_len": int(options.get("max_model_len", 2048))}
    extra = options.get("engine_args") or {}  # more vllm.LLM arguments, as rollout.vllm.engine_args takes them
    problem = engine_args_problem(extra) if isinstance(extra, dict) else "is no mapping (e.g. {enforce_eager: true})"
    if problem:
        raise ValueError(f"engine_args={extra!r} {problem}")
    sizes.update(extra)
    if cfg.model.name != TINY:
        return VLLMBackend(model_path(cfg.model.name), weights_version=0, **sizes)
    scratch = tempfile.TemporaryDirectory(prefix="bench-tiny-")  # the tiny model exists only in memory
    engine = VLLMBackend.from_model(model, tokenizer, scratch.name, **sizes)
    engine.scratch = scratch  # removed with the engine
    return engine


def _first_turn_prompts(cfg, chat, env_cls, n: int) -> list[list[int]]:
    """The prompts `run_episodes` builds for the first turn of seeds 0..n-1."""
    from envs.base import closing_envs

    prefix = chat.encode(cfg.rollout.response_prefix) if cfg.rollout.response_prefix else []
    prompts = []
    for seed in range(n):
        with closing_envs([env_cls(**cfg.env.kwargs)]) as (env,):
            observation, _ = env.reset(seed=seed)
            prompts.append(chat.prompt_ids([{"role": "user", "content": observation}], env.tool_schemas()) + prefix)
    return prompts


def _model_turns(trajectories) -> list[list[tuple[list[int], int]]]:
    """Per turn index, every episode's (context before that turn, tokens the model generated in it)."""
    turns: list[list[tuple[list[int], int]]] = []
    for t in trajectories:
        ids, mask, base = t.prompt_ids + t.completion_ids, t.env_mask, len(t.prompt_ids)
        k = i = 0
        while i < len(mask):
            if not mask[i]:
                i += 1
                continue
            j = i
            while j < len(mask) and mask[j]:
                j += 1
            if k == len(turns):
                turns.append([])
            turns[k].append((ids[:base + i], j - i))
            k, i = k + 1, j
    return turns


def _replay(llm, turns, sampling) -> int:
    """Raw `LLM.generate` over the same turns: one batch per turn index, each row held to the
    length it had in the rollout (min_tokens = max_tokens), no env in between. `sampling(i, n)`
    gives row i's vLLM sampling parameters for n tokens."""
    from vllm.inputs import TokensPrompt

    total = 0
    for turn in turns:
        requests = [TokensPrompt(prompt_token_ids=context) for context, _ in turn]
        params = [sampling(i, n) for i, (_, n) in enumerate(turn)]
        total += sum(len(o.outputs[0].token_ids) for o in llm.generate(requests, params, use_tqdm=False))
    return total


def _seeded() -> bool:
    """Seeded rows, one seed each, except on vLLM's CPU backend: its sampler fails on a seeded row whose prompt is
    prefilled in chunks ("CPU Generator does not use offset"), as 64 Sudoku prompts are."""
    import torch

    return torch.cuda.is_available()


def _bare(temperature: float, seeded: bool):
    """Sampling that only generates: no stop strings, no detokenizing (the engine's own pace)."""
    from vllm import SamplingParams as VLLMSamplingParams

    return lambda i, n: VLLMSamplingParams(temperature=temperature, max_tokens=n, min_tokens=n, ignore_eos=True,
                                           logprobs=0, detokenize=False, seed=i if seeded else None)


def _as_rollout(vllm, params):
    """The rollout's sampling parameters (unseeded, as it asks) held to n tokens, stop strings and all: vLLM then
    detokenizes every row at every step, though held to n tokens no row ends on them (the stream finds them on
    token ids instead: `rl.vllm_stream`)."""
    def sampling(i: int, n: int):
        out = vllm._sampling_params(replace(params, max_new_tokens=n), i)
        out.min_tokens = n
        return out
    return sampling


def _prefills(scheduled) -> bool:
    """Whether an engine batch computed prompt tokens: it started a request, or went on with one for more than one
    token (a long prompt's later chunks, a preempted request's recompute; a decoding row computes one token a
    step, as there is no speculative decoding here). `scheduled` is the batch's vLLM SchedulerOutput."""
    return bool(scheduled.scheduled_new_reqs) or any(n > 1 for n in scheduled.num_scheduled_tokens.values())


_LAUNCH, _TAKE = ("schedule", "execute", "sample"), ("update", "outputs")


class _EngineSteps:
    """The engine's steps during a run: prefill steps, which compute prompt tokens (a turn's prompt joins the
    batch, or a later chunk of a long one is computed; decoding rows ride along), and decode steps, which compute
    none, with their mean milliseconds. A step is labelled by the batch whose output it waited for (the one the
    scheduler is handed back): with async scheduling (vLLM's default on CUDA) a step schedules the next batch
    while it waits for the last one, and a step that only fills that pipeline counts as a decode step.

    Each kind's milliseconds per batch are also split by where they went (`prefill_phase_ms`, `decode_phase_ms`):
    launching the batch, in the step that scheduled it (the scheduler choosing it, `schedule`; the model runner
    preparing it and launching the forward pass, `execute`; and the sampling, `sample`), and taking it back, in the
    step that waited for it (the scheduler's `update`, the request `outputs`, and the `rest`: the wait for the
    device, with async scheduling; without it, `sample` holds that wait). Without async scheduling both are one
    step, and the parts add up to the step."""

    def __init__(self, engine):
        core = engine.engine_core.engine_core
        self.engine, self.scheduler, executor = engine, core.scheduler, core.model_executor
        self.schedule = self._timed("schedule", self.scheduler.schedule)
        self.update = self._timed("update", self.scheduler.update_from_output)
        self.hooks = [(engine, "step", self._step), (self.scheduler, "update_from_output", self._update),
                      (self.scheduler, "schedule", self._schedule)]
        for phase, owner, name in [("execute", executor, "execute_model"), ("sample", executor, "sample_tokens"),
                                   ("outputs", engine.output_processor, "process_outputs")]:
            self.hooks.append((owner, name, self._timed(phase, getattr(owner, name))))
        self.step = engine.step
        compilation = getattr(getattr(engine, "vllm_config", None), "compilation_config", None)
        self.graph_tokens = getattr(compilation, "max_cudagraph_capture_size", None)  # larger ones: no CUDA graph
        for owner, name, hook in self.hooks:
            setattr(owner, name, hook)
        self.reset()

    def reset(self) -> None:
        self.steps, self.prefill_steps, self.prefilling, self.launching = 0, 0, False, "decode"
        self.prefill_tokens: list[int] = []  # each prefill batch's tokens, decoding rows' included
        self.seconds = {kind: dict.fromkeys(("step", *_LAUNCH, *_TAKE, "rest"), 0.0) for kind in ("prefill", "decode")}
        self.now = dict.fromkeys(_LAUNCH + _TAKE, 0.0)  # the step under way's

    def _timed(self, phase: str, method):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.now[phase] += time.perf_counter() - started
        return timed

    def _schedule(self, *args, **kwargs):
        scheduled = self.schedule(*args, **kwargs)
        self.launching = "prefill" if scheduled is not None and _prefills(scheduled) else "decode"
        return scheduled

    def _update(self, scheduled, *args, **kwargs):
        if _prefills(scheduled):
            self.prefilling = True
            self.prefill_tokens.append(scheduled.total_num_scheduled_tokens)
        return self.update(scheduled, *args, **kwargs)

    def _step(self):
        started = time.perf_counter()
        out = self.step()
        seconds = time.perf_counter() - started
        self.steps += 1
        self.prefill_steps += self.prefilling
        waited = self.seconds["prefill" if self.prefilling else "decode"]
        waited["step"] += seconds
        waited["rest"] += seconds - sum(self.now.values())
        for phase in _LAUNCH:
            self.seconds[self.launching][phase] += self.now[phase]
        for phase in _TAKE:
            waited[phase] += self.now[phase]
        self.prefilling, self.launching, self.now = False, "decode", dict.fromkeys(_LAUNCH + _TAKE, 0.0)
        return out

    def row(self) -> dict:
        counts = {"prefill": max(self.prefill_steps, 1), "decode": max(self.steps - self.prefill_steps, 1)}
        mean_ms = {kind: {phase: 1e3 * s / counts[kind] for phase, s in self.seconds[kind].items()}
                   for kind in counts}
        tokens = self.prefill_tokens
        sizes = {"prefill_batch_tokens_mean_max": [sum(tokens) / max(len(tokens), 1), max(tokens, default=0)]}
        if self.graph_tokens is not None:
            sizes["prefill_batches_past_cuda_graphs"] = sum(n > self.graph_tokens for n in tokens)
        return {"engine_steps": self.steps, "prefill_steps": self.prefill_steps, **sizes,
                "prefill_step_ms": mean_ms["prefill"].pop("step"), "decode_step_ms": mean_ms["decode"].pop("step"),
                "prefill_phase_ms": mean_ms["prefill"], "decode_phase_ms": mean_ms["decode"]}

    def close(self) -> None:
        for owner, name, _ in self.hooks:
            delattr(owner, name)  # the instance attributes: the class's methods again


_VLLM, _HF = "vllm colocate (VLLMBackend)", "hf (TransformersBackend)"
_TOGETHER = "vllm colocate (VLLMBackend), turns admitted together"  # rollout.vllm.admit=together


def _multi_turn_rows(cfg, env_cls, chat, backends: dict, n: int, repeats: int, ceiling: float) -> list[dict]:
    """Whole episodes on each backend, and the engine's raw rate on the very turns the vLLM rollout played in the
    same pass: bare (the ceiling), and with the rollout's stop strings (vLLM detokenizes for them)."""
    from envs.base import closing_envs
    from rl.rollout import run_episodes, turn_params

    settings, max_turns, vllm, hf = cfg.rollout, cfg.rollout.max_turns, backends[_VLLM], backends[_HF]
    own, played = vllm.admit, []

    def episodes(backend, admit="each", replayed=False):
        timing: dict = {}
        vllm.admit = admit
        with closing_envs([env_cls(**cfg.env.kwargs) for _ in range(n)]) as batch_envs:
            trajectories = run_episodes(batch_envs, list(range(n)), backend, chat, settings, metrics=timing)
        if replayed:
            played.append(trajectories)  # the turns this pass's replays play
        return timing["generated_tokens"], (trajectories, timing, admit)

    runs = {_VLLM: lambda: episodes(vllm, replayed=True), _TOGETHER: lambda: episodes(vllm, "together"),
            _HF: lambda: episodes(hf)}
    for name, sampling in {"vllm raw LLM.generate, same turns": _bare(settings.temperature, _seeded()),
                           "vllm raw LLM.generate, same turns, vLLM's stop strings":
                               _as_rollout(vllm, turn_params(chat, settings))}.items():
        runs[name] = lambda f=sampling: (_replay(vllm.llm, _model_turns(played[-1]), f), None)
    steps = _EngineSteps(vllm.llm.llm_engine)
    try:  # each run from an empty prefix cache, its engine steps counted
        results = fastest(runs, repeats, lambda: (vllm.llm.reset_prefix_cache(), steps.reset()), steps.row)
    finally:
        vllm.admit = own
        steps.close()
    rows = []
    for name, (tokens, seconds, result, engine, passes) in results.items():
        row = {"test": f"{n} episodes, max_turns {max_turns}", "backend": name, "tokens": tokens, "seconds": seconds,
               "tokens_per_s": tokens / seconds, "vs_raw_vllm": tokens / seconds / ceiling,
               "passes": [t / s for t, s in passes], "pass_tokens": [t for t, _ in passes]}
        if result is not None:
            trajectories, timing, admit = result
            row.update(episodes_per_s=n / seconds, model_turns=sum(t.info["model_turns"] for t in trajectories) / n,
                       generation_s=timing["generation_s"], env_s=timing["env_s"])
        if name != _HF:
            row.update(engine)
        if name in (_VLLM, _TOGETHER):
            row["admit"] = admit
        rows.append(row)
    bare, vllm_stops = rows[-2], rows[-1]["tokens_per_s"]
    for row in rows:  # each row's fastest pass against the bare replay's; and pass by pass, on the same turns
        row["vs_raw_same_turns"] = row["tokens_per_s"] / bare["tokens_per_s"]
        row["vs_raw_same_turns_passes"] = [a / b for a, b in zip(row["passes"], bare["passes"])]
        row["vs_same_turns_vllm_stops"] = row["tokens_per_s"] / vllm_stops
    return rows


@suite("generation", options=["model", "prompts", "repeats", "max_turns", "max_new_tokens", *ENGINE_OPTIONS])
def generation(options: dict) -> list[dict]:
    """Generated tokens/s on Sudoku prompts: transformers vs vLLM colocate vs raw vllm.LLM.generate."""
    from vllm.inputs import TokensPrompt

    from rl.generation import SamplingParams, TransformersBackend
    from rl.rollout import turn_params

    n = int(options.get("prompts", 16))
    repeats = int(options.get("repeats", 2))
    max_turns = int(options.get("max_turns", 4))  # 0 = skip the multi-turn rows
    cfg, model, tokenizer, chat, env_cls = _setup(options)
    settings = cfg.rollout
    settings.max_new_tokens = int(options.get("max_new_tokens", settings.max_new_tokens))
    hf = TransformersBackend(model, tokenizer)
    with _engine(cfg, model, tokenizer, options) as vllm:  # shut down at the end
        prompts = _first_turn_prompts(cfg, chat, env_cls, n)
        params = replace(turn_params(chat, settings), seed=0 if _seeded() else None)
        requests = [TokensPrompt(prompt_token_ids=p) for p in prompts]
        raw_params = [vllm._sampling_params(params, i) for i in range(n)]

        def raw() -> int:
            outputs = vllm.llm.generate(requests, raw_params, use_tqdm=False)
            return sum(len(o.outputs[0].token_ids) for o in outputs)

        runs = {
            "vllm raw LLM.generate": raw,
            _VLLM: lambda: sum(len(g.token_ids) for g in vllm.generate(prompts, params)),
            _HF: lambda: sum(len(g.token_ids) for g in hf.generate(prompts, params)),
        }
        warm = SamplingParams(max_new_tokens=4, stop_token_ids=chat.stop_token_ids)
        hf.generate(prompts[:2], warm), vllm.generate(prompts[:2], warm)
        # Every run starts from an empty prefix cache: prompts of one batch may share cached
        # blocks (the tool schemas), but no run reuses an earlier run's.
        results = fastest({name: lambda r=run: (r(), None) for name, run in runs.items()}, repeats,
                           vllm.llm.reset_prefix_cache)
        ceiling = results["vllm raw LLM.generate"][0] / results["vllm raw LLM.generate"][1]
        rows = []
        for name, (tokens, seconds, _, _, passes) in results.items():
            rate = tokens / seconds
            rows.append({"test": f"first turn, {n} prompts", "backend": name, "tokens": tokens, "seconds": seconds,
                         "tokens_per_s": rate, "vs_raw_vllm": rate / ceiling, "passes": [t / s for t, s in passes]})

        if max_turns > 0:
            settings.max_turns = max_turns
            backends = {_VLLM: vllm, _HF: hf}
            rows += _multi_turn_rows(cfg, env_cls, chat, backends, n, repeats, ceiling)
        return rows


@suite("weight_sync", options=["model", "repeats", *ENGINE_OPTIONS])
def weight_sync(options: dict) -> list[dict]:
    """Seconds to push trainer weights into the vLLM engine: full model, LoRA-only, and via a checkpoint on disk."""
    import tempfile

    import torch
    from peft import get_peft_model

    from rl.models import lora_config

    cfg, model, tokenizer, *_ = _setup(options)
    repeats = int(options.get("repeats", 2))
    with _engine(cfg, model, tokenizer, options) as vllm:  # shut down at the end
        rows = []

        def push(name: str, fn) -> None:
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                fn()
                times.append(time.perf_counter() - started)
            rows.append({"route": name, "tensors": vllm.last_sync.get("tensors", ""), "seconds": min(times)})

        push("in-process iterator, full model", lambda: vllm.update_weights(model))
        with tempfile.TemporaryDirectory() as tmp:
            # what a separate engine process would need; leaves a tied lm_head stale (see rl/vllm_backend)
            def via_disk():
                model.save_pretrained(tmp)
                vllm.llm.collective_rpc("reload_weights", kwargs={"weights_path": tmp})
            vllm.last_sync = {}
            push("save_pretrained + reload_weights(weights_path)", via_disk)
        peft_model = get_peft_model(model, lora_config(cfg.lora, model))
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 1e-3)
        push(f"in-process iterator, LoRA r={cfg.lora.r} merged (trainable tensors only)",
             lambda: vllm.update_weights(peft_model))
        return rows
