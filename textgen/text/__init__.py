"""Text ↔ token ids: the only place text becomes ids and back.

The levels are ``word`` (:mod:`textgen.text.word`), ``char`` (:mod:`textgen.text.char`,
where ``normalize = "nfd"`` is the jamo level), ``subword`` (:mod:`textgen.text.subword`,
sentencepiece) and ``morpheme`` (:mod:`textgen.text.morpheme`, kiwipiepy). This module
is the registry: it maps a level to its class, fits a tokenizer and rebuilds a saved one.
The optional levels are imported only when used, so their libraries stay optional.
What a level is (whether it keeps whitespace, puts ``<eos>`` in a stream, is jamo) is
declared by its class (:mod:`textgen.text.base`); code that has only a config asks
``level_class(cfg.level)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from textgen.config import LEVELS, UNUSED_BY_LEVEL, DataConfig
from textgen.errors import UsageError
from textgen.text.base import Tokenizer
from textgen.text.char import CharTokenizer
from textgen.text.word import WordTokenizer


def level_class(level: str) -> type[Tokenizer]:
    """The tokenizer class of ``level``."""
    if level == "subword":
        from textgen.text.subword import SubwordTokenizer

        return SubwordTokenizer
    if level == "morpheme":
        from textgen.text.morpheme import MorphemeTokenizer

        return MorphemeTokenizer
    if level == "word":
        return WordTokenizer
    if level == "char":
        return CharTokenizer
    raise UsageError(f"unknown level {level!r}; choose one of {', '.join(LEVELS)}")


def tokenizer_options(cfg: DataConfig) -> dict[str, Any]:
    """Every setting of ``cfg`` that decides the tokenizer: what :func:`fit_tokenizer`
    takes, and what the id cache's key holds (one list, so neither can miss one)."""
    every = dict(
        level=cfg.level,
        eos=cfg.mode == "lines" or level_class(cfg.level).eos_in_stream,
        max_vocab=cfg.max_vocab,
        min_freq=cfg.min_freq,
        lowercase=cfg.lowercase,
        strip_punctuation=cfg.strip_punctuation,
        normalize=cfg.normalize,
        subword_model=cfg.subword_model,
        vocab_size=cfg.vocab_size,
    )
    return {k: v for k, v in every.items() if k not in UNUSED_BY_LEVEL[cfg.level]}


def tokenizer_for(cfg: DataConfig, texts: Iterable[str]) -> Tokenizer:
    """The tokenizer ``cfg`` asks for, fitted on ``texts``."""
    options = tokenizer_options(cfg)
    return fit_tokenizer(texts, options.pop("level"), **options)


def fit_tokenizer(texts: Iterable[str], level: str, **options: Any) -> Tokenizer:
    """Fit the tokenizer of ``level`` on ``texts`` (``options`` as the level's ``fit``:
    :meth:`Tokenizer.fit`, plus ``subword_model`` and ``vocab_size`` for subwords)."""
    return level_class(level).fit(texts, level, **options)


def tokenizer_from_dict(data: dict[str, Any], source: str = "tokenizer") -> Tokenizer:
    """Rebuild a saved tokenizer of any level."""
    level = data.get("level") if isinstance(data, dict) else None
    cls = level_class(level) if level in LEVELS else Tokenizer
    return cls.from_dict(data, source)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read a tokenizer file of any level (format version checked)."""
    return tokenizer_from_dict(Tokenizer.read_json(path), source=str(path))
