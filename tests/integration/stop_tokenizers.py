"""Tokenizers whose decoding makes a row's text depend on the prompt before it, for the stop-string tests."""

import functools

import pytest

from rl.models import GEMMA_270M, cache_dir


@functools.cache
def sentencepiece_tokenizer():
    """Llama 2's and Mistral's kind: words open with '▁', and decoding drops the space that opens a text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    tok.decoder = decoders.Metaspace(prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=100, special_tokens=["<unk>"], show_progress=False)
    # "abcdef" in its vocabulary: transformers' StopStringCriteria reads each token after that prefix
    tok.train_from_iterator(["Hello world, call the tool </tool_call> now"] * 3 + ["abcdef"], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<unk>")


def gemma_tokenizer():
    """Gemma 3's (SentencePiece with byte fallback for rare characters), from the cache; skips without it."""
    path = cache_dir() / GEMMA_270M
    if not (path / "tokenizer.json").exists():
        pytest.skip(f"no Gemma 3 270M tokenizer in {path}")
    return _load(str(path))


@functools.cache
def _load(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def by_name(name: str, tiny):
    """'tiny' (byte-level BPE: a character's bytes may fall in different tokens: `tiny`), 'sentencepiece' or
    'gemma'."""
    if name == "tiny":
        return tiny
    if name == "sentencepiece":
        return sentencepiece_tokenizer()
    return gemma_tokenizer()
