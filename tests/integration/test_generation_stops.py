"""The transformers backend cuts a row where its own text holds a stop string, by the rule the vLLM paths follow
(`rl.stop_strings.StopStrings`: the row's text decoded after the prompt's last tokens), on a tiny model.

transformers' `StopStringCriteria` also matches a stop string the prompt begins and the row finishes, and a row
decoded on its own loses the space a SentencePiece tokenizer opens it with, and writes U+FFFD for a character whose
first bytes end the prompt: none of these may decide where a row ends."""

from dataclasses import replace

import pytest

from rl.generation import SamplingParams, TransformersBackend
from rl.models import tiny_model
from rl.stop_strings import CONTEXT_TOKENS, StopStrings
from tests.integration.stop_tokenizers import by_name

GREEDY = SamplingParams(temperature=0, max_new_tokens=12)
SENTENCE = "Hello world, call the tool </tool_call> now"


def stop_strings_cut(tokenizer, stops: list[str], prompt: list[int], free) -> tuple[list[int], str | None]:
    """(tokens, stop string) where `StopStrings` cuts `free`, a row generated after `prompt` without stop strings."""
    found = StopStrings(stops, tokenizer).first(free.token_ids, prompt[-CONTEXT_TOKENS:])
    return (free.token_ids[:found[0]], found[1]) if found else (free.token_ids, None)


def own_text(tokenizer, prompt: list[int], ids: list[int]) -> str:
    return StopStrings([], tokenizer).text(ids, prompt[-CONTEXT_TOKENS:])


# byte-level BPE, and SentencePiece that drops the space opening a text (Gemma's keeps it, and building
# StopStringCriteria on its 262k tokens takes a minute on two CPU cores)
@pytest.mark.parametrize("name", ["tiny", "sentencepiece"])
def test_rows_are_cut_where_stop_strings_cuts_them(name, tiny_tokenizer):
    """Stop strings begun in the prompt's text and finished by the row's first token, and stop strings opening a
    row's text, in one batch: each row is cut where `StopStrings` cuts the same row generated without them."""
    tokenizer = by_name(name, tiny_tokenizer)
    backend = TransformersBackend(tiny_model(vocab_size=len(tokenizer), seed=3), tokenizer)
    ids = tokenizer.encode(SENTENCE, add_special_tokens=False)
    prompts = [ids[:end] for end in range(1, len(ids))]
    free = backend.generate(prompts, GREEDY)
    texts = [own_text(tokenizer, p, f.token_ids) for p, f in zip(prompts, free)]
    begun = [tokenizer.decode(p)[-1] + t[0] for p, t in zip(prompts, texts)]
    stops = [s for s in dict.fromkeys(begun + [t[:2] for t in texts]) if s.strip() and "\ufffd" not in s]
    assert any(s not in t for s, t in zip(begun, texts))  # a stop string only prompt and row together hold
    if name == "sentencepiece":  # a row whose text opens with a space its tokens decoded alone lose
        assert any(t.startswith(" ") and not tokenizer.decode(f.token_ids).startswith(" ")
                   for t, f in zip(texts, free))
    rows = backend.generate(prompts, replace(GREEDY, stop_strings=stops))
    for prompt, row, alone in zip(prompts, rows, free):
        assert (row.token_ids, row.stop_string) == stop_strings_cut(tokenizer, stops, prompt, alone), prompt
        assert row.logprobs == pytest.approx(alone.logprobs[:len(row.token_ids)], abs=1e-4)


def test_a_character_the_prompt_begins_ends_a_row_that_finishes_it(tiny_tokenizer):
    """A prompt ending with a character's first bytes (byte-level BPE), and a row whose first tokens finish it:
    the row's text holds the character, though its tokens decoded alone open with U+FFFD."""
    tokenizer = tiny_tokenizer
    backend = TransformersBackend(tiny_model(vocab_size=len(tokenizer), seed=3), tokenizer)
    partial = [i for i in range(len(tokenizer)) if tokenizer.decode([i]) == "\ufffd"]  # a byte of a character
    prompts = [tokenizer.encode(text, add_special_tokens=False) + [byte]
               for text in ("Row 1: ", "Placed ", "x ") for byte in partial]
    free = backend.generate(prompts, replace(GREEDY, max_new_tokens=4))
    cases = [(p, f, own_text(tokenizer, p, f.token_ids)[0]) for p, f in zip(prompts, free)
             if tokenizer.decode(p[-CONTEXT_TOKENS:]).endswith("\ufffd") and f.token_ids
             and own_text(tokenizer, p, f.token_ids)[:1] not in ("", "\ufffd")
             and tokenizer.decode(f.token_ids).startswith("\ufffd")]
    assert cases  # some prompt's last byte and its row's first bytes make one character
    for prompt, alone, character in cases:
        [row] = backend.generate([prompt], replace(GREEDY, max_new_tokens=4, stop_strings=[character]))
        assert row.stop_string == character
        assert (row.token_ids, row.stop_string) == stop_strings_cut(tokenizer, [character], prompt, alone)


def test_a_stop_token_whose_text_completes_a_stop_string_ends_the_row_on_the_string(tiny_tokenizer):
    """As in vLLM, which looks for stop strings in a stop token's text too when the stop string stays in the
    output: the row ends on that token either way, named by the string."""
    tokenizer = tiny_tokenizer
    backend = TransformersBackend(tiny_model(vocab_size=len(tokenizer), seed=3), tokenizer)
    prompt = tokenizer.encode(SENTENCE, add_special_tokens=False)[:4]
    [free] = backend.generate([prompt], GREEDY)
    texts = [own_text(tokenizer, prompt, free.token_ids[:end]) for end in range(1, len(free.token_ids) + 1)]
    # a token that adds a character the row's text has not held before it
    end, character = next((end, t[-1]) for end, t in enumerate(texts) if t[-1] not in t[:-1] and t[-1] != "\ufffd")
    stop_token = free.token_ids[end]
    [row] = backend.generate([prompt], replace(GREEDY, stop_token_ids=[stop_token], stop_strings=[character]))
    assert row.token_ids == free.token_ids[:free.token_ids.index(stop_token) + 1]
    assert (row.stopped_with, row.stop_string) == (None, character)


def test_without_stop_tokens_the_models_eos_ends_a_row_and_is_reported(tiny_tokenizer):
    """No stop tokens given: a row ends at the model's EOS token (its generation config's), reported as the stop
    token it ended on, as vLLM reports it; rows of the batch that never write it run to max_new_tokens."""
    model = tiny_model(vocab_size=len(tiny_tokenizer), seed=3)
    model.generation_config.eos_token_id = None
    backend = TransformersBackend(model, tiny_tokenizer)
    ids = tiny_tokenizer.encode(SENTENCE, add_special_tokens=False)
    prompts = [ids[:end] for end in range(1, len(ids))]
    free = backend.generate(prompts, GREEDY)
    eos = free[0].token_ids[3]
    assert any(eos not in f.token_ids for f in free)  # a row that runs on beside ended ones
    model.generation_config.eos_token_id = eos
    for row, alone in zip(backend.generate(prompts, GREEDY), free):
        end = alone.token_ids.index(eos) + 1 if eos in alone.token_ids else None
        assert row.token_ids == alone.token_ids[:end]
        assert row.stopped_with == (eos if end else None) and row.stop_string is None
