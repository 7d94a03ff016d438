"""Generation benchmarks: the transformers backend against vLLM colocate, on real Sudoku prompts.

    python launch/bench.py --suite generation --set prompts=16 --set max_turns=4
    python launch/bench.py --suite generation --set prompts=64 --set max_turns=8 \
        --set 'engine_args={compilation_config: {cudagraph_mode: FULL}}'
    python launch/bench.py --suite generation --set model=runs/sft --set config=configs/sudoku-sft.yaml \
        --set prompts=256 --set max_turns=12   # a GRPO step's rollout of that config
    python launch/bench.py --suite weight_sync

Both load Gemma 3 270M in the config's `model.dtype` (configs/sudoku.yaml's `auto`: float32 on CPU, bf16 on a GPU,
where the model sits for the hf backend; `generation` takes the `config` whose env, chat format, dtype and rollout
settings it plays, and the `model`) and
start one vLLM engine, its core in this process; `--set engine_process=true` runs it in a process of its own,
`both` starts one of each and adds their rows. Rates are the best of `repeats` runs, since a shared machine
mostly adds noise that only slows runs down.
"""

from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path

from rl.bench import fastest, suite
from rl.bench.engine_steps import EngineSteps

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "sudoku.yaml"
ENGINE_OPTIONS = ["kv_cache_gib", "max_model_len", "engine_args", "engine_process"]  # what `_engine` reads


def _setup(options: dict):
    import torch

    import envs
    from rl.chat import ChatFormat
    from rl.config import load_config
    from rl.models import load_model
    from rl.toolcalls import get_format

    # load_config names a missing file itself (a ConfigError, a ValueError: the bench prints it as the suite's error)
    cfg = load_config(Path(str(options.get("config", CONFIG))), [f"model.name={options.get('model', 'gemma-3-270m')}"])
    model, tokenizer = load_model(cfg.model)
    if torch.cuda.is_available():  # the hf backend generates where the trainer would hold the model
        model.to("cuda")
    model.eval()
    chat = ChatFormat(tokenizer, get_format(cfg.model.tool_format), cfg.rollout.chat_template_kwargs)
    return cfg, model, tokenizer, chat, envs.resolve(cfg.env.name)


def _engine_modes(options: dict) -> list[bool]:
    """Where the suite's engines run their core (`engine_process`): this process (false), its own (true), or one
    engine of each (both: the rows of one run compare them)."""
    given = str(options.get("engine_process", "false")).lower()
    modes = {"false": [False], "true": [True], "both": [False, True]}
    if given not in modes:
        raise ValueError(f"engine_process={options['engine_process']!r} is not accepted (accepted: false, true, both)")
    return modes[given]


@contextmanager
def _engine(cfg, model, tokenizer, options: dict, own_process: bool = False):
    """The suite's vLLM engine, shut down (with the process group it set up) when the suite is done."""
    engine = _start_engine(cfg, model, tokenizer, options, own_process)
    try:
        yield engine
    finally:
        engine.shutdown()


def _start_engine(cfg, model, tokenizer, options: dict, own_process: bool):
    import tempfile

    from rl.config_checks import engine_args_problem
    from rl.models import TINY, model_path
    from rl.vllm_backend import VLLMBackend

    sizes = {"dtype": str(model.dtype).removeprefix("torch."), "kv_cache_gib": float(options.get("kv_cache_gib", 1.0)),
             "max_model_len": int(options.get("max_model_len", 2048)), "engine_process": own_process}
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


_VLLM, _HF = "vllm colocate (VLLMBackend)", "hf (TransformersBackend)"
_TOGETHER = "vllm colocate (VLLMBackend), turns admitted together"  # rollout.vllm.admit=together
_PROC = "vllm colocate (VLLMBackend), engine core in its own process"  # rollout.vllm.engine_process=true
_PROC_TOGETHER = f"{_PROC}, turns admitted together"
_PROC_REPLAY = "vllm raw LLM.generate, same turns, engine core in its own process"


def _multi_turn_rows(cfg, env_cls, chat, backends: dict, n: int, repeats: int, ceiling: float) -> list[dict]:
    """Whole episodes on each backend, and the engine's raw rate on the very turns the vLLM rollout played in the
    same pass: bare (the ceiling), and with the rollout's stop strings (vLLM detokenizes for them). With an engine
    whose core runs in its own process (`backends[_PROC]`), its rollouts and a bare replay on it too."""
    from envs.base import closing_envs
    from rl.rollout import run_episodes, turn_params

    settings, max_turns, vllm, hf = cfg.rollout, cfg.rollout.max_turns, backends[_VLLM], backends[_HF]
    proc, played = backends.get(_PROC), []
    engines = [e for e in (vllm, proc) if e is not None]
    own = [e.admit for e in engines]

    def episodes(backend, admit="each", replayed=False):
        timing: dict = {}
        backend.admit = admit
        with closing_envs([env_cls(**cfg.env.kwargs) for _ in range(n)]) as batch_envs:
            trajectories = run_episodes(batch_envs, list(range(n)), backend, chat, settings, metrics=timing)
        if replayed:
            played.append(trajectories)  # the turns this pass's replays play
        return timing["generated_tokens"], (trajectories, timing, admit)

    bare = _bare(settings.temperature, _seeded())
    runs = {_VLLM: lambda: episodes(vllm, replayed=True), _TOGETHER: lambda: episodes(vllm, "together")}
    if proc is not None:
        runs.update({_PROC: lambda: episodes(proc), _PROC_TOGETHER: lambda: episodes(proc, "together"),
                     _PROC_REPLAY: lambda: (_replay(proc.llm, _model_turns(played[-1]), bare), None)})
    runs[_HF] = lambda: episodes(hf)
    for name, sampling in {"vllm raw LLM.generate, same turns": bare,
                           "vllm raw LLM.generate, same turns, vLLM's stop strings":
                               _as_rollout(vllm, turn_params(chat, settings))}.items():
        runs[name] = lambda f=sampling: (_replay(vllm.llm, _model_turns(played[-1]), f), None)
    # the engine's steps, counted where its core runs in this process
    steps = None if vllm.engine_process else EngineSteps(vllm.llm.llm_engine)

    def reset() -> None:
        for engine in engines:
            engine.llm.reset_prefix_cache()
        if steps is not None:
            steps.reset()

    try:  # each run from an empty prefix cache, its engine steps counted
        results = fastest(runs, repeats, reset, steps.row if steps is not None else dict)
    finally:
        for engine, admit in zip(engines, own):
            engine.admit = admit
        if steps is not None:
            steps.close()
    return _turn_rows(results, f"{n} episodes, max_turns {max_turns}", n, ceiling, vllm.engine_process)


