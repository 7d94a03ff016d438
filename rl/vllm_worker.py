"""A vLLM engine core in a process of its own (`rollout.vllm.engine_process: true`): how the trainer's weights reach it.

In the trainer's process the engine takes the trainer's tensors directly (`VLLMBackend.load_weights`). In its own
process it cannot: what crosses is one `LLM.collective_rpc` call to a method vLLM adds to its worker
(`WeightReceiver`, named as `worker_extension_cls`), with the weights as one pickled payload.

- A CUDA tensor travels as a CUDA IPC handle (`torch.multiprocessing.reductions.reduce_tensor`): the engine's process
  maps the trainer's own memory and copies from it, with no copy through the host. The trainer keeps the tensors
  alive until the call has returned (`send_weights`).
- A CPU tensor travels by value (a CPU engine, as in tests and on a laptop).

The engine's process then loads them as the in-process engine does: vLLM's layerwise reload (`reload_weights`),
whose rules `rl/vllm_backend.py` states (a fused layer's shards together, tied tensors together).
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from typing import Any

WORKER_EXTENSION = "rl.vllm_worker.WeightReceiver"  # `worker_extension_cls` of an engine in its own process


def pack(weights: Iterable[tuple[str, Any]]) -> tuple[bytes, list]:
    """(checkpoint name, tensor) pairs as one payload for `WeightReceiver.toolgym_load`, and the CUDA tensors it
    points at, which must stay alive until the engine has loaded them."""
    import torch
    from torch.multiprocessing.reductions import reduce_tensor

    entries, kept = [], []
    with torch.no_grad():
        for name, tensor in weights:
            tensor = tensor.detach().contiguous()
            if tensor.is_cuda:
                kept.append(tensor)
                entries.append((name, "cuda", reduce_tensor(tensor)[1]))
            else:
                entries.append((name, "cpu", tensor))
    if kept:
        torch.cuda.synchronize()  # merged LoRA tensors are computed asynchronously: done before another process reads
    return pickle.dumps(entries, protocol=pickle.HIGHEST_PROTOCOL), kept


def send_weights(llm, weights: Iterable[tuple[str, Any]]) -> int:
    """Load `weights` into the engine of `llm` (a `vllm.LLM` whose core runs in its own process); returns how many."""
    payload, kept = pack(weights)
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

        weights = []
        for name, kind, value in pickle.loads(payload):  # the trainer's own payload, over vLLM's socket
            if kind == "cuda":
                args = list(value)
                args[6] = self.device.index  # the handle's device, as this process numbers it
                value = rebuild_cuda_tensor(*args)
            weights.append((name, value))
        with torch.no_grad(), quiet_reload():
            self.reload_weights(weights_iterator=iter(weights))
        return len(weights)

    def toolgym_fused_groups(self) -> dict[str, list[str]]:
        """`rl.vllm_weights.fused_groups` of the engine's model."""
        from rl.vllm_weights import fused_groups

        return fused_groups(self.get_model())
