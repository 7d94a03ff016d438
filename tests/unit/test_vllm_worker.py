"""How the trainer's weights reach an engine core in its own process (`rl.vllm_worker`): the calls a push is cut
into, and what arrives, on a CPU (a file in shared memory) and, where there is one, a GPU (a shared buffer)."""

import logging
import multiprocessing
import pickle
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from rl.vllm_weights import quiet_reload
from rl.vllm_worker import WeightReceiver, WeightSender, check_shareable, chunks


class Worker(WeightReceiver):
    """What vLLM's worker offers the extension: `reload_weights`, here keeping copies of what it was given, as
    the engine's reload copies into its own parameters."""

    device = torch.device("cpu")

    def __init__(self):
        self.loaded, self.files = [], []

    def reload_weights(self, weights_iterator):
        self.loaded += [(name, tensor.clone()) for name, tensor in weights_iterator]


class Engine:
    """A `vllm.LLM` stand-in whose collective_rpc calls a worker in this process, noting each call's file."""

    def __init__(self):
        self.worker, self.paths = Worker(), []

    def collective_rpc(self, method, args=()):
        sent = pickle.loads(args[0])
        if sent["file"] is not None:
            self.paths.append(Path(sent["file"]))
            with safe_open(sent["file"], "pt") as f:
                self.worker.files.append(len(list(f.keys())))
        return [getattr(self.worker, method)(*args)]


def layer(i: int, size: int) -> list[tuple[str, torch.Tensor]]:
    return [(f"model.layers.{i}.self_attn.{p}_proj.weight", torch.zeros(size)) for p in "qkv"]


def test_a_push_is_cut_between_layers_never_inside_one_and_what_is_outside_them_comes_last():
    embed = torch.zeros(100)
    weights = [("model.embed_tokens.weight", embed), *layer(0, 10), *layer(1, 10), *layer(2, 30),
               ("model.norm.weight", torch.zeros(5)), ("lm_head.weight", embed)]
    calls = [[name for name, _ in call] for call in chunks(weights, limit=4 * 70)]  # 70 float32 values a call
    assert calls == [
        [n for n, _ in layer(0, 10) + layer(1, 10)],  # 60 values; layer 2 (90) would pass the limit
        [n for n, _ in layer(2, 30)],  # larger than a call on its own: whole all the same
        ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"],  # together: lm_head is tied
    ]
    assert sorted(n for call in calls for n in call) == sorted(n for n, _ in weights)  # every tensor, once
    assert [[n for n, _ in c] for c in chunks(weights, limit=10**9)] == [[n for n, _ in weights[1:-2] + [
        weights[0], weights[-2], weights[-1]]]]  # all in one call when it fits


def test_cpu_weights_arrive_equal_under_their_names_a_tied_storage_written_once_and_no_file_is_left():
    embed = torch.randn(12, 4)
    weights = [("model.embed_tokens.weight", embed), ("model.layers.0.mlp.up_proj.weight", torch.randn(8, 4).t()),
               ("model.layers.1.mlp.up_proj.weight", torch.randn(4, 4)), ("lm_head.weight", embed)]
    engine = Engine()
    sender = WeightSender(engine, chunk_bytes=8 * 4 * 4)  # one layer a call
    assert sender.send(iter(weights)) == 4
    assert [n for n, _ in engine.worker.loaded] == [n for n, _ in weights[1:3]] + [weights[0][0], weights[3][0]]
    loaded = dict(engine.worker.loaded)
    assert all(torch.equal(loaded[name], tensor) for name, tensor in weights)  # the transposed one too
    assert engine.worker.files == [1, 1, 1]  # the last call's file holds the embedding once, for both names
    assert not any(p.exists() or p.parent.exists() for p in engine.paths)  # nothing left in shared memory


def sums_in_another_process(payload: bytes) -> list[tuple[str, float]]:
    """A GPU worker in a process of its own (the pool's, kept between calls) loads a call, and says what it holds."""
    global WORKER
    if "WORKER" not in globals():
        WORKER = Worker()
        WORKER.device = torch.device("cuda", 0)
    WORKER.loaded = []
    WORKER.toolgym_load(payload)
    return [(name, tensor.double().sum().item()) for name, tensor in WORKER.loaded]


class OtherProcess:
    """A `vllm.LLM` stand-in whose collective_rpc calls a worker in another process."""

    def __init__(self, pool):
        self.pool, self.sums = pool, []

    def collective_rpc(self, method, args=()):
        self.sums += self.pool.apply(sums_in_another_process, args)
        return [len(pickle.loads(args[0])["entries"])]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA IPC handles need a GPU")
def test_cuda_weights_cross_through_a_shared_buffer_and_pushes_leave_no_memory_behind():
    embed = torch.randn(128, 64, device="cuda")  # the last call the largest, as a real model's: the buffer grows
    weights = [("model.layers.0.a.weight", torch.randn(64, 32, device="cuda")),
               ("model.layers.1.b.weight", torch.randn(32, 8, device="cuda").t()),
               ("model.norm.weight", torch.randn(8, device="cuda", dtype=torch.bfloat16)),
               ("model.embed_tokens.weight", embed), ("lm_head.weight", embed)]  # tied: copied into the buffer once
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        engine = OtherProcess(pool)
        sender = WeightSender(engine, chunk_bytes=64 * 32 * 4)  # one layer a call
        allocated = []
        for _ in range(5):
            engine.sums = []
            assert sender.send(iter(weights)) == 5
            allocated.append(torch.cuda.memory_allocated())
            assert [n for n, _ in engine.sums] == [n for n, _ in weights]
            assert [s for _, s in engine.sums] == pytest.approx([t.double().sum().item() for _, t in weights],
                                                                rel=1e-6)
            with torch.no_grad():
                weights[0][1].add_(1.0)  # the trainer's next step: the next push carries it
        assert len(set(allocated)) == 1 and sender.buffer is None  # the push's buffer goes with it, every time


@pytest.mark.parametrize("setting", ["expandable_segments:True", "max_split_size_mb:64,backend:cudaMallocAsync"])
def test_allocator_settings_whose_memory_cannot_be_shared_are_refused(monkeypatch, setting):
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", setting)
    with pytest.raises(ValueError, match=r"PYTORCH_CUDA_ALLOC_CONF holds .*: an engine in its own process"):
        check_shareable()
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:64")
    check_shareable()


def test_a_reload_drops_vllm_0_26s_list_of_weights_not_loaded_and_keeps_the_rest(caplog):
    runner = logging.getLogger("vllm.v1.worker.gpu_model_runner")
    with caplog.at_level(logging.WARNING, logger=runner.name):
        with quiet_reload():
            runner.warning("Following weights were not loaded from checkpoint: %s", {"model.norm.weight"})
            runner.warning("something else")
        runner.warning("Following weights were not loaded from checkpoint: %s", {"x"})  # outside a push: kept
    assert [r.getMessage() for r in caplog.records] == [
        "something else", "Following weights were not loaded from checkpoint: {'x'}"]
