"""The payload an engine core in its own process gets the trainer's weights by (`rl.vllm_worker`), on a CPU: every
tensor arrives under its name, equal to what was sent, and a storage shared by two names is written once."""

import multiprocessing

import pytest
import torch
from safetensors import safe_open

from rl.vllm_worker import WeightReceiver, pack


class Worker(WeightReceiver):
    """What vLLM's worker offers the extension: `reload_weights` (here: keeps what it was given)."""

    device = torch.device("cpu")

    def reload_weights(self, weights_iterator):
        self.loaded = list(weights_iterator)


def sums_in_another_process(payload: bytes) -> list[tuple[str, float]]:
    """What a worker on the GPU reads from `payload`, loaded in a process of its own."""
    worker = Worker()
    worker.device = torch.device("cuda", 0)
    worker.toolgym_load(payload)
    return [(name, tensor.double().sum().item()) for name, tensor in worker.loaded]


def test_cpu_weights_arrive_under_their_names_and_a_tied_storage_is_written_once(tmp_path):
    embed = torch.randn(12, 4)
    weights = [("model.embed_tokens.weight", embed), ("model.layers.0.mlp.up_proj.weight", torch.randn(8, 4).t()),
               ("lm_head.weight", embed)]  # tied: the embedding's own tensor under a second name
    payload, kept = pack(weights, tmp_path / "w.safetensors")
    assert kept == []  # nothing on a GPU to keep alive
    with safe_open(tmp_path / "w.safetensors", "pt") as f:
        assert len(list(f.keys())) == 2
    worker = Worker()
    assert worker.toolgym_load(payload) == 3
    assert [name for name, _ in worker.loaded] == [name for name, _ in weights]
    for (_, got), (_, sent) in zip(worker.loaded, weights):
        assert torch.equal(got, sent)  # the transposed one too, made contiguous on the way


def test_nothing_is_written_when_no_tensor_is_on_the_cpu(tmp_path):
    payload, kept = pack([], tmp_path / "w.safetensors")
    assert not (tmp_path / "w.safetensors").exists() and kept == []
    worker = Worker()
    assert worker.toolgym_load(payload) == 0 and worker.loaded == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA IPC handles need a GPU")
def test_cuda_weights_cross_to_another_process_as_ipc_handles(tmp_path):
    weights = [("a", torch.randn(64, 32, device="cuda")), ("b", torch.randn(32, 8, device="cuda").t())]
    payload, kept = pack(weights, tmp_path / "w.safetensors")
    assert len(kept) == 2 and not (tmp_path / "w.safetensors").exists()  # handles only: no copy on the host
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        sums = pool.apply(sums_in_another_process, (payload,))
    assert [name for name, _ in sums] == ["a", "b"]
    assert [s for _, s in sums] == pytest.approx([t.double().sum().item() for _, t in weights], rel=1e-9)
