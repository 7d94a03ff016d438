"""A vLLM engine core in a process of its own (`rollout.vllm.engine_process: true`): how the trainer's weights reach it.

In the trainer's process the engine takes the trainer's tensors directly (`VLLMBackend.load_weights`). In its own
process it cannot: what crosses is one `LLM.collective_rpc` call to a method vLLM adds to its worker
(`WeightReceiver`, named as `worker_extension_cls`), whose payload says where each tensor is.

- A CUDA tensor travels as a CUDA IPC handle (`torch.multiprocessing.reductions.reduce_tensor`): the engine's process
  maps the trainer's own memory and copies from it, with no copy through the host. The trainer keeps the tensors
  alive until the call has returned (`send_weights`).
- CPU tensors (a CPU engine, as in tests and on a laptop) are written once into a safetensors file in shared memory
  (`/dev/shm` where there is one), which the engine's process reads. Sent by value inside the call, Gemma 3 270M's
  float32 weights took 21.3 s to push on a 2-core CPU, against 1.0 s for the in-process engine.

The engine's process then loads them as the in-process engine does: vLLM's layerwise reload (`reload_weights`),
whose rules `rl/vllm_backend.py` states (a fused layer's shards together, tied tensors together).
"""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

WORKER_EXTENSION = "rl.vllm_worker.WeightReceiver"  # `worker_extension_cls` of an engine in its own process


def pack(weights: Iterable[tuple[str, Any]], cpu_file: Path) -> tuple[bytes, list]:
    """(checkpoint name, tensor) pairs as one payload for `WeightReceiver.toolgym_load`, and the CUDA tensors it
    points at, which must stay alive until the engine has loaded them. CPU tensors go into `cpu_file`, each storage
    once (a tied lm_head is the embedding's)."""
    import torch
    from safetensors.torch import save_file
    from torch.multiprocessing.reductions import reduce_tensor

    entries, kept, on_cpu, keys = [], [], {}, {}
    with torch.no_grad():
        for name, tensor in weights:
            tensor = tensor.detach().contiguous()
            if tensor.is_cuda:
                kept.append(tensor)
                entries.append((name, "cuda", reduce_tensor(tensor)[1]))
                continue
            same = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape))
            if same not in keys:
                keys[same] = str(len(on_cpu))
                on_cpu[keys[same]] = tensor
            entries.append((name, "cpu", keys[same]))
    if kept:
        torch.cuda.synchronize()  # merged LoRA tensors are computed asynchronously: done before another process reads
    payload = {"entries": entries, "file": str(cpu_file) if on_cpu else None}
    if on_cpu:
        save_file(on_cpu, str(cpu_file))
    return pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL), kept


def send_weights(llm, weights: Iterable[tuple[str, Any]]) -> int:
    """Load `weights` into the engine of `llm` (a `vllm.LLM` whose core runs in its own process); returns how many."""
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(prefix="toolgym-weights-", dir=shm if shm.is_dir() else None) as scratch:
        payload, kept = pack(weights, Path(scratch) / "weights.safetensors")
        try:
            loaded = llm.collective_rpc("toolgym_load", args=(payload,))
        finally:
            if kept:
                import torch

                kept.clear()
                torch.cuda.ipc_collect()  # the handles' shared blocks, now that the engine has let go of them
    return loaded[0]


class WeightReceiver:
    """Methods vLLM adds to its worker in the engine's process (`worker_extension_cls`)."""

    def toolgym_load(self, payload: bytes) -> int:
        """Load the trainer's weights sent by `send_weights`; returns how many tensors were loaded."""
        import torch
        from torch.multiprocessing.reductions import rebuild_cuda_tensor

        from rl.vllm_weights import quiet_reload

        sent = pickle.loads(payload)  # the trainer's own payload, over vLLM's socket
        on_cpu = {}
        if sent["file"] is not None:
            from safetensors.torch import load_file

            on_cpu = load_file(sent["file"])
        weights = []
        for name, kind, value in sent["entries"]:
            if kind == "cuda":
                args = list(value)
                args[6] = self.device.index  # the handle's device, as this process numbers it
                value = rebuild_cuda_tensor(*args)
            else:
                value = on_cpu[value]
            weights.append((name, value))
        with torch.no_grad(), quiet_reload():
            self.reload_weights(weights_iterator=iter(weights))
        if any(kind == "cuda" for _, kind, _ in sent["entries"]):
            torch.cuda.synchronize()  # the copies out of the trainer's memory are done before it frees or changes it
        return len(weights)

    def toolgym_fused_groups(self) -> dict[str, list[str]]:
        """`rl.vllm_weights.fused_groups` of the engine's model."""
        from rl.vllm_weights import fused_groups

        return fused_groups(self.get_model())
