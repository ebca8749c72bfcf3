"""Text ↔ token ids at word or character level.

* ``word``: Unicode NFC, then whitespace split. Optional lowercasing (which leaves Hangul
  unchanged: it has no case) and optional punctuation stripping, which turns every
  Unicode punctuation character (category P*, e.g. ``,`` ``.`` ``·`` ``「``) and the ASCII
  symbols of the classic Keras ``Tokenizer`` filter into a space. Hangul syllables and
  jamo are letters, so they are never touched.
* ``char``: Unicode code points after NFC, so a precomposed syllable such as ``말`` is one
  token whether the file stored it composed or decomposed. With ``normalize = "nfd"``
  (jamo level) every Hangul syllable becomes its conjoining jamo (``말`` → ``ᄆ ᅡ ᆯ``, the
  standard library's canonical decomposition), a vocabulary of a few dozen symbols instead
  of hundreds of syllables; decoded text is recomposed to NFC, so nobody sees loose jamo.
* ``subword`` (:mod:`textgen.text.subword`, sentencepiece) and ``morpheme``
  (:mod:`textgen.text.morpheme`, kiwipiepy) subclass :class:`Tokenizer`; the registry in
  :mod:`textgen.text` picks the class from the level.

A tokenizer is saved as JSON with a format version and reloads to an identical object.
Generated text is assembled by :meth:`Tokenizer.continuation` and :meth:`Tokenizer.attach`,
which each level overrides where its tokens are not simply joined.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from textgen.config import LEVELS
from textgen.errors import DataError
from textgen.text.vocab import EOS, PAD, UNK_ID, Vocab

FORMAT_VERSION = 1
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


def check_format_version(data: dict[str, Any], source: str) -> None:
    """Refuse a dict that is not a tokenizer this textgen can read."""
    version = data.get("format_version")
    if not isinstance(version, int):
        raise DataError(f"{source}: no format_version; not a textgen tokenizer")
    if version > FORMAT_VERSION:
        raise DataError(
            f"{source}: format version {version} is newer than this textgen supports "
            f"({FORMAT_VERSION}); upgrade textgen"
        )


def code_points(text: str) -> np.ndarray:
    """The code points of ``text`` as a uint32 array (lone surrogates included)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)


def _is_hangul(ch: str) -> bool:
    code = ord(ch)
    return (
        0xAC00 <= code <= 0xD7A3  # syllables
        or 0x1100 <= code <= 0x11FF  # conjoining jamo
        or 0xA960 <= code <= 0xA97F
        or 0xD7B0 <= code <= 0xD7FF
    )


