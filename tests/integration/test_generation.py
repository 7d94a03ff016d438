"""The transformers backend: left padding, stop tokens and logprobs, on a tiny model."""

import pytest
import torch

from rl.generation import SamplingParams, TransformersBackend
from rl.models import tiny_model


@pytest.fixture(scope="module")
def tokenizer():
    from rl.models import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = tiny_model(vocab_size=384, seed=3)
    m.eval()
    return m


PROMPTS = [[2, 10, 11, 12, 13, 14, 15], [2, 40, 41], [2, 90, 91, 92, 93]]


def test_batched_greedy_equals_one_at_a_time(model, tokenizer):
    backend = TransformersBackend(model, tokenizer)
    params = SamplingParams(temperature=0, max_new_tokens=12)
    batched = backend.generate(PROMPTS, params)
    for prompt, gen in zip(PROMPTS, batched):
        [alone] = backend.generate([prompt], params)
        assert gen.token_ids == alone.token_ids
        assert gen.logprobs == pytest.approx(alone.logprobs, abs=1e-4)


def test_logprobs_match_a_forward_pass(model, tokenizer):
    backend = TransformersBackend(model, tokenizer)
    params = SamplingParams(temperature=0.7, max_new_tokens=10, seed=1)
    for prompt, gen in zip(PROMPTS, backend.generate(PROMPTS, params)):
        ids = torch.tensor([prompt + gen.token_ids])
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt) - 1:-1] / 0.7
        expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(gen.token_ids)[:, None]).squeeze(-1)
        assert gen.logprobs == pytest.approx(expected.tolist(), abs=1e-4)


def test_generation_stops_at_a_stop_token(model, tokenizer):
    backend = TransformersBackend(model, tokenizer)
    [free] = backend.generate([PROMPTS[0]], SamplingParams(temperature=0, max_new_tokens=12))
    stop = free.token_ids[3]
    [stopped] = backend.generate([PROMPTS[0]], SamplingParams(temperature=0, max_new_tokens=12, stop_token_ids=[stop]))
    first = free.token_ids.index(stop)
    assert stopped.token_ids == free.token_ids[:first + 1] and stopped.stopped_with == stop
    assert free.stopped_with is None


def test_generation_stops_after_a_stop_string(model, tokenizer):
    backend = TransformersBackend(model, tokenizer)
    [free] = backend.generate([PROMPTS[1]], SamplingParams(temperature=0, max_new_tokens=12))
    text = tokenizer.decode(free.token_ids[:5])
    stop = text[-2:] if text[-2:].strip() else text[-3:]
    [stopped] = backend.generate([PROMPTS[1]], SamplingParams(temperature=0, max_new_tokens=12, stop_strings=[stop]))
    assert stopped.stop_string == stop and stopped.stopped_with is None and stopped.finished
    assert stop in tokenizer.decode(stopped.token_ids) and stop not in tokenizer.decode(stopped.token_ids[:-1])
    assert stopped.token_ids == free.token_ids[:len(stopped.token_ids)]


def test_a_stop_string_the_prompt_begins_does_not_stop_a_row(model, tokenizer):
    """A stop string made of the prompt's last character and the row's first: transformers' StopStringCriteria
    matches it across the prompt, but the row's own text does not hold it, so the row goes on."""
    from rl.stop_strings import CONTEXT_TOKENS, StopStrings

    backend = TransformersBackend(model, tokenizer)
    spanning = 0
    for prompt in PROMPTS:
        [free] = backend.generate([prompt], SamplingParams(temperature=0, max_new_tokens=12))
        text = StopStrings([], tokenizer).text(free.token_ids, prompt[-CONTEXT_TOKENS:])
        stop = tokenizer.decode(prompt)[-1] + text[0]
        if stop in text or "\ufffd" in stop:
            continue
        spanning += 1
        [row] = backend.generate([prompt], SamplingParams(temperature=0, max_new_tokens=12, stop_strings=[stop]))
        assert row.token_ids == free.token_ids and row.stop_string is None and not row.finished
    assert spanning
