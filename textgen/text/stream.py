"""Text blocks → ids while the vocabulary is still being counted, in one pass.

Every new token gets a provisional id in order of first appearance (the tie order of
:meth:`Vocab.build`); :func:`final_vocab` then gives the vocabulary ``Vocab.build`` would
give for the counts, and the map from provisional to final ids. The splitting is the
tokenizer's own. The id cache (:mod:`textgen.corpus.cache`) uses these counters for the
word and char levels; once a vocabulary is known, ids come from
:meth:`Tokenizer.encode` alone.
"""

from __future__ import annotations

import itertools

import numpy as np

from textgen.errors import DataError
from textgen.text.base import Tokenizer, code_points
from textgen.text.vocab import EOS, PAD, UNK, UNK_ID, Vocab

MAX_DISTINCT = 5_000_000  # distinct tokens counted before the vocabulary is cut to size


def counter_for(splitter: Tokenizer) -> CharCounter | WordCounter:
    """The counting encoder of ``splitter``'s level: code points where each token is a
    character (the char level, whose stream has no ``<eos>``), words with ``<eos>`` after
    each line at the word level. The other levels fit their tokenizer first."""
    if splitter.tokens_are_chars and not splitter.eos_in_stream:
        return CharCounter(splitter)
    if splitter.level == "word":
        return WordCounter(splitter)
    raise ValueError(f"the {splitter.level} level has no counting encoder; fit its tokenizer")


class CharCounter:
    """Characters → provisional ids through a table over all of Unicode (vectorized).

    The splitting is the char tokenizer's own (:meth:`Tokenizer.normalize_text`, then code
    points)."""

    def __init__(self, splitter: Tokenizer) -> None:
        self.splitter = splitter
        self.table = np.full(0x110000, -1, np.int32)
        self.tokens: list[str] = []
        self.counts = np.zeros(0, np.int64)

    def encode(self, text: str, count: bool) -> np.ndarray:
        cps = code_points(self.splitter.normalize_text(text))
        ids = self.table[cps]
        unseen = np.flatnonzero(ids < 0)
        if len(unseen):
            self._add_new(cps, unseen)
            ids = self.table[cps]
        if count:
            self.counts = add_counts(self.counts, ids, len(self.tokens))
        return ids

    def _add_new(self, cps: np.ndarray, unseen: np.ndarray) -> None:
        """Give the code points at positions ``unseen`` ids in order of first appearance.

        Sorting every unseen position (a whole first block) is slow; new code points
        cluster at the start, so each round sorts only the next 64k unseen positions and
        drops those the round has just named."""
        while len(unseen):
            head, unseen = unseen[:65536], unseen[65536:]
            fresh, first = np.unique(cps[head], return_index=True)
            fresh = fresh[np.argsort(first)]
            fresh = fresh[self.table[fresh] < 0]
            self.table[fresh] = np.arange(len(self.tokens), len(self.tokens) + len(fresh))
            self.tokens.extend(chr(c) for c in fresh)
            unseen = unseen[self.table[cps[unseen]] < 0]


class WordCounter:
    """Words → provisional ids, ``<eos>`` after every non-blank line; the splitting is the
    word tokenizer's own (:meth:`Tokenizer.normalize_text`, then whitespace)."""

    def __init__(self, splitter: Tokenizer) -> None:
        self.splitter = splitter
        self.index: dict[str, int] = {t: i for i, t in enumerate([PAD, UNK, EOS])}
        self.tokens: list[str] = list(self.index)
        self.eos_id = self.index[EOS]
        self.counts = np.zeros(0, np.int64)

    def encode(self, text: str, count: bool) -> np.ndarray:
        normalized = self.splitter.normalize_text(text)
        raw_lines, lines = text.splitlines(), normalized.splitlines()
        if len(raw_lines) != len(lines):  # normalization changed the line breaks
            lines = [self.splitter.normalize_text(line) for line in raw_lines]
        out: list[int] = []
        index = self.index
        add = index.setdefault
        for raw, line in zip(raw_lines, lines, strict=True):
            if raw.strip():
                out.extend([add(t, len(index)) for t in line.split()])
                out.append(self.eos_id)
        new = len(index) - len(self.tokens)
        if new:  # the newest keys, read from the end: O(new), not O(vocabulary)
            self.tokens.extend(list(itertools.islice(reversed(index), new))[::-1])
        ids = np.asarray(out, np.int64)
        if count:
            self.counts = add_counts(self.counts, ids, len(self.tokens))
        return ids


def add_counts(counts: np.ndarray, ids: np.ndarray, size: int) -> np.ndarray:
    """``counts`` (at least ``size`` long, grown by doubling) plus the ids of one block.

    The work is O(block) however large the vocabulary: a corpus whose every token is new
    must not pay O(vocabulary) per block.
    """
    if size > MAX_DISTINCT:
        raise DataError(
            f"the corpus has more than {MAX_DISTINCT:,} distinct tokens; a word vocabulary "
            'that large does not fit a model: use data.level = "subword" (or clean the text)'
        )
    if len(counts) < size:
        grown = np.zeros(max(size, 2 * len(counts)), np.int64)
        grown[: len(counts)] = counts
        counts = grown
    uniq, hits = np.unique(ids, return_counts=True)
    counts[uniq] += hits
    return counts


def final_vocab(
    tokens: list[str], counts: np.ndarray, eos: bool, max_vocab: int, min_freq: int
) -> tuple[Vocab, np.ndarray]:
    """The vocabulary :meth:`Vocab.build` would give for these counts, and the map from
    provisional ids to its ids."""
    specials = [PAD, UNK] + ([EOS] if eos else [])
    full = np.zeros(len(tokens), np.int64)
    full[: min(len(counts), len(tokens))] = counts[: len(tokens)]
    counts = full
    remap = np.full(len(tokens), UNK_ID, np.int64)  # unknown by default
    ordinary = [i for i, t in enumerate(tokens) if t not in specials and counts[i] > 0]
    ordinary.sort(key=lambda i: -counts[i])  # stable: ties keep first appearance
    ordinary = [i for i in ordinary if counts[i] >= min_freq]
    if max_vocab:
        ordinary = ordinary[: max(0, max_vocab - len(specials))]
    for i, t in enumerate(tokens):
        if t in specials:
            remap[i] = specials.index(t)
    remap[ordinary] = np.arange(len(specials), len(specials) + len(ordinary))
    return Vocab(specials + [tokens[i] for i in ordinary]), remap
