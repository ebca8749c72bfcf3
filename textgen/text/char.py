"""The char level: Unicode code points after NFC, so a precomposed syllable such as ``말``
is one token whether the file stored it composed or decomposed.

With ``normalize = "nfd"`` (the jamo level) every Hangul syllable becomes its conjoining
jamo (``말`` → ``ᄆ ᅡ ᆯ``, the standard library's canonical decomposition): a vocabulary
of a few dozen symbols instead of hundreds of syllables. Decoded text is recomposed to
NFC, so nobody sees loose jamo, and while streaming the last syllable is held back until
the next token shows whether a final consonant completes it.
"""

from __future__ import annotations

import numpy as np

from textgen.text.base import Tokenizer, code_points
from textgen.text.vocab import UNK_ID


def _is_hangul(ch: str) -> bool:
    code = ord(ch)
    return (
        0xAC00 <= code <= 0xD7A3  # syllables
        or 0x1100 <= code <= 0x11FF  # conjoining jamo
        or 0xA960 <= code <= 0xA97F
        or 0xD7B0 <= code <= 0xD7FF
    )


class CharTokenizer(Tokenizer):
    """One token per code point; ids through a table over all of Unicode (vectorized)."""

    keeps_whitespace = True  # spaces and line breaks are tokens, generated as they are
    eos_in_stream = False  # the stream is the whole text: its line breaks end the lines
    tokens_are_chars = True

    @property
    def is_jamo(self) -> bool:
        """Whether Hangul is fed as conjoining jamo (``normalize = "nfd"``)."""
        return self.normalize == "nfd"

    @property
    def continuation_adds_up(self) -> bool:
        return not self.is_jamo  # jamo may complete the syllable before them

    def split(self, text: str) -> list[str]:
        return list(self.normalize_text(text))

    def lookup(self, text: str) -> np.ndarray:
        return self._table()[code_points(self.normalize_text(text))]

    def _table(self) -> np.ndarray:
        """Code point → id for the current vocabulary (``<unk>`` for the rest)."""
        cached = getattr(self, "_cached_table", None)
        if cached is not None and cached[0] is self.vocab:
            return cached[1]
        table = np.full(0x110000, UNK_ID, np.int32)
        for i, tok in enumerate(self.vocab.tokens):
            if len(tok) == 1:
                table[ord(tok)] = i
        self._cached_table = (self.vocab, table)
        return table

    def unstable_tail(self, text: str) -> int:
        """A jamo-level syllable that can still take a final consonant."""
        if self.is_jamo and text and _is_hangul(text[-1]):
            return 1
        return 0
