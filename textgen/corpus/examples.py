"""Corpus → training examples for teacher forcing.

Two ways to cut a corpus into sequences:

* ``lines`` (the RNNLM of the classic tutorial): every non-empty line is one sentence
  ending in ``<eos>``, pre-padded with ``keras.utils.pad_sequences(padding="pre")`` to the
  longest line or to ``max_len`` tokens. A longer line is not truncated (that would lose
  text): it is cut into pieces of ``max_len`` tokens that overlap by one token, so every
  next-token pair of the line is still trained; the number of such lines is reported.
* ``stream`` (char-RNN): the text is one stream of ids (at word level with ``<eos>`` after
  every line) cut into consecutive windows of ``seq_len`` inputs.

Either way an example is ``inputs = tokens[:-1]`` and ``targets = tokens[1:]`` at every
position. Padding ids are 0 and the model masks them, so they never count in the loss.
The last ``val_split`` fraction of the corpus (lines, or characters in stream mode) is held
out for validation, unless ``valid_corpus`` names a separate validation file (PTB's
split); the vocabulary is counted on the training part only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from textgen.config import DataConfig
from textgen.corpus.cache import IdFile, prepare_ids
from textgen.corpus.read import (
    Progress,
    read_corpus,
    scan,
    split_blocks,
    tail_start,
    text_blocks,
)
from textgen.errors import DataError
from textgen.text import tokenizer_for
from textgen.text.base import Tokenizer

MAX_PADDED_IDS = 1 << 28  # lines mode, max_len = 0: at most this many padded ids (1 GB)


@dataclass(frozen=True)
class Examples:
    """Teacher-forcing pairs: ``targets[:, t]`` is the token after ``inputs[:, t]``."""

    inputs: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, rows: slice) -> Examples:
        return Examples(self.inputs[rows], self.targets[rows])

    def rows(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(inputs, targets)`` of the examples at ``idx``."""
        return self.inputs[idx], self.targets[idx]

    @property
    def width(self) -> int:
        """Inputs per example: every row has this many (the padded or window length)."""
        return int(self.inputs.shape[1]) if self.inputs.ndim == 2 else 0

    @property
    def num_tokens(self) -> int:
        """Number of predicted (unmasked) positions: those whose input is not padding."""
        return int(np.count_nonzero(self.inputs))


