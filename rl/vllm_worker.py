"""A vLLM engine core in a process of its own (`rollout.vllm.engine_process: true`): how the trainer's weights reach it.

In the trainer's process the engine takes the trainer's tensors directly (`VLLMBackend.load_weights`). In its own
process it cannot: a push is a few `LLM.collective_rpc` calls to a method vLLM adds to its worker (`WeightReceiver`,
named as `worker_extension_cls`), each call's payload saying where its tensors are (`WeightSender`).

- Each call carries at most `CHUNK_BYTES` of tensors, or one decoder layer where a layer is larger: a layer's tensors
  never split (vLLM fuses q/k/v and gate/up into one layer, loaded together), and the tensors outside the decoder
  layers (the embedding and a tied lm_head, the final norm) travel together in the last call. So a push never holds
  more than about a call's worth of copies (merged LoRA layers are made one at a time, as they are sent).
- CUDA tensors are copied into one buffer on the trainer's GPU, shared with the engine's process once per push as a
  CUDA IPC handle (`torch.multiprocessing.reductions.reduce_tensor`): the engine copies out of it on the same GPU,
  with no trip through the host. The buffer is freed at the end of the push. The trainer's own tensors are never
  shared: torch keeps a record of every share for as long as the shared memory lives.
- CPU tensors (a CPU engine, as in tests and on a laptop) are written into a safetensors file in shared memory
  (`/dev/shm`, where it has room), which the engine's process reads. Gemma 3 270M's float32 weights took 2.3 s to
  push this way on a 2-core CPU, 21.3 s sent by value inside the call, 1.0 s into an in-process engine.

The engine's process then loads them as the in-process engine does: vLLM's layerwise reload (`reload_weights`),
whose rules `rl/vllm_backend.py` states (a fused layer's shards together, tied tensors together).
"""

from __future__ import annotations

import itertools
import pickle
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

WORKER_EXTENSION = "rl.vllm_worker.WeightReceiver"  # `worker_extension_cls` of an engine in its own process
CHUNK_BYTES = 256 * 2**20  # a push's tensors cross in calls of about this size
_ALIGN = 256  # bytes: each tensor's offset in the shared buffer, so any dtype can view it
_LAYER = re.compile(r"^(.*?\.layers\.\d+)\.")  # a decoder layer's prefix, e.g. model.layers.3
_files = itertools.count()  # names of the files CPU tensors cross in


def chunks(weights: Iterable[tuple[str, Any]], limit: int = CHUNK_BYTES) -> Iterator[list[tuple[str, Any]]]:
    """The (name, tensor) pairs of a push, in calls of at most `limit` bytes or one decoder layer: a layer's tensors
    never split, and those outside the decoder layers come together, last."""
    chunk: list = []
    size = 0
    for group in _groups(weights):
        n = sum(t.numel() * t.element_size() for t in {t.data_ptr(): t for _, t in group}.values())  # tied: once
        if chunk and size + n > limit:
            yield chunk
            chunk, size = [], 0
        chunk, size = chunk + group, size + n
    if chunk:
        yield chunk


def _groups(weights: Iterable[tuple[str, Any]]) -> Iterator[list[tuple[str, Any]]]:
    """Each decoder layer's (name, tensor) pairs in turn, then all those outside the layers together."""
    rest: list = []
    group: list = []
    layer = None
    for name, tensor in weights:
        found = _LAYER.match(name)
        if found is None:
            rest.append((name, tensor))
            continue
        if found.group(1) != layer and group:
            yield group
            group = []
        layer = found.group(1)
        group.append((name, tensor))
    for last in (group, rest):
        if last:
            yield last


