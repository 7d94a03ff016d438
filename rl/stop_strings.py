"""Stop strings found in a row's own text, by the rule vLLM's detokenizer follows, for every backend.

A row's text is what its tokens add after the prompt's last `CONTEXT_TOKENS` tokens, as vLLM's detokenizer writes
it: decoded alone, a SentencePiece tokenizer that drops the space opening a text would drop the row's first one,
and a character whose first bytes end the prompt would come out as U+FFFD. A stop string counts only where that
text holds it (one begun in the prompt's text and finished by the row does not), and a row is cut after the token
that completes it (`StopStrings.first`). Both the transformers backend (`rl.generation`) and the vLLM paths
(`rl.vllm_stream`, `rl.vllm_backend`) cut rows by it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

# Prompt tokens a row's text is decoded after: up to 3 may hold the first bytes of a character the row's tokens
# finish (UTF-8 takes at most 4 bytes), and one more keeps the row's first token off the start of the text.
CONTEXT_TOKENS = 4


class StopStrings:
    """Stop strings of one sampling setting: the exact text check, and each string's own tokens.

    A backend may look for a cheaper sign while a row generates (the vLLM stream: a string's own tokenization at
    the row's end, `ended`; the transformers backend: `StopStringCriteria`, checked by `holds`), but every row is
    cut by `first` once it ends, so a stop string written in other tokens ends the row at the same token all the
    same; a row whose sign was missed costs only the tokens generated after it.
    """

    def __init__(self, strings: list[str], tokenizer):
        self.strings, self.tokenizer = list(strings), tokenizer
        encoded = ((tuple(tokenizer.encode(s, add_special_tokens=False)), s) for s in self.strings)
        self.suffixes = [(ids, s) for ids, s in encoded
                         if ids and tokenizer.decode(list(ids), skip_special_tokens=False) == s]

    def ended(self, ids: list[int], new: int) -> str | None:
        """The stop string whose own tokens end at one of the last `new` ids, if any."""
        for end in range(len(ids) - new + 1, len(ids) + 1):
            for suffix, string in self.suffixes:
                if end >= len(suffix) and tuple(ids[end - len(suffix):end]) == suffix:
                    return string
        return None

    def first(self, ids: list[int], context: Sequence[int] = ()) -> tuple[int, str] | None:
        """(tokens up to and including the one that completes a stop string, that string): the shortest such
        prefix, and as vLLM names it, the string that ends first there (the first listed on a tie). `context`:
        the prompt's last tokens (`CONTEXT_TOKENS`), which the row's text is decoded after."""
        context_text = self._decode(context)  # once: the search decodes the row's text after it at every probe
        if not self._holds(ids, context, context_text):
            return None
        low, high = 1, len(ids)  # the shortest prefix whose text holds a stop string
        while low < high:
            mid = (low + high) // 2
            if self._holds(ids[:mid], context, context_text):
                high = mid
            else:
                low = mid + 1
        text = self._after(ids[:low], context, context_text)
        held = [s for s in self.strings if s in text]
        return low, min(held, key=lambda s: (text.index(s) + len(s), self.strings.index(s)))

    def ends_inside_a_character(self, prompt: Sequence[int]) -> bool:
        """Whether `prompt` ends with a character's first bytes (its text, decoded as vLLM's detokenizer decodes
        it, ends with U+FFFD): vLLM 0.32's fast detokenizer then writes the whole prompt's text into the row's
        output text at the row's first token, and looks for stop strings in it. A character's first bytes lie in
        the prompt's last 3 tokens at most, so its last `CONTEXT_TOKENS` tell."""
        return self._decode(prompt[-CONTEXT_TOKENS:]).endswith("\ufffd")

    def holds(self, ids: list[int], context: Sequence[int] = ()) -> bool:
        """Whether the text `ids` add after `context` (`text`) holds a stop string."""
        return self._holds(ids, context, self._decode(context))

    def _holds(self, ids: list[int], context: Sequence[int], context_text: str) -> bool:
        text = self._after(ids, context, context_text)
        return any(s in text for s in self.strings)

    def text(self, ids: list[int], context: Sequence[int] = ()) -> str:
        """The text `ids` add after `context`, as vLLM's detokenizer writes it after the prompt: decoded alone,
        a tokenizer that drops the space opening a text (SentencePiece's) would drop the row's first one, and a
        character whose first bytes end the prompt would come out as U+FFFD; here it is the row's."""
        return self._after(ids, context, self._decode(context))

    def _after(self, ids: list[int], context: Sequence[int], context_text: str) -> str:
        """`text`, given the text of `context` alone."""
        text = self._decode([*context, *ids])
        return text[len(os.path.commonprefix([context_text, text])):]

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)