class Windows:
    """Consecutive windows of ``seq_len`` inputs over an id file, read when asked for.

    The stream-mode counterpart of :class:`Examples` for corpora of any size: window ``i``
    is ``ids[i*L : (i+1)*L]`` with targets shifted by one, so only the rows of the current
    batch are ever in memory. A short stream gets shorter windows (as
    :func:`stream_examples`).
    """

    def __init__(self, ids: IdFile, seq_len: int) -> None:
        self.ids = ids
        self.seq_len = min(seq_len, len(ids) - 1)
        self.count = (len(ids) - 1) // self.seq_len if self.seq_len >= 1 else 0
        self._tokens: int | None = None

    def __len__(self) -> int:
        return self.count

    def rows(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(inputs, targets)`` of the windows at ``idx``: one read when they are
        consecutive, one per window otherwise."""
        idx = np.asarray(idx)
        L = self.seq_len
        if len(idx) and idx[-1] - idx[0] + 1 == len(idx) and np.all(np.diff(idx) == 1):
            flat = self.ids.read(int(idx[0]) * L, len(idx) * L + 1)
            inputs = flat[:-1].reshape(len(idx), L)
            targets = flat[1:].reshape(len(idx), L)
            return inputs, targets
        out = np.empty((len(idx), L + 1), np.int32)
        for row, i in enumerate(idx):
            out[row] = self.ids.read(int(i) * L, L + 1)
        return out[:, :-1], out[:, 1:]

    def __getitem__(self, rows: slice) -> Examples:
        return Examples(*self.rows(np.arange(self.count)[rows]))

    @property
    def inputs(self) -> np.ndarray:
        """All inputs in memory (for small corpora and tests)."""
        return self[:].inputs

    @property
    def targets(self) -> np.ndarray:
        return self[:].targets

    @property
    def width(self) -> int:
        """Inputs per window: every window has this many."""
        return self.seq_len

    @property
    def num_tokens(self) -> int:
        """Number of predicted positions (inputs that are not ``<pad>``)."""
        if self._tokens is None:
            used = self.count * self.seq_len
            self._tokens = used - self.ids.zeros(used)
        return self._tokens


@dataclass(frozen=True)
class Prepared:
    """Everything training needs from the corpus."""

    tokenizer: Tokenizer
    train: Examples | Windows
    val: Examples | Windows | None
    corpus_sha256: str
    split_lines: int = 0


def pad_pre(sequences: list[np.ndarray], length: int) -> np.ndarray:
    """Left-pad id sequences with 0 to ``length`` (keras ``pad_sequences(padding="pre")``)."""
    from textgen._tf import keras

    return keras().utils.pad_sequences(sequences, maxlen=length, padding="pre", dtype="int32")


def _pieces(seq: np.ndarray, max_len: int) -> list[np.ndarray]:
    """Cut ``seq`` into pieces of at most ``max_len`` that overlap by one token."""
    if len(seq) <= max_len:
        return [seq]
    step = max_len - 1
    return [seq[i : i + max_len] for i in range(0, len(seq) - 1, step)]


def line_examples(lines: list[str], tokenizer: Tokenizer, length: int) -> tuple[Examples, int]:
    """Encode lines with ``<eos>``, cut long ones, pre-pad to ``length``; return (examples, cut)."""
    seqs: list[np.ndarray] = []
    cut = 0
    for line in lines:
        pieces = _pieces(tokenizer.encode(line, eos=True), length)
        cut += len(pieces) > 1
        seqs.extend(p for p in pieces if len(p) >= 2)
    if not seqs:
        empty = np.zeros((0, length - 1), dtype=np.int32)
        return Examples(empty, empty.copy()), cut
    padded = pad_pre(seqs, length)
    return Examples(padded[:, :-1], padded[:, 1:]), cut


def stream_examples(ids: np.ndarray, seq_len: int) -> Examples:
    """Cut an id stream into consecutive windows of ``seq_len`` inputs (shorter if it must)."""
    seq_len = min(seq_len, len(ids) - 1)
    if seq_len < 1:
        empty = np.zeros((0, 1), dtype=np.int32)
        return Examples(empty, empty.copy())
    n = (len(ids) - 1) // seq_len
    inputs = ids[: n * seq_len].reshape(n, seq_len)
    targets = ids[1 : n * seq_len + 1].reshape(n, seq_len)
    return Examples(np.ascontiguousarray(inputs), np.ascontiguousarray(targets))


def held_out_text(
    cfg: DataConfig,
    corpus_sha256: str | None = None,
    *,
    moved: str | None = None,
    valid_sha256: str | None = None,
) -> str:
    """The validation text a run held out: ``valid_corpus``, or the corpus' tail that
    :func:`prepare` set aside (empty when ``val_split`` is 0).

    With ``corpus_sha256`` (the run's record) the corpus must still be that file: a run
    copied from elsewhere names paths of another machine, and the tail of a different
    file is not what the run held out. ``moved`` is where that file (the separate
    validation file, when the run has one) is now; it is checked the same way.
    """
    if not cfg.valid_corpus and cfg.val_split <= 0:
        return ""
    key = "valid_corpus" if cfg.valid_corpus else "corpus"
    if moved is not None:
        cfg = replace(cfg, **{key: moved})
    elif not Path(getattr(cfg, key)).exists():
        raise DataError(
            f"{key.replace('_', ' ')} not found: {getattr(cfg, key)}; if the same text is "
            "elsewhere, give it with --corpus PATH"
        )
    if cfg.valid_corpus:
        text, sha = read_corpus(cfg.valid_corpus, cfg.encoding)
        if valid_sha256 and sha != valid_sha256:
            raise DataError(
                f"{cfg.valid_corpus} is not the validation file this run was trained with "
                "(sha256 differs); score a file instead"
            )
        return text
    if cfg.val_split <= 0:
        return ""
    if cfg.mode == "lines":
        text, sha = read_corpus(cfg.corpus, cfg.encoding)
        _check_same(cfg, sha, corpus_sha256)
        _, val_lines = hold_out_lines([ln for ln in text.splitlines() if ln.strip()], cfg)
        return "\n".join(val_lines) + "\n" if val_lines else ""
    sha, chars = scan(cfg.corpus, cfg.encoding)  # one pass: the checksum and the cut
    _check_same(cfg, sha, corpus_sha256)
    cut = tail_start(chars, cfg.val_split)
    return "".join(
        val for _, val in split_blocks(text_blocks(cfg.corpus, cfg.encoding), cut, cfg.level)
    )


def training_text(cfg: DataConfig) -> str:
    """The training part of the corpus named by ``cfg``, the text its vocabulary was
    counted on: the whole corpus beside ``valid_corpus`` or with ``val_split`` 0, else
    everything before the tail :func:`held_out_text` gives (the same one split rule).
    Baselines fitted to what a run saw (``textgen.evaluate.evaluate_unigram``) read it."""
    if cfg.mode == "lines":
        text, _ = read_corpus(cfg.corpus, cfg.encoding)
        if cfg.valid_corpus or cfg.val_split <= 0:
            return text
        train_lines, _ = hold_out_lines([ln for ln in text.splitlines() if ln.strip()], cfg)
        return "\n".join(train_lines) + "\n" if train_lines else ""
    cut = None
    if not cfg.valid_corpus and cfg.val_split > 0:
        _, chars = scan(cfg.corpus, cfg.encoding)
        cut = tail_start(chars, cfg.val_split)
    return "".join(
        train for train, _ in split_blocks(text_blocks(cfg.corpus, cfg.encoding), cut, cfg.level)
    )


def _check_same(cfg: DataConfig, sha: str, expected: str | None) -> None:
    """Refuse a corpus that is not the file the run was trained on (when that is known)."""
    if expected is not None and sha != expected:
        raise DataError(
            f"corpus {cfg.corpus} is not the file this run was trained on (sha256 "
            "differs), so its held-out tail is unknown; score a file instead"
        )


def hold_out_lines(lines: list[str], cfg: DataConfig) -> tuple[list[str], list[str]]:
    """(training lines, validation lines): the last ``val_split`` of them, at least one
    when there is a split and two or more lines."""
    n_val = int(len(lines) * cfg.val_split)
    if cfg.val_split > 0 and n_val == 0 and len(lines) >= 2:
        n_val = 1
    return lines[: len(lines) - n_val], lines[len(lines) - n_val :]


def prepare(
    cfg: DataConfig,
    tokenizer: Tokenizer | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> Prepared:
    """Build train/validation examples from the corpus named by ``cfg``.

    The vocabulary is counted on the training part, unless ``tokenizer`` is given (a
    resumed run keeps the tokenizer it started with). Stream mode goes through the id
    cache of :mod:`textgen.corpus.cache` (any corpus size; ``progress`` gets bytes read); lines
    mode pads sentences in memory.
    """
    if cfg.mode == "lines":
        prepared = _prepare_lines(cfg, tokenizer)
    else:
        prepared = _prepare_stream(cfg, tokenizer, progress, log)
    if len(prepared.train) == 0:
        raise DataError(f"corpus {cfg.corpus} gives no training sequence of two or more tokens")
    if prepared.val is not None and len(prepared.val) == 0:
        prepared = replace(prepared, val=None)
    return prepared


def _prepare_lines(cfg: DataConfig, given: Tokenizer | None) -> Prepared:
    """Lines mode: every non-blank line a pre-padded example, read into memory."""
    where = cfg.corpus
    text, sha = read_corpus(cfg.corpus, cfg.encoding)
    valid_text = read_corpus(cfg.valid_corpus, cfg.encoding)[0] if cfg.valid_corpus else None
    lines = [line for line in text.splitlines() if line.strip()]
    if valid_text is not None:
        train_lines = lines
        val_lines = [line for line in valid_text.splitlines() if line.strip()]
        lines = lines + val_lines
    else:
        train_lines, val_lines = hold_out_lines(lines, cfg)
    tokenizer = given or tokenizer_for(cfg, train_lines)
    _check_vocab(tokenizer, where)
    length = cfg.max_len or _longest_line(lines, tokenizer, where)
    if len(lines) * length > MAX_PADDED_IDS:  # a max_len far past any line
        raise DataError(
            f"data.max_len = {cfg.max_len:,} pads {len(lines):,} lines to {length:,} ids each "
            f"({len(lines) * length * 8 / 1e9:,.1f} GB); lower data.max_len (e.g. 200)"
        )
    train, cut = line_examples(train_lines, tokenizer, length)
    val, cut_val = line_examples(val_lines, tokenizer, length) if val_lines else (None, 0)
    return Prepared(tokenizer, train, val, sha, cut + cut_val)


def _prepare_stream(
    cfg: DataConfig,
    given: Tokenizer | None,
    progress: Progress | None,
    log: Callable[[str], None] | None,
) -> Prepared:
    """Stream mode: windows of ``seq_len`` over the ids of the on-disk cache."""
    entry = prepare_ids(cfg, given, progress=progress, log=log)
    _check_vocab(entry.tokenizer, cfg.corpus)
    if len(entry.train) < cfg.seq_len + 1:
        raise DataError(
            f"corpus {cfg.corpus} is too short for one window: {len(entry.train)} training "
            f"tokens, data.seq_len = {cfg.seq_len} needs {cfg.seq_len + 1}"
        )
    train = Windows(entry.train, cfg.seq_len)
    val = Windows(entry.valid, cfg.seq_len) if entry.valid is not None else None
    return Prepared(entry.tokenizer, train, val, entry.corpus_sha256, 0)


def _longest_line(lines: list[str], tokenizer: Tokenizer, where: object) -> int:
    """The padded length for ``data.max_len = 0``: the longest line plus ``<eos>``.

    Every line is padded to it, so one very long line multiplies the memory of all; past
    :data:`MAX_PADDED_IDS` ids that is an error naming the line, not an out-of-memory.
    """
    sizes = [len(tokenizer.split(line)) for line in lines]
    longest = int(np.argmax(sizes))
    length = 1 + sizes[longest]
    if len(lines) * length > MAX_PADDED_IDS:
        raise DataError(
            f"corpus {where}: non-blank line {longest + 1} has {sizes[longest]:,} tokens, and "
            f"padding all {len(lines):,} lines to it needs {len(lines) * length * 8 / 1e9:.1f} GB; "
            "set data.max_len (e.g. 200) to cut long lines into pieces"
        )
    return length


def _check_vocab(tokenizer: Tokenizer, where: object) -> None:
    """A model needs at least two different tokens to predict (``<eos>`` counts)."""
    ordinary = tokenizer.vocab.tokens[3 if tokenizer.eos_id is not None else 2 :]
    if not ordinary:
        raise DataError(f"corpus {where} has no tokens to learn at level {tokenizer.level!r}")
    if len(ordinary) + (tokenizer.eos_id is not None) < 2:
        raise DataError(
            f"corpus {where} has a single distinct token ({ordinary[0]!r}); "
            "a language model needs at least two"
        )
