"""The trainer's weights as a vLLM engine loads them: checkpoint names, LoRA merged, fused shards together.

Used by the colocated engine (`rl.vllm_backend`: in-place pushes, the start-up checkpoint) and by the
server backend (`rl.vllm_server_backend`: pushes over HTTP). `push_checked` pushes and checks the push landed.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rl.generation import holds_version

if TYPE_CHECKING:
    import torch

# vLLM warns about every layer a reload leaves untouched; a partial push is deliberate. vLLM 0.26's model runner
# also lists every weight a reload did not load (`_UNLOADED`), under a logger that says more worth keeping.
_RELOAD_LOGGERS = ("vllm.model_executor.model_loader.reload.layerwise",
                   "vllm.model_executor.model_loader.reload.inplace")
_RUNNER_LOGGER, _UNLOADED = "vllm.v1.worker.gpu_model_runner", "Following weights were not loaded"


def sync_gap(backend, model: torch.nn.Module, ids: list[int], before: list[float] | None = None) -> dict[str, float]:
    """How far the engine's logprobs of `ids` are from the trainer model's: {"max": .., "mean": ..}
    of |difference| over every token after the first. After a weight push, this is the check that
    the engine samples from the weights being trained (float32/TF32 on both sides: about 1e-3; with
    `sdpa_bf16` attention about 1e-2). The trainer's side runs outside `model.autocast`: accelerate wraps the
    trained model's forward in its bf16 autocast (kept by `rl.sharding.full_weights`), and bf16 products against a
    float32 engine gave a gap as large as a lost push's (0.037 after a push, 0.037 before it, on one H100). Weights
    in bf16 compute in bf16 without it too, as their engine does.

    `before`: the engine's logprobs of `ids` from before the push. Their gap to the trainer's
    ("stale_max", "stale_mean") is what the check would read had the push been lost: the scale
    that says whether the first gap is small."""
    import torch

    engine = torch.tensor(backend.prompt_logprobs(ids))
    device = next(model.parameters()).device
    x = torch.tensor([ids], device=device)
    forward = getattr(model, "_original_forward", model)  # accelerate's own forward, before its autocast wrapper
    with torch.no_grad():
        logits = forward(input_ids=x).logits[0, :-1].float()
        trainer = torch.log_softmax(logits, -1).gather(-1, x[0, 1:, None]).squeeze(-1).cpu()
    gap = (engine - trainer).abs()
    out = {"max": float(gap.max()), "mean": float(gap.mean())}
    if before is not None:
        stale = (torch.tensor(before) - trainer).abs()
        out |= {"stale_max": float(stale.max()), "stale_mean": float(stale.mean())}
    return out


def push_checked(backend, model: torch.nn.Module, version: int, ids: list[int]) -> dict[str, float] | None:
    """Push `model`'s weights into `backend` (unless it holds `version` already) and check the push on `ids`
    (`sync_gap`, with the engine's logprobs from before the push as the stale reference). None when nothing
    was pushed, or the backend cannot score `ids` (only the vllm backend can), or `ids` are too few."""
    probe = len(ids) > 1 and hasattr(backend, "prompt_logprobs")
    before = backend.prompt_logprobs(ids) if probe and not holds_version(backend, version) else None
    if not backend.update_weights(model, version=version) or not probe:
        return None
    return sync_gap(backend, model, ids, before)


def _named_weights(model: torch.nn.Module) -> list[tuple[str, bool, Any]]:
    """(checkpoint name, can change, tensor or thunk) for every weight; LoRA merged lazily.

    Tied weights appear under each name (a tied `lm_head.weight` beside the embedding).
    """
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import AuxiliaryTrainingWrapper, ModulesToSaveWrapper
    except ImportError:
        BaseTunerLayer = AuxiliaryTrainingWrapper = ModulesToSaveWrapper = ()  # type: ignore[assignment]

    root = _unwrap_peft(model)
    out: list[tuple[str, bool, Any]] = []
    done: list[str] = []  # module prefixes already emitted as a whole
    for name, module in root.named_modules(remove_duplicate=False):
        if any(name.startswith(p) for p in done):
            continue
        prefix = f"{name}." if name else ""
        if isinstance(module, BaseTunerLayer):
            done.append(prefix)
            base = module.get_base_layer()
            for pname, _ in base.named_parameters():
                out.append((prefix + pname, True, _merged(module, pname)))
        elif isinstance(module, ModulesToSaveWrapper):
            done.append(prefix)
            active = module.modules_to_save[module.active_adapters[0]] if module.active_adapters \
                else module.original_module
            out += [(prefix + pname, p.requires_grad, p) for pname, p in active.named_parameters()]
        elif isinstance(module, AuxiliaryTrainingWrapper):
            raise NotImplementedError(f"weight sync of peft's {type(module).__name__} at {name!r} is not supported "
                                      "(supported: LoRA layers, modules_to_save)")
        else:
            out += [(prefix + pname, p.requires_grad, p)
                    for pname, p in module.named_parameters(recurse=False, remove_duplicate=False)]
            out += [(prefix + bname, False, b) for bname, b in module.named_buffers(recurse=False)
                    if bname not in module._non_persistent_buffers_set]
    return out


def _unwrap_peft(model: torch.nn.Module) -> torch.nn.Module:
    try:
        from peft import PeftModel
    except ImportError:
        return model
    return model.get_base_model() if isinstance(model, PeftModel) else model


def _merged(layer, pname: str):
    """A thunk: the layer's parameter with its active adapters merged, computed on a copy."""

    def merge() -> torch.Tensor:
        merged = copy.deepcopy(layer)
        merged.merge()
        return merged.get_base_layer().get_parameter(pname).detach()

    return merge


def weights_for_sync(model: torch.nn.Module, groups: dict[str, list[str]],
                     changing_only: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """(checkpoint name, tensor) pairs to send: every weight, or only those the optimizer can
    change (with the shards fused into one engine layer with them). LoRA merged lazily."""
    weights = _named_weights(model)
    if changing_only:
        weights = _changing(weights, groups)
    for name, _, tensor in weights:
        yield name, tensor() if callable(tensor) else tensor


def fused_groups(engine_model) -> dict[str, list[str]]:
    """{"q_proj": ["q_proj", "k_proj", "v_proj"], ...}: checkpoint modules vLLM loads into one layer."""
    mapping = getattr(engine_model, "packed_modules_mapping", None) or {}
    return {part: parts for parts in mapping.values() for part in parts}


def _changing(weights: list[tuple[str, bool, Any]], groups: dict[str, list[str]]) -> list[tuple[str, bool, Any]]:
    """The weights that can change, plus the shards fused into one engine layer with them.

    A tied `lm_head.weight` is the embedding's own Parameter, so it changes with it.
    """
    keep = {name for name, changes, _ in weights if changes}
    for name in list(keep):
        module, _, leaf = name.rpartition(".")
        parent, _, part = module.rpartition(".")
        for sibling in groups.get(part, []):
            keep.add(f"{parent}.{sibling}.{leaf}" if parent else f"{sibling}.{leaf}")
    return [w for w in weights if w[0] in keep]


def save_for_vllm(model: torch.nn.Module, tokenizer, directory: str | Path) -> Path:
    """Write `model` (LoRA merged) and `tokenizer` as a checkpoint directory vLLM can start from."""
    import torch
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights: dict[str, torch.Tensor] = {}
    seen: set[int] = set()  # addresses of the model's own tensors: a second name on one is a tied copy
    with torch.no_grad():
        for name, _, tensor in _named_weights(model):
            if callable(tensor):
                # LoRA merged into a fresh tensor: never tied. Its address may be one a merged tensor freed
                # earlier had (a GPU's caching allocator hands it out again at once), so it never joins `seen`.
                weights[name] = tensor().detach().to("cpu", copy=True).contiguous()  # its memory is reused
                continue
            if tensor.data_ptr() in seen:  # a tied copy: the config's tie_word_embeddings restores it
                continue
            seen.add(tensor.data_ptr())
            weights[name] = tensor.detach().to("cpu").contiguous()
    root = _unwrap_peft(model)
    save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
    root.config.architectures = [type(root).__name__]  # as save_pretrained does; vLLM picks its class by it
    root.config.save_pretrained(directory)
    if getattr(root, "generation_config", None) is not None:
        root.generation_config.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


SMALL_VOCAB = 1024


@contextlib.contextmanager
def small_vocab_runner(model_path: str | Path) -> Iterator[bool]:
    """Start the engine made inside it on vLLM's V1 model runner when its model's vocabulary is under 1,024 tokens
    (the tiny test model); yields True when it chose so.

    vLLM 0.26's V2 runner (CUDA) samples the id one past the vocabulary's last for such models, and the
    embedding then fails a device assert (rl/bench/baselines/README.md, "TRL's colocate mode and vLLM 0.26's
    V2 model runner"). A choice already made in VLLM_USE_V2_MODEL_RUNNER stands. The variable is set only while
    the engine starts: vLLM picks the runner then (and, in the process, keeps the environment variables it read
    once its engine core is up), so it does not stay in the process's environment for processes started later
    or a later engine of a larger vocabulary.
    """
    vocab = None if "VLLM_USE_V2_MODEL_RUNNER" in os.environ else _vocab_size(model_path)
    chosen = vocab is not None and vocab < SMALL_VOCAB
    if chosen:
        print(f"[toolgym] vocabulary of {vocab} tokens (< {SMALL_VOCAB}): vLLM's V1 model runner "
              "(VLLM_USE_V2_MODEL_RUNNER=0 while the engine starts; set it to choose)", flush=True)
    with scoped_env("VLLM_USE_V2_MODEL_RUNNER", "0" if chosen else None):
        yield chosen


@contextlib.contextmanager
def scoped_env(name: str, value: str | None) -> Iterator[None]:
    """The environment variable `name` set to `value` inside (None: left as it is), then as it was: what an engine
    reads while it starts, and the processes it starts, without leaving it to later ones."""
    if value is None:
        yield
        return
    found = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if found is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = found


def _vocab_size(model_path: str | Path) -> int | None:
    config = json.loads((Path(model_path) / "config.json").read_text())
    return config.get("vocab_size") or config.get("text_config", {}).get("vocab_size")


@contextlib.contextmanager
def quiet_reload() -> Iterator[None]:
    """vLLM's reload without its warnings for every layer or weight a partial push leaves untouched."""
    loggers = [logging.getLogger(n) for n in _RELOAD_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    runner = logging.getLogger(_RUNNER_LOGGER)
    unloaded = _Dropping(_UNLOADED)
    runner.addFilter(unloaded)
    try:
        yield
    finally:
        runner.removeFilter(unloaded)
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class _Dropping(logging.Filter):
    """Drops the records whose message starts with `start`."""

    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)
