"""The word level: Unicode NFC, then a whitespace split.

Optional lowercasing (which leaves Hangul unchanged: it has no case) and optional
punctuation stripping, which turns every Unicode punctuation character (category P*, e.g.
``,`` ``.`` ``·`` ``「``) and the ASCII symbols of the classic Keras ``Tokenizer`` filter
into a space. Hangul syllables and jamo are letters, so they are never touched. Generated
words are joined by single spaces.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from textgen.text.base import Tokenizer

_KERAS_FILTERS = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~'


class _PunctuationTable(dict):
    """A ``str.translate`` table mapping punctuation code points to a space, computed lazily."""

    def __missing__(self, code: int) -> int:
        ch = chr(code)
        punct = unicodedata.category(ch).startswith("P") or ch in _KERAS_FILTERS
        value = ord(" ") if punct else code
        self[code] = value
        return value


_PUNCT = _PunctuationTable()


class WordTokenizer(Tokenizer):
    """Whitespace-separated words."""

    keeps_whitespace = False  # words are joined by single spaces
    eos_in_stream = True
    tokens_are_chars = False
    is_jamo = False

    @property
    def continuation_adds_up(self) -> bool:
        return True  # each word's text is its separating space and its spelling

    def normalize_text(self, text: str) -> str:
        text = super().normalize_text(text)
        if self.lowercase:
            text = text.lower()
        if self.strip_punctuation:
            text = text.translate(_PUNCT)
        return text

    def split(self, text: str) -> list[str]:
        return self.normalize_text(text).split()

    def join(self, tokens: Iterable[str]) -> str:
        return " ".join(tokens)

    def continuation(self, seed: str, ids: Iterable[int]) -> str:
        """The generated words, with the space that separates them from the seed."""
        text = self.decode(ids)
        return f" {text}" if text else text