class Tokenizer:
    """Splits text into tokens and maps them to ids through a :class:`Vocab`."""

    def __init__(
        self,
        level: str,
        vocab: Vocab,
        *,
        lowercase: bool = False,
        strip_punctuation: bool = False,
        normalize: str = "nfc",
    ) -> None:
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r}")
        self.level = level
        self.vocab = vocab
        self.lowercase = lowercase
        self.strip_punctuation = strip_punctuation
        self.normalize = normalize

    # -- text ↔ tokens -------------------------------------------------------------------
    def normalize_text(self, text: str) -> str:
        """Apply the tokenizer's Unicode normalization and case/punctuation options."""
        text = unicodedata.normalize(self.normalize.upper(), text)
        if self.level == "word":
            if self.lowercase:
                text = text.lower()
            if self.strip_punctuation:
                text = text.translate(_PUNCT)
        return text

    def split(self, text: str) -> list[str]:
        """Text → token strings (no vocabulary lookup)."""
        text = self.normalize_text(text)
        return text.split() if self.level == "word" else list(text)

    def join(self, tokens: Iterable[str]) -> str:
        """Token strings → text: words joined by single spaces, characters concatenated
        (and recomposed to NFC at the jamo level)."""
        text = (" " if self.level == "word" else "").join(tokens)
        return unicodedata.normalize("NFC", text) if self.normalize == "nfd" else text

    def continuation(self, seed: str, ids: Iterable[int]) -> str:
        """The text generated ``ids`` add after ``seed``, as it is printed after it
        (with its leading space at the word level)."""
        text = self.decode(ids)
        return f" {text}" if text and self.level == "word" else text

    def attach(self, seed: str, text: str) -> str:
        """``seed`` followed by a :meth:`continuation` (recomposed at the jamo level, where
        generated jamo may complete the seed's last syllable)."""
        joined = seed + text
        return unicodedata.normalize("NFC", joined) if self.normalize == "nfd" else joined

    def unstable_tail(self, text: str) -> int:
        """How many trailing characters of a continuation may still change as tokens are
        added (a jamo-level syllable that can take a final consonant); streaming output
        holds them back."""
        if self.normalize == "nfd" and text and _is_hangul(text[-1]):
            return 1
        return 0

    # -- text ↔ ids ----------------------------------------------------------------------
    @property
    def eos_id(self) -> int | None:
        return self.vocab.eos_id

    def encode(self, text: str, *, eos: bool = False) -> np.ndarray:
        """Text → int32 ids; ``eos=True`` appends ``<eos>`` (line mode). At the char level
        the lookup is one vectorized table over all code points."""
        if self.level == "char":
            ids = self._char_table()[code_points(self.normalize_text(text))]
        else:
            ids = np.asarray(self.vocab.ids(self.split(text)), dtype=np.int32)
        if eos:
            if self.eos_id is None:
                raise ValueError("this tokenizer has no <eos> token")
            ids = np.append(ids, np.int32(self.eos_id))
        return ids.astype(np.int32, copy=False)

    def _char_table(self) -> np.ndarray:
        """Code point → id for the current vocabulary (``<unk>`` for the rest)."""
        cached = getattr(self, "_table", None)
        if cached is not None and cached[0] is self.vocab:
            return cached[1]
        table = np.full(0x110000, UNK_ID, np.int32)
        for i, tok in enumerate(self.vocab.tokens):
            if len(tok) == 1:
                table[ord(tok)] = i
        self._table = (self.vocab, table)
        return table

    def unknown_tokens(self, text: str) -> list[str]:
        """The tokens of ``text`` that are not in the vocabulary, in order of appearance."""
        seen: dict[str, None] = {}
        for tok in self.split(text):
            if tok not in self.vocab:
                seen.setdefault(tok)
        return list(seen)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids → text, leaving out ``<pad>`` and ``<eos>``."""
        skip = {0, self.eos_id}
        return self.join(self.vocab.token(int(i)) for i in ids if int(i) not in skip)

    # -- training and persistence ---------------------------------------------------------
    @classmethod
    def fit(
        cls,
        texts: Iterable[str],
        level: str,
        *,
        eos: bool,
        max_vocab: int = 0,
        min_freq: int = 1,
        lowercase: bool = False,
        strip_punctuation: bool = False,
        normalize: str = "nfc",
    ) -> Tokenizer:
        """Build a tokenizer whose vocabulary is counted over ``texts`` in one pass."""
        splitter = cls(
            level,
            Vocab([PAD, "<unk>"]),
            lowercase=lowercase,
            strip_punctuation=strip_punctuation,
            normalize=normalize,
        )
        vocab = Vocab.build(
            (splitter.split(t) for t in texts), eos=eos, max_size=max_vocab, min_freq=min_freq
        )
        splitter.vocab = vocab
        return splitter

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "level": self.level,
            "normalize": self.normalize,
            "lowercase": self.lowercase,
            "strip_punctuation": self.strip_punctuation,
            "eos": EOS if self.eos_id is not None else None,
            "vocab": list(self.vocab.tokens),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=1)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "tokenizer") -> Tokenizer:
        check_format_version(data, source)
        try:
            return cls(
                data["level"],
                Vocab(data["vocab"]),
                lowercase=bool(data["lowercase"]),
                strip_punctuation=bool(data["strip_punctuation"]),
                normalize=data["normalize"],
            )
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{source}: malformed tokenizer ({err})") from None

    @staticmethod
    def read_json(path: str | Path) -> dict[str, Any]:
        """The saved dict of a tokenizer file; :func:`textgen.text.load_tokenizer` builds it."""
        path = Path(path)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"tokenizer file not found: {path}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataError(f"{path}: not a valid tokenizer JSON ({err})") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict()))
