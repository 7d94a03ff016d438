"""vLLM colocate backend: a `vllm.LLM` on the trainer's device behind the `GenerationBackend` protocol.

By default the engine runs in the trainer's own process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so
a weight update hands vLLM the trainer's tensors directly: no disk, no IPC, no second copy of
the model beside the engine's own. With `engine_process=True` (`rollout.vllm.engine_process`)
its core runs in a process of its own, as vLLM runs it by default, so its steps never wait
for the trainer's Python (the episodes' env steps, their next turn's tokens); weights then
reach it through a buffer shared as a CUDA IPC handle, or a file in shared memory on a CPU
(`rl.vllm_worker`).

Weight sync goes through vLLM's layerwise in-place reload (`reload_weights` with a
`weights_iterator` in checkpoint format). That path rebuilds whatever the platform derives
from the weights: on CPU every linear layer keeps only a oneDNN-packed copy of its weight
(the `weight` parameter is emptied), which is why copying tensors into parameters, as
TRL's colocate sync does, fails there. Two rules follow from how that reload works:

- a layer gets all of its tensors or none: q/k/v (fused into `qkv_proj`) and gate/up
  (`gate_up_proj`) travel together, or the missing shards would be left uninitialised;
- tied tensors travel together: a tied `lm_head` has its own packed copy of the
  embedding, rebuilt only when `lm_head.weight` itself is sent. (Reloading from a saved
  checkpoint never sends it, because safetensors drops tied weights: the embedding changes
  but the logits keep using the old matrix.)

After the first full push only tensors the optimizer can change are sent (parameters
with `requires_grad`, LoRA layers merged into their base weight), and the prefix cache is
cleared, since its KV blocks were computed with the old weights.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rl.config import RolloutSection
from rl.generation import Generation, SamplingParams, holds_version
from rl.resume import end_process_group
from rl.stop_strings import CONTEXT_TOKENS, StopStrings
from rl.vllm_stream import EngineStream, sampled_logprobs, stopped_generation
from rl.vllm_weights import fused_groups, quiet_reload, save_for_vllm, scoped_env, small_vocab_runner, weights_for_sync
from rl.vllm_worker import WORKER_EXTENSION, WeightSender, check_shareable, gpu_uuid

if TYPE_CHECKING:
    import torch


class VLLMBackend:
    """Batched generation from token ids with a vLLM engine, its core in this process or in its own.

    Logprobs are those of the sampled tokens under the temperature-scaled distribution
    (vLLM's `processed_logprobs`). With `top_k`/`top_p` filtering on, vLLM renormalises
    over the kept tokens first, so they then differ from the transformers backend's
    (and from what TRL's loss recomputes); with the defaults (top_k 0, top_p 1) they are
    the same quantity.

    `weights_version`: the version (e.g. the trainer's global step) of the weights at
    `model_path`, when they are the trainer's starting weights; `update_weights` with the
    same version is then a no-op, and frozen tensors are never sent. None: unknown, the
    first update sends everything.

    `kv_cache_gib` sets the KV cache size directly. Without it vLLM on CPU sizes the cache
    as `gpu_memory_utilization` x RAM minus the resident size of the whole process, which
    in colocate mode includes the trainer's model and optimizer.

    Sleep mode (freeing the engine's memory while the trainer steps) exists in vLLM only
    on CUDA, ROCm and XPU; on CPU it is refused.

    CPU threads: the engine uses the process's torch thread count (vLLM's CPU worker then
    turns `torch.set_num_threads` into a no-op for the whole process). Where other
    processes compete for the cores, OMP_NUM_THREADS=1 avoids OpenMP spin-wait collapse
    (measured on a shared 2-core machine: 73 tok/s with 1 thread, 7-17 with 2; idle, 2
    threads gave 112).
    """

    name = "vllm"

    def __init__(self, model_path: str | Path, *, tokenizer_path: str | Path | None = None, dtype: str = "auto",
                 gpu_memory_utilization: float = 0.3, kv_cache_gib: float | None = None, max_model_len: int = 4096,
                 enable_sleep_mode: bool = False, enable_prefix_caching: bool = True, seed: int = 0,
                 enforce_eager: bool | None = None, weights_version: int | None = None, engine_process: bool = False,
                 **engine_kwargs: Any):
        _engine_mode(engine_process)
        from vllm import LLM
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
        if enable_sleep_mode and not current_platform.is_sleep_mode_available():
            raise ValueError(f"enable_sleep_mode=True: vLLM has no sleep mode on {current_platform.device_name} "
                             "(only CUDA, ROCm, XPU); use enable_sleep_mode=False")
        if kv_cache_gib is not None:
            engine_kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * 2**30)
        if engine_process:
            if engine_kwargs.get("worker_extension_cls", WORKER_EXTENSION) != WORKER_EXTENSION:
                raise ValueError(f"worker_extension_cls={engine_kwargs['worker_extension_cls']!r}: an engine in its "
                                 f"own process takes the trainer's weights through {WORKER_EXTENSION}")
            engine_kwargs["worker_extension_cls"] = WORKER_EXTENSION
        import torch

        if engine_process and torch.cuda.is_available():
            check_shareable()

        # vLLM's worker sets the process's float32 matmul precision from VLLM_FLOAT32_MATMUL_PRECISION
        # (default "highest"); in the trainer's process that silently turned the trainer's TF32
        # (model.tf32) off. The engine takes the precision the process already has, and it stays.
        precision = torch.get_float32_matmul_precision()
        told = "VLLM_FLOAT32_MATMUL_PRECISION" in os.environ
        had_group = _process_group()
        try:
            with contextlib.nullcontext() if on_cpu else small_vocab_runner(model_path), \
                    scoped_env("VLLM_FLOAT32_MATMUL_PRECISION", None if told else precision), \
                    scoped_env("CUDA_VISIBLE_DEVICES", _this_gpu() if engine_process else None):
                self.llm = LLM(
                    model=str(model_path), tokenizer=str(tokenizer_path or model_path), dtype=dtype, seed=seed,
                    gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                    enforce_eager=on_cpu if enforce_eager is None else enforce_eager,
                    enable_sleep_mode=enable_sleep_mode, enable_prefix_caching=enable_prefix_caching,
                    logprobs_mode="processed_logprobs", **engine_kwargs)
        finally:
            torch.set_float32_matmul_precision(precision)
        # vLLM's worker sets up torch.distributed's default group when the process has none (a run of one
        # process); under a launcher (accelerate, one process per GPU) it joins the launcher's. Only one the
        # engine made is ended with it (`shutdown`).
        self.owns_process_group = not had_group and _process_group()
        self.ended = False  # by `shutdown`
        self.engine_process = engine_process
        self.max_model_len = max_model_len
        self.model_name = str(model_path)
        self.vocab_size = self.llm.llm_engine.model_config.get_vocab_size()
        self.sleep_mode = enable_sleep_mode
        self.weights_version = weights_version
        self._frozen_in_sync = weights_version is not None  # the engine already holds every frozen tensor
        self._sender = WeightSender(self.llm) if engine_process else None
        if engine_process:
            self._check_engine_gpu()
        self._groups: dict[str, list[str]] | None = None  # the engine model's fused layers, asked once
        self.last_sync: dict[str, float] = {}  # {"tensors": n, "seconds": s} of the last push
        self._stops: dict[tuple[str, ...], StopStrings] = {}
        self.switch_interval_s: float | None = None  # the GIL's while a stream is open (None: the process's own)
        self.admit = "each"  # when a rollout's turns join the running batch (rollout.vllm.admit)

    @classmethod
    def from_model(cls, model: torch.nn.Module, tokenizer, directory: str | Path, **kwargs) -> VLLMBackend:
        """Save `model` (LoRA merged) and `tokenizer` into `directory` and start an engine on them.

        For models that exist only in memory (the tiny test model, resized embeddings);
        the engine's weights are then version 0 unless `weights_version` says otherwise.
        """
        save_for_vllm(model, tokenizer, directory)
        kwargs.setdefault("weights_version", 0)
        return cls(directory, **kwargs)

    @classmethod
    def from_settings(cls, model: torch.nn.Module, tokenizer, directory: str | Path, settings, seed: int,
                      **kwargs) -> VLLMBackend:
        """`from_model` in the settings' dtype (auto: the model's), sized by a run's `rollout.vllm` settings
        (`VLLMSection`), with its `engine_args`."""
        dtype = getattr(settings, "dtype", "auto")
        if dtype == "auto":
            dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        backend = cls.from_model(model, tokenizer, directory, dtype=dtype, seed=seed,
                                 engine_process=getattr(settings, "engine_process", False),
                                 gpu_memory_utilization=settings.gpu_memory_utilization,
                                 kv_cache_gib=settings.kv_cache_gib, max_model_len=settings.max_model_len,
                                 **getattr(settings, "engine_args", {}), **kwargs)
        backend.switch_interval_s = getattr(settings, "switch_interval_s", backend.switch_interval_s)
        backend.admit = getattr(settings, "admit", backend.admit)
        return backend

    # ------------------------------------------------------------------ generation

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        if not prompts:
            return []
        if params.max_new_tokens <= 0:
            return [Generation([], []) for _ in prompts]
        from vllm.inputs import TokensPrompt

        for p in prompts:
            self.check_length(p)
        requests = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        sampling = [self._sampling_params(params, i) for i in range(len(prompts))]
        # vLLM finds stop strings in the text it detokenizes, except after a prompt that ends inside a character:
        # its text then holds the prompt's (see `rl.vllm_stream`), so that row's are found here once it ends.
        stops = self.stop_strings(params.stop_strings)
        ours = [stops is not None and stops.ends_inside_a_character(p) for p in prompts]
        for row, own in zip(sampling, ours):
            if own:
                row.stop, row.detokenize = None, False
        outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        return [stopped_generation(list(o.token_ids), sampled_logprobs(o), o.finish_reason, o.stop_reason,
                                   stops if own else None, p[-CONTEXT_TOKENS:])
                for o, own, p in zip((out.outputs[0] for out in outputs), ours, prompts)]

    def stop_strings(self, strings: list[str]) -> StopStrings | None:
        """The engine's tokenizer's `StopStrings` for `strings` (None for none), built once per set."""
        if not strings:
            return None
        key = tuple(strings)
        if key not in self._stops:
            self._stops[key] = StopStrings(list(strings), self.llm.get_tokenizer())
        return self._stops[key]

    def check_length(self, prompt: list[int]) -> None:
        if len(prompt) >= self.max_model_len:
            raise ValueError(f"prompt of {len(prompt)} tokens does not fit max_model_len={self.max_model_len} "
                             "(raise the backend's max_model_len)")

    def stream(self, episodes: int | None = None, wait_s: float = RolloutSection.batch_wait_s) -> EngineStream:
        """Per-episode requests, continuously batched by the engine (see `rl.vllm_stream`). With `admit` set to
        "together", the turns of a rollout of `episodes` episodes join the batch together, once every live one has
        asked (with none generating, a slow env step holds the others `wait_s` at most)."""
        together = self.admit == "together" and episodes is not None
        return EngineStream(self, self.switch_interval_s, episodes if together else None, wait_s)

    @staticmethod
    def _sampling_params(params: SamplingParams, index: int):
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.sampling_params import RequestOutputKind

        greedy = params.temperature <= 0
        return VLLMSamplingParams(
            temperature=0.0 if greedy else params.temperature,
            top_p=1.0 if greedy else params.top_p,
            top_k=0 if greedy else max(params.top_k, 0),  # 0 = off, as in SamplingParams
            max_tokens=params.max_new_tokens,
            # Given stop tokens replace the model's EOS ids, as `eos_token_id=` does in transformers.
            stop_token_ids=list(params.stop_token_ids), ignore_eos=bool(params.stop_token_ids),
            stop=list(params.stop_strings) or None, include_stop_str_in_output=True,
            detokenize=bool(params.stop_strings),  # text is needed only to find stop strings
            skip_special_tokens=False,  # match stop strings against the text transformers decodes
            logprobs=0,  # the sampled token's own logprob
            # One seed per row: the same seed on every row would give a group identical samples.
            seed=None if params.seed is None else params.seed + index,
            # Only the finished sequence is read: the engine then builds no output object for every running row
            # at every step (its default, CUMULATIVE, does).
            output_kind=RequestOutputKind.FINAL_ONLY,
            # Built afresh for every request (its lists too), so vLLM's copy of it may be shallow: its deep copy
            # was 1.3% of the engine thread's time in a profiled rollout (rl/bench/baselines/README.md)
            skip_clone=True,
        )

    # ------------------------------------------------------------------ weights

    def update_weights(self, model: torch.nn.Module, version: int | None = None) -> bool:
        """Push the trainer's current weights into the engine; False if `version` is already there.

        `model` is a transformers model or a peft model (LoRA is merged tensor by tensor on
        copies; the trainer's model is not touched). `version` (the trainer's global step)
        skips the push when the engine already holds it; None always pushes.
        """
        if holds_version(self, version):
            return False
        groups = self.fused_groups()
        self.load_weights(weights_for_sync(model, groups, changing_only=self._frozen_in_sync), version)
        return True

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]], version: int | None) -> int:
        """Reload the engine's weights from (checkpoint name, tensor) pairs; returns how many were sent.

        Call it while no request runs (between rollouts, or through `EngineStream.exclusive`).
        """
        import torch

        started = time.perf_counter()
        sent = 0

        def counted() -> Iterator[tuple[str, torch.Tensor]]:
            nonlocal sent
            for name, tensor in weights:
                sent += 1
                yield name, tensor

        with torch.no_grad():
            if self.engine_process:
                self._sender.send(counted())
            else:
                with quiet_reload():
                    self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": counted()})
        self.llm.reset_prefix_cache()  # cached KV blocks belong to the old weights
        self.weights_version = version
        self._frozen_in_sync = True
        self.last_sync = {"tensors": sent, "seconds": time.perf_counter() - started}
        return sent

    def prompt_logprobs(self, ids: list[int]) -> list[float]:
        """The logprob of each token of `ids` after the ones before it (len(ids) - 1 values) under the
        engine's current weights, at temperature 1: what a weight push is checked against."""
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.inputs import TokensPrompt

        self.check_length(ids)
        sampling = VLLMSamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False)
        out = self.llm.generate([TokensPrompt(prompt_token_ids=list(ids))], sampling, use_tqdm=False)[0]
        return [entry[token].logprob for entry, token in zip(out.prompt_logprobs[1:], ids[1:])]

    def _check_engine_gpu(self) -> None:
        """An engine core in its own process must be on the trainer's GPU, where the weights are shared from."""
        import torch

        engine = self.llm.collective_rpc("toolgym_gpu")[0]
        if engine is not None and engine != (mine := gpu_uuid(torch.cuda.current_device())):
            self.llm.llm_engine.engine_core.shutdown()
            raise RuntimeError(f"the engine's process runs on GPU {engine} and the trainer on {mine}: an engine in "
                               "its own process (rollout.vllm.engine_process) must be on the trainer's GPU")

    def fused_groups(self) -> dict[str, list[str]]:
        if self._groups is None:
            self._groups = (self.llm.collective_rpc("toolgym_fused_groups")[0] if self.engine_process else
                            fused_groups(self.llm.llm_engine.model_executor.driver_worker.worker.get_model()))
        return self._groups

    def sleep(self) -> None:
        """Free the engine's memory for the optimizer step (needs enable_sleep_mode; else a no-op)."""
        if self.sleep_mode:
            self.llm.sleep(level=1)

    def wake_up(self) -> None:
        if self.sleep_mode:
            self.llm.wake_up()

    def shutdown(self, end_group: bool = False) -> None:
        """End the engine and the torch.distributed group it set up, at the end of a run (a no-op after the first
        call, and where the group is the launcher's unless `end_group`).

        An in-process engine otherwise lives until the process exits, and ends there only where vLLM's in-process
        client has a finalizer that shuts it down (vLLM 0.32's has, not every earlier one): without one, its group
        is never destroyed, and on CUDA that NCCL group makes torch warn at exit that destroy_process_group() was
        not called. vLLM's own shutdown (executor, scheduler, its process groups) also destroys the process's
        default group, whoever made it, so it runs only where the engine made that group: a launcher's group is
        the launcher's to end, and the engine then stays up until the process exits. `end_group`: the process
        ends next (a launched run's last step), so the engine goes now, and the launcher's group with it. An engine
        core in its own process is always shut down here, and leaves this process's group alone unless `end_group`.
        """
        if self.ended or not (self.owns_process_group or end_group or self.engine_process):
            return
        ends_group = self.owns_process_group or end_group  # an engine in its own process leaves this one's group
        self.ended, self.owns_process_group = True, False
        try:
            core = self.llm.llm_engine.engine_core
            manager = getattr(getattr(core, "resources", None), "engine_manager", None)
            processes = list(getattr(manager, "processes", []))  # the engine core's own, where it has one
            core.shutdown()
            # vLLM's shutdown signals its process, waits 5 s, then kills it without waiting for it to end: wait here,
            # so that its memory (a GPU's too) is free when this returns, for an engine started next
            for process in processes:
                process.join(timeout=30)
            if ends_group:
                end_process_group()  # where vLLM's shutdown leaves the default group
        except Exception:  # the run's results are written by now: a failed teardown is logged, not raised
            logging.getLogger(__name__).warning("shutting the vLLM engine down failed", exc_info=True)


# ---------------------------------------------------------------------- process setup

def _engine_mode(own_process: bool) -> None:
    """Start the next engine's core in this process (weight updates hand it tensors directly) or in its own."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if own_process else "0"
    import vllm.envs

    if vllm.envs.VLLM_ENABLE_V1_MULTIPROCESSING != own_process:  # an in-process engine froze vLLM's env cache
        vllm.envs.disable_envs_cache()  # read afresh; the next in-process engine caches them again


def _this_gpu() -> str | None:
    """CUDA_VISIBLE_DEVICES for an engine core started in its own process: only this process's current GPU, so
    vLLM's one-GPU engine, which takes the first GPU it sees, is on it (under a launcher each rank trains on its
    own). None where there is no choice to make (a CPU, one GPU)."""
    import torch

    if not (torch.cuda.is_available() and torch.cuda.device_count() > 1):
        return None
    found = os.environ.get("CUDA_VISIBLE_DEVICES")
    seen = found.split(",") if found else [str(i) for i in range(torch.cuda.device_count())]
    return seen[torch.cuda.current_device()]


def _process_group() -> bool:
    """Whether this process has a torch.distributed default group."""
    import torch.distributed

    return torch.distributed.is_available() and torch.distributed.is_initialized()
