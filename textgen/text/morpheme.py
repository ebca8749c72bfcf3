"""Morpheme level for Korean: tokens are kiwipiepy morphemes with their tags.

A token is ``form/TAG`` (``말/NNG``, ``이/JKS``), prefixed with ``▁`` when a space came
before it in the text, so generated morphemes are put back together with the analyzer's
own :meth:`Kiwi.join` (which restores the surface forms, ``덥/VA 어/EC`` → ``더워``) and
with the original spacing. kiwipiepy is an optional extra: ``pip install 'textgen[ko]'``.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from textgen.errors import UsageError
from textgen.text.base import Tokenizer
from textgen.text.vocab import PAD, UNK, Vocab

SPACE = "▁"


@lru_cache(maxsize=1)
def analyzer() -> Any:
    """The shared Kiwi analyzer (loading its model takes a few seconds, so once)."""
    try:
        from kiwipiepy import Kiwi
    except ImportError:
        raise UsageError("the morpheme level needs kiwipiepy: pip install 'textgen[ko]'") from None
    return Kiwi()


def _parse(token: str) -> tuple[str, str, bool]:
    space = token.startswith(SPACE)
    form, _, tag = token.removeprefix(SPACE).rpartition("/")
    return form, tag, space


class MorphemeTokenizer(Tokenizer):
    """A :class:`Tokenizer` whose tokens are ``form/TAG`` morphemes."""

    keeps_whitespace = False  # Kiwi's join puts the spacing back, line breaks are <eos>
    eos_in_stream = True
    tokens_are_chars = False
    is_jamo = False

    cannot_grow = (
        "--extend-vocab cannot grow a morpheme vocabulary: its tokens are Kiwi's analyses "
        "(form/TAG), which Kiwi's own dictionary fixes and the run's <unk> row already "
        "stands for; fine-tune without it, or use the word, char or jamo level"
    )

    def __init__(self, level: str, vocab: Vocab, **options: Any) -> None:
        for key in ("lowercase", "strip_punctuation"):  # a saved tokenizer records them
            if options.pop(key, False):
                raise UsageError(f'data.{key} does not apply to data.level = "morpheme"')
        super().__init__("morpheme", vocab, **options)

    def split(self, text: str) -> list[str]:
        text = self.normalize_text(text)
        tokens, end = [], 0
        for morph in analyzer().tokenize(text):
            space = morph.start > end and text[end : morph.start].isspace()
            tokens.append(f"{SPACE if space else ''}{morph.form}/{morph.tag}")
            end = morph.start + morph.len
        return tokens

    def join(self, tokens: Iterable[str]) -> str:
        morphs = [_parse(tok) for tok in tokens if tok not in (PAD, UNK)]
        return analyzer().join(morphs) if morphs else ""

    def continuation(self, seed: str, ids: Iterable[int]) -> str:
        """Join the seed's morphemes with the new ones, so endings attach to the seed
        (``먹/VV`` + ``었/EP`` → ``먹었``), and return what follows the seed's own text."""
        seed_tokens = self.split(seed)
        skip = {0, self.eos_id}
        new = [self.vocab.token(int(i)) for i in ids if int(i) not in skip]
        if not new:
            return ""
        before, whole = self.join(seed_tokens), self.join(seed_tokens + new)
        if whole.startswith(before):
            return whole[len(before) :]
        joined = self.join(new).lstrip()
        return f" {joined}" if new[0].startswith(SPACE) else joined

    def unstable_tail(self, text: str) -> int:
        return 2 if text else 0  # the last morphemes may still fuse with the next ones

    @classmethod
    def fit(cls, texts: Iterable[str], level: str = "morpheme", **options: Any) -> Tokenizer:
        analyzer()  # fail early, with the install hint, before counting anything
        return super().fit(texts, "morpheme", **options)
