"""The tokenizer contract every level follows: text → tokens → ids and back, fitting a
vocabulary, and a versioned JSON form that reloads to an identical object.

One class per level overrides what is its own: :mod:`textgen.text.word`,
:mod:`textgen.text.char` (and jamo), :mod:`textgen.text.subword` (sentencepiece) and
:mod:`textgen.text.morpheme` (kiwipiepy); the registry in :mod:`textgen.text` picks the
class from the level. Generated text is assembled by :meth:`Tokenizer.continuation` and
:meth:`Tokenizer.attach`, which each level overrides where its tokens are not simply
joined.

What a level is, as far as the code around it is concerned, is declared by every level
class (:data:`LEVEL_TRAITS`; a subclass that leaves one out is refused when it is defined,
so a new level cannot silently get another level's behaviour):

``keeps_whitespace``
    The text's whitespace is tokens of its own (spaces and line breaks are generated as
    they are): generated text is never whitespace-trimmed (a stop string's cut keeps the
    spaces before it) and a line break the vocabulary holds is generated and scored as one.
    True at the char level; the other levels put words or pieces back together and drop
    the spaces around the text's end.
``eos_in_stream``
    Stream mode encodes the text line by line with ``<eos>`` after each non-blank line
    (:meth:`Tokenizer.encode_stream`), so the stream-mode vocabulary holds ``<eos>``. False
    at the char level, whose stream is the whole text with its line breaks as tokens (its
    vocabulary has ``<eos>`` only in line mode). Code that has only a config asks the
    class: ``textgen.text.level_class(cfg.level).eos_in_stream``.
``tokens_are_chars``
    Each token is one character of the normalized text, so a text cut between any two
    characters keeps both sides' tokens (the validation split cuts exactly where it
    falls, and the id cache counts code points). True at the char level only.
``is_jamo``
    Hangul is fed as conjoining jamo and decoded text recomposed to NFC (the char level
    with ``normalize = "nfd"``): the syllable mask applies, the last syllable is held back
    while streaming, and exports call the level ``jamo``. A property of the instance at the
    char level, False at the others.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from textgen.config import LEVELS
from textgen.errors import DataError, UsageError
from textgen.text.vocab import EOS, PAD, PAD_ID, UNK, Coverage, Vocab

FORMAT_VERSION = 1


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


# what every level class declares itself (the module docstring says what each means)
LEVEL_TRAITS = ("keeps_whitespace", "eos_in_stream", "tokens_are_chars", "is_jamo")


class Tokenizer:
    """Splits text into tokens and maps them to ids through a :class:`Vocab`.

    A subclass declares each of :data:`LEVEL_TRAITS` (a class attribute or a property);
    one that inherits any of them from this class alone is a ``TypeError`` when defined."""

    keeps_whitespace: ClassVar[bool]
    eos_in_stream: ClassVar[bool]
    tokens_are_chars: ClassVar[bool]
    is_jamo: bool  # a property at the char level (it depends on ``normalize``)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        below = [c for c in cls.__mro__ if c is not Tokenizer]
        missing = [t for t in LEVEL_TRAITS if not any(t in vars(c) for c in below)]
        if missing:
            raise TypeError(f"{cls.__name__} must declare {', '.join(missing)}")

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

    # -- text ↔ tokens (each level overrides what is its own) ------------------------------
    def normalize_text(self, text: str) -> str:
        """Apply the tokenizer's Unicode normalization (NFC, or NFD at the jamo level)."""
        return unicodedata.normalize(self.normalize.upper(), text)

    def split(self, text: str) -> list[str]:
        """Text → token strings (no vocabulary lookup)."""
        raise NotImplementedError(f"{type(self).__name__} must define split()")

    def join(self, tokens: Iterable[str]) -> str:
        """Token strings → text (concatenated, and recomposed to NFC at the jamo level)."""
        text = "".join(tokens)
        return unicodedata.normalize("NFC", text) if self.normalize == "nfd" else text

    def continuation(self, seed: str, ids: Iterable[int]) -> str:
        """The text generated ``ids`` add after ``seed``, as it is printed after it."""
        return self.decode(ids)

    def attach(self, seed: str, text: str) -> str:
        """``seed`` followed by a :meth:`continuation` (recomposed at the jamo level, where
        generated jamo may complete the seed's last syllable)."""
        joined = seed + text
        return unicodedata.normalize("NFC", joined) if self.normalize == "nfd" else joined

    def unstable_tail(self, text: str) -> int:
        """How many trailing characters of a continuation may still change as tokens are
        added; streaming output holds them back."""
        return 0

    @property
    def continuation_adds_up(self) -> bool:
        """Whether the continuation of ids is each id's continuation end to end, so a
        stream can append a token's text instead of decoding the ids again. False here:
        a level says so only where it holds (char without jamo recomposition, word)."""
        return False

    # -- text ↔ ids ----------------------------------------------------------------------
    @property
    def eos_id(self) -> int | None:
        return self.vocab.eos_id

    def encode(self, text: str, *, eos: bool = False) -> np.ndarray:
        """Text → int32 ids; ``eos=True`` appends ``<eos>`` (line mode)."""
        ids = self.lookup(text)
        if eos:
            if self.eos_id is None:
                raise ValueError("this tokenizer has no <eos> token")
            ids = np.append(ids, np.int32(self.eos_id))
        return ids.astype(np.int32, copy=False)

    def encode_stream(self, text: str) -> np.ndarray:
        """A text as the stream of ids that stream mode trains on: the whole text at the
        char level (line breaks are tokens), each non-blank line with ``<eos>`` at the
        others (``eos_in_stream``). The id cache and ``textgen eval`` both encode
        through it."""
        if not self.eos_in_stream:
            return self.encode(text)
        parts = [self.encode(line, eos=True) for line in text.splitlines() if line.strip()]
        return np.concatenate(parts) if parts else np.zeros(0, np.int32)

    def lookup(self, text: str) -> np.ndarray:
        """The ids of the tokens of ``text`` (``<unk>`` for the unknown), as int32."""
        return np.asarray(self.vocab.ids(self.split(text)), dtype=np.int32)

    def unknown_tokens(self, text: str) -> list[str]:
        """The tokens of ``text`` that are not in the vocabulary, in order of appearance."""
        seen: dict[str, None] = {}
        for tok in self.split(text):
            if tok not in self.vocab:
                seen.setdefault(tok)
        return list(seen)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids → text, leaving out ``<pad>`` and ``<eos>``."""
        skip = {PAD_ID, self.eos_id}
        return self.join(self.vocab.token(int(i)) for i in ids if int(i) not in skip)

    # -- a new corpus: coverage and growth ------------------------------------------------
    # Why the vocabulary of this level cannot grow (None: it can); the levels whose ids
    # come from a fixed model of their own say why in one line.
    cannot_grow: ClassVar[str | None] = None

    def coverage(self, texts: Iterable[str]) -> Coverage:
        """How much of ``texts`` (split as this level splits) the vocabulary covers."""
        return self.vocab.coverage(self.split(text) for text in texts)

    def grown(self, counts: Coverage, *, max_vocab: int = 0, min_freq: int = 1) -> Tokenizer:
        """A copy whose vocabulary adds the missing tokens of ``counts`` after the old ids
        (:meth:`Vocab.extended`: at least ``min_freq`` occurrences, at most ``max_vocab``
        tokens in all); every other setting is kept, so old text encodes to the same ids."""
        if self.cannot_grow is not None:
            raise UsageError(self.cannot_grow)
        data = self.to_dict()
        data["vocab"] = list(
            self.vocab.extended(counts.missing, max_size=max_vocab, min_freq=min_freq).tokens
        )
        return type(self).from_dict(data)

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
            Vocab([PAD, UNK]),
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