class WeightSender:
    """The trainer's side of a push into an engine core in its own process (`send`)."""

    def __init__(self, llm, chunk_bytes: int = CHUNK_BYTES):
        self.llm, self.chunk_bytes = llm, chunk_bytes
        self.buffer = None  # the push's shared CUDA buffer, and its handle for the call under way
        self.handle: tuple | None = None

    def send(self, weights: Iterable[tuple[str, Any]]) -> int:
        """Load `weights` ((checkpoint name, tensor) pairs) into the engine; returns how many were sent."""
        sent = 0
        with ExitStack() as stack:
            stack.callback(self._free)
            folders = [Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="toolgym-weights-", dir=d)))
                       for d in (["/dev/shm"] if Path("/dev/shm").is_dir() else []) + [None]]
            for chunk in chunks(weights, self.chunk_bytes):
                payload, written = self._pack(chunk, folders)
                try:
                    sent += self.llm.collective_rpc("toolgym_load", args=(payload,))[0]
                finally:
                    if written is not None:
                        written.unlink()
        return sent

    def _pack(self, chunk: list[tuple[str, Any]], folders: list[Path]) -> tuple[bytes, Path | None]:
        """One call's payload, and the file it wrote its CPU tensors to (in the first of `folders` with room)."""
        import torch

        entries, on_cpu, keys, cuda = [], {}, {}, {}
        with torch.no_grad():
            for name, tensor in chunk:
                tensor = tensor.detach()
                same = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tuple(tensor.stride()))
                kept = cuda if tensor.is_cuda else on_cpu
                if same not in keys:  # a tied lm_head is the embedding's tensor: sent once
                    keys[same] = str(len(kept))
                    kept[keys[same]] = tensor if tensor.is_cuda else tensor.contiguous()
                entries.append((name, "cuda" if tensor.is_cuda else "cpu", keys[same]))
            spans = self._copy_to_buffer(cuda)
        written = _write(on_cpu, folders) if on_cpu else None
        entries = [(name, kind, spans[key] if kind == "cuda" else key) for name, kind, key in entries]
        payload = {"entries": entries, "buffer": self.handle if cuda else None,
                   "file": None if written is None else str(written)}
        return pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL), written

    def _copy_to_buffer(self, tensors: dict[str, Any]) -> dict[str, tuple]:
        """Copy `tensors` into the push's shared buffer (made, or made larger, here); where each one lies in it."""
        if not tensors:
            return {}
        import torch

        starts, end = [], 0
        for t in tensors.values():
            starts.append(end)
            end += -(-t.numel() * t.element_size() // _ALIGN) * _ALIGN
        from torch.multiprocessing.reductions import reduce_tensor

        if self.buffer is None or self.buffer.numel() < end:
            self._free()  # the engine let go of the last one when its call returned
            self.buffer = torch.empty(end, dtype=torch.uint8, device=next(iter(tensors.values())).device)
        # shared again for every call: torch counts one opening per share, and holds the block while it is open
        self.handle = reduce_tensor(self.buffer)[1]
        spans = {}
        for (key, t), start in zip(tensors.items(), starts):
            size = t.numel() * t.element_size()
            self.buffer[start:start + size].copy_(t.contiguous().reshape(-1).view(torch.uint8))
            spans[key] = (start, size, list(t.shape), str(t.dtype).removeprefix("torch."))
        torch.cuda.current_stream(self.buffer.device).synchronize()  # written before the engine reads it
        return spans

    def _free(self) -> None:
        if self.buffer is not None:
            import torch

            self.buffer = self.handle = None  # back to torch's cache once the engine has closed every share of it
            torch.cuda.ipc_collect()  # any block torch still holds for a share the engine has closed since


def gpu_uuid(device) -> str:
    import torch

    return str(torch.cuda.get_device_properties(device).uuid)


def check_shareable() -> None:
    """Refuse the CUDA allocator settings whose memory cannot be shared as an IPC handle with the engine's process."""
    import os

    settings = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "") + "," + os.environ.get("PYTORCH_ALLOC_CONF", "")
    for bad in ("expandable_segments:True", "backend:cudaMallocAsync"):
        if bad.lower() in settings.replace(" ", "").lower():
            raise ValueError(f"PYTORCH_CUDA_ALLOC_CONF holds {bad}: an engine in its own process "
                             "(rollout.vllm.engine_process) takes the trainer's weights through CUDA IPC handles, "
                             "which that allocator setting does not give; drop it or use engine_process=false")


def _write(tensors: dict, folders: list[Path]) -> Path:
    """`tensors` as a safetensors file in the first of `folders` with room for them (a container's /dev/shm may
    hold 64 MiB), else in the last."""
    from safetensors.torch import save_file

    size = sum(t.numel() * t.element_size() for t in tensors.values())
    folder = next((f for f in folders if shutil.disk_usage(f).free > 1.1 * size + 2**20), folders[-1])
    path = folder / f"chunk-{next(_files)}.safetensors"
    save_file(tensors, str(path))
    return path


class WeightReceiver:
    """Methods vLLM adds to its worker in the engine's process (`worker_extension_cls`)."""

    def toolgym_load(self, payload: bytes) -> int:
        """Load one call's tensors of a push sent by `WeightSender`; returns how many were loaded."""
        import torch

        from rl.vllm_weights import quiet_reload

        sent = pickle.loads(payload)  # the trainer's own payload, over vLLM's socket
        buffer = self._toolgym_buffer(sent["buffer"]) if sent["buffer"] is not None else None
        on_cpu: dict = {}
        if sent["file"] is not None:
            from safetensors.torch import load_file

            on_cpu = load_file(sent["file"])
        weights = []
        for name, kind, where in sent["entries"]:
            if kind == "cuda":
                start, size, shape, dtype = where
                weights.append((name, buffer[start:start + size].view(getattr(torch, dtype)).view(shape)))
            else:
                weights.append((name, on_cpu[where]))
        with torch.no_grad(), quiet_reload():
            self.reload_weights(weights_iterator=iter(weights))
        if buffer is not None:
            torch.cuda.synchronize()  # done copying out of the trainer's buffer before it is written again or freed
        return len(weights)

    def _toolgym_buffer(self, args: tuple):
        """The trainer's shared buffer, opened on this engine's GPU: the trainer's own, checked when the engine
        started (`VLLMBackend._check_engine_gpu`)."""
        from torch.multiprocessing.reductions import rebuild_cuda_tensor

        args = list(args)
        args[6] = self.device.index  # the handle's device, as this process numbers it
        return rebuild_cuda_tensor(*args)

    def toolgym_gpu(self) -> str | None:
        """The UUID of the engine's GPU (None on a CPU)."""
        return gpu_uuid(self.device) if self.device.type == "cuda" else None

    def toolgym_fused_groups(self) -> dict[str, list[str]]:
        """`rl.vllm_weights.fused_groups` of the engine's model."""
        from rl.vllm_weights import fused_groups

        return fused_groups(self.get_model())