def _turn_rows(results: dict, test: str, n: int, ceiling: float, own_process: bool) -> list[dict]:
    """The multi-turn runs' rows (`fastest`'s results, the two replays of the in-process engine last), each against
    the bare replay's and the stop-string replay's rates; `own_process`: the first engine's core runs in its own."""
    rows = []
    for name, (tokens, seconds, result, engine, passes) in results.items():
        row = {"test": test, "backend": name, "tokens": tokens, "seconds": seconds,
               "tokens_per_s": tokens / seconds, "vs_raw_vllm": tokens / seconds / ceiling,
               "passes": [t / s for t, s in passes], "pass_tokens": [t for t, _ in passes]}
        if result is not None:
            trajectories, timing, admit = result
            row.update(episodes_per_s=n / seconds, model_turns=sum(t.info["model_turns"] for t in trajectories) / n,
                       generation_s=timing["generation_s"], env_s=timing["env_s"])
        if name != _HF:
            on_proc = name in (_PROC, _PROC_TOGETHER, _PROC_REPLAY)
            row.update({} if on_proc else engine, engine_process=on_proc or own_process)
            if result is not None:
                row["admit"] = admit
        rows.append(row)
    bare, vllm_stops = rows[-2], rows[-1]["tokens_per_s"]
    for row in rows:  # each row's fastest pass against the bare replay's; and pass by pass, on the same turns
        row["vs_raw_same_turns"] = row["tokens_per_s"] / bare["tokens_per_s"]
        row["vs_raw_same_turns_passes"] = [a / b for a, b in zip(row["passes"], bare["passes"])]
        row["vs_same_turns_vllm_stops"] = row["tokens_per_s"] / vllm_stops
    return rows


@suite("generation", options=["model", "config", "prompts", "repeats", "max_turns", "max_new_tokens",
                              *ENGINE_OPTIONS])
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
    hf = TransformersBackend(model, tokenizer, autocast=cfg.model.autocast)
    with ExitStack() as stack:  # the engines shut down at the end
        vllm, *proc = [stack.enter_context(_engine(cfg, model, tokenizer, options, m)) for m in _engine_modes(options)]
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
        for backend in (hf, vllm, *proc):  # each one warm before its first timed run
            backend.generate(prompts[:2], warm)
        for engine in proc:  # the first-turn rows below warm the in-process engine; this one plays them untimed
            engine.generate(prompts, params)
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
            backends = {_VLLM: vllm, _HF: hf, **({_PROC: proc[0]} if proc else {})}
            rows += _multi_turn_rows(cfg, env_cls, chat, backends, n, repeats, ceiling)
        return rows


@suite("weight_sync", options=["model", "repeats", *ENGINE_OPTIONS])
def weight_sync(options: dict) -> list[dict]:
    """Seconds to push trainer weights into the vLLM engine: full model, LoRA-only, and via a checkpoint on disk; on
    an engine core in this process, in its own (a buffer shared as a CUDA IPC handle; on a CPU a file in shared
    memory: rl/vllm_worker.py), or both (`engine_process`)."""
    import tempfile

    import torch
    from peft import get_peft_model

    from rl.models import lora_config

    cfg, model, tokenizer, *_ = _setup(options)
    repeats = int(options.get("repeats", 2))
    with ExitStack() as stack:  # the engines shut down at the end
        engines = [stack.enter_context(_engine(cfg, model, tokenizer, options, m)) for m in _engine_modes(options)]
        rows = []

        def push(vllm, name: str, fn) -> None:
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                fn()
                times.append(time.perf_counter() - started)
            where = "engine core in its own process" if vllm.engine_process else "in-process iterator"
            rows.append({"route": f"{where}, {name}", "tensors": vllm.last_sync.get("tensors", ""),
                         "seconds": min(times)})

        for vllm in engines:
            push(vllm, "full model", lambda e=vllm: e.update_weights(model))
        with tempfile.TemporaryDirectory() as tmp:
            # what a separate engine process would need without IPC; leaves a tied lm_head stale (rl/vllm_backend)
            def via_disk(vllm):
                model.save_pretrained(tmp)
                vllm.llm.collective_rpc("reload_weights", kwargs={"weights_path": tmp})
            for vllm in engines:
                vllm.last_sync = {}
                push(vllm, "save_pretrained + reload_weights(weights_path)", lambda e=vllm: via_disk(e))
        peft_model = get_peft_model(model, lora_config(cfg.lora, model))
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 1e-3)
        for vllm in engines:
            push(vllm, f"LoRA r={cfg.lora.r} merged (trainable tensors only)",
                 lambda e=vllm: e.update_weights(peft_model))
        return rows
