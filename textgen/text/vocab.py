"""Token ↔ id mapping with reserved special tokens.

Ids are stable and documented: ``<pad>`` = 0 (so Keras masking and ``pad_sequences``
work unchanged), ``<unk>`` = 1, then ``<eos>`` = 2 when the corpus is read line by line.
Ordinary tokens follow by descending frequency, ties broken by first appearance (the
order of the classic Keras ``Tokenizer``), so a vocabulary is deterministic for a corpus.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

PAD = "<pad>"
UNK = "<unk>"
EOS = "<eos>"
PAD_ID, UNK_ID, EOS_ID = 0, 1, 2  # every vocabulary starts <pad>, <unk> (, <eos> if it has one)


class Vocab:
    """An immutable list of tokens; a token's id is its index."""

    def __init__(self, tokens: Sequence[str]) -> None:
        if len(tokens) < 2 or tokens[0] != PAD or tokens[1] != UNK:
            raise ValueError("a vocabulary starts with <pad>, <unk>")
        self.tokens: tuple[str, ...] = tuple(tokens)
        self._ids = {tok: i for i, tok in enumerate(self.tokens)}
        if len(self._ids) != len(self.tokens):
            raise ValueError("vocabulary tokens must be unique")

    @classmethod
    def build(
        cls,
        streams: Iterable[Iterable[str]],
        *,
        eos: bool,
        max_size: int = 0,
        min_freq: int = 1,
    ) -> Vocab:
        """Count tokens in one pass over ``streams`` and keep the most frequent.

        ``max_size`` bounds the whole vocabulary including the specials (0 = no bound);
        tokens seen fewer than ``min_freq`` times map to ``<unk>``.
        """
        counts: Counter[str] = Counter()
        for tokens in streams:
            counts.update(tokens)
        specials = [PAD, UNK] + ([EOS] if eos else [])
        for special in specials:
            counts.pop(special, None)
        # Counter keeps first-seen order, and sorted() is stable: ties stay in that order.
        ranked = [tok for tok, n in sorted(counts.items(), key=lambda kv: -kv[1]) if n >= min_freq]
        if max_size:
            ranked = ranked[: max(0, max_size - len(specials))]
        return cls(specials + ranked)

    def extended(self, counts: Counter[str], *, max_size: int = 0, min_freq: int = 1) -> Vocab:
        """This vocabulary with the tokens of ``counts`` it lacks appended, in the order of
        :meth:`build` (descending count, ties by first appearance): every old token keeps
        its id, and the new ones get the ids after them.

        Tokens seen fewer than ``min_freq`` times are left out (they stay ``<unk>``), and
        ``max_size`` bounds the whole vocabulary (0 = no bound; a vocabulary already at
        the bound gets nothing). The specials are never added as ordinary tokens.
        """
        specials = {PAD, UNK, EOS}
        fresh = [
            tok
            for tok, n in sorted(counts.items(), key=lambda kv: -kv[1])
            if n >= min_freq and tok not in self._ids and tok not in specials
        ]
        if max_size:
            fresh = fresh[: max(0, max_size - len(self.tokens))]
        return Vocab([*self.tokens, *fresh])

    def coverage(self, streams: Iterable[Iterable[str]]) -> Coverage:
        """How many of the tokens in ``streams`` this vocabulary has (one pass)."""
        total, missing = 0, Counter()
        ids = self._ids
        for tokens in streams:
            tokens = list(tokens)
            total += len(tokens)
            missing.update(tok for tok in tokens if tok not in ids)
        return Coverage(total, missing)

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._ids

    @property
    def unk_id(self) -> int:
        return UNK_ID

    @property
    def eos_id(self) -> int | None:
        """The id of ``<eos>``, or None for a vocabulary without line ends."""
        return self._ids.get(EOS)

    def id(self, token: str) -> int:
        """The id of ``token``, or the ``<unk>`` id when it is not in the vocabulary."""
        return self._ids.get(token, UNK_ID)

    def ids(self, tokens: Iterable[str]) -> list[int]:
        get = self._ids.get
        return [get(tok, UNK_ID) for tok in tokens]

    def token(self, index: int) -> str:
        return self.tokens[index]


@dataclass(frozen=True)
class Coverage:
    """Tokens of a text counted against a vocabulary: ``total`` tokens, of which the
    ``missing`` ones (with their counts, in first-seen order) are not in it."""

    total: int
    missing: Counter[str] = field(default_factory=Counter)

    @property
    def missing_total(self) -> int:
        return sum(self.missing.values())

    @property
    def missing_fraction(self) -> float:
        """The share of the tokens the vocabulary lacks (0 for an empty text)."""
        return self.missing_total / self.total if self.total else 0.0

    def most_common(self, n: int) -> list[tuple[str, int]]:
        """The ``n`` most frequent missing tokens, ties in first-seen order."""
        return sorted(self.missing.items(), key=lambda kv: -kv[1])[:n]
