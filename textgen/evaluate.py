"""Held-out quality of a trained model: cross-entropy, perplexity, bits per character.

Texts are tokenized exactly as in training. A ``stream`` model reads the text as one
stream with ``<eos>`` after every line (word level). If it was trained with its state
carried from batch to batch (``train.carry_state``) it carries its recurrent state
through the whole text, the convention of the PTB literature (Zaremba et al. 2014);
otherwise it reads consecutive windows of ``seq_len`` tokens from a zero state, as it was
trained (the char-rnn / nanoGPT convention), because a model that never saw a state older
than one window scores worse when the state runs on. A ``lines`` model reads each line
from a zero state, as it was trained, and predicts every token after the first,
``<eos>`` included. Bits per character divide the total
log-loss by the number of characters of the whole (NFC) text, newlines and blank lines
included, so models with different tokenizations compare on the same text. A line break
is one character however it is spelled: ``\r\n`` is read as ``\n`` (unless the model's
vocabulary has ``\r``, a char model trained on such text), so a file scores the same
with either line ending; the other way round, a model whose training text spelled every
line break ``\r\n`` (a char model: ``\r`` is in its vocabulary) reads an LF text with
``\r\n`` line breaks, the only spelling it knows (it would otherwise pay for a bare ``\n``
it never saw after anything but ``\r``, some 13 bits per line on Korean reviews).

:func:`evaluate_unigram` scores the same tokens with a unigram model fitted to a training
text (add-one smoothing over the vocabulary, ``<pad>`` left out), the floor a trained model
has to beat on text of another kind. Both charge an ``<unk>`` target what the model gives
``<unk>`` (no spelling cost for the characters under it), and both say how many of their
nats went to ``<unk>`` targets (:attr:`Evaluation.unknown_nll`).
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import asdict, dataclass

import numpy as np

from textgen.decoding.sampling import log_softmax
from textgen.rundir import Bundle
from textgen.text.vocab import PAD_ID

CHUNK = 512  # tokens per numpy call; bounds memory for the (chunk, vocab) logits


@dataclass(frozen=True)
class Evaluation:
    """Totals over the evaluated text; the rates derive from them."""

    tokens: int
    nll: float  # total negative log-likelihood in nats
    characters: int
    unknown: int  # tokens that map to <unk>
    unknown_nll: float = 0.0  # the part of ``nll`` spent on <unk> targets, in nats

    @property
    def cross_entropy(self) -> float:
        return self.nll / self.tokens if self.tokens else math.nan

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.cross_entropy, 700.0))

    @property
    def bits_per_char(self) -> float:
        return self.nll / math.log(2) / self.characters if self.characters else math.nan

    @property
    def unknown_bits_per_char(self) -> float:
        """The share of :attr:`bits_per_char` spent predicting ``<unk>``."""
        return self.unknown_nll / math.log(2) / self.characters if self.characters else math.nan

    @property
    def oov_rate(self) -> float:
        return self.unknown / self.tokens if self.tokens else math.nan

    def as_dict(self) -> dict[str, float]:
        return asdict(self) | {
            "cross_entropy": self.cross_entropy,
            "perplexity": self.perplexity,
            "bits_per_char": self.bits_per_char,
            "unknown_bits_per_char": self.unknown_bits_per_char,
            "oov_rate": self.oov_rate,
        }

    def __add__(self, other: Evaluation) -> Evaluation:
        return Evaluation(
            self.tokens + other.tokens,
            self.nll + other.nll,
            self.characters + other.characters,
            self.unknown + other.unknown,
            self.unknown_nll + other.unknown_nll,
        )


def _token_nll(bundle: Bundle, ids: np.ndarray, state: object = None) -> np.ndarray:
    """The NLL of each of ``ids[1:]`` given the ids before it, state carried, in chunks."""
    lm, out = bundle.lm, np.zeros(max(len(ids) - 1, 0))
    for start in range(0, len(ids) - 1, CHUNK):
        inputs = ids[start : start + CHUNK]
        targets = ids[start + 1 : start + 1 + CHUNK]
        inputs = inputs[: len(targets)]
        logits, state = lm.run(inputs[None, :], state)
        logp = log_softmax(logits[0])
        out[start : start + len(targets)] = -logp[np.arange(len(targets)), targets]
    return out


def _pieces(bundle: Bundle, text: str) -> tuple[list[np.ndarray], int]:
    """(the id sequences the model reads, each scored from its second id; the characters).

    Line mode: one sequence per non-blank line with ``<eos>``. Stream mode: the whole
    text if the model carries its state, else windows of ``seq_len`` inputs (overlapping
    by one id: a window's last id is the next one's first input).
    """
    tok = bundle.tokenizer
    if "\r" not in tok.vocab:  # a model that never saw \r reads \r\n as the \n it knows
        text = text.replace("\r\n", "\n")
    elif tok.keeps_whitespace and "\r" not in text and "\n" in tok.vocab:
        text = text.replace("\n", "\r\n")  # trained on CRLF text: its spelling of a break
    if not text.endswith("\n"):
        text += "\n"
    characters = len(unicodedata.normalize("NFC", text.replace("\r\n", "\n")))
    if bundle.line_mode:
        lines = [tok.encode(line, eos=True) for line in text.splitlines() if line.strip()]
        return [ids for ids in lines if len(ids) >= 2], characters
    ids = tok.encode_stream(text)  # the text as trained: blank lines are tokens at char level
    if len(ids) < 2:
        return [], characters
    if bundle.config.train.carry_state:
        return [ids], characters
    window = bundle.config.data.seq_len
    return [ids[start : start + window + 1] for start in range(0, len(ids) - 1, window)], characters


def _total(pieces: list[np.ndarray], characters: int, nll_of, unk_id: int) -> Evaluation:
    tokens, nll, unknown, unknown_nll = 0, 0.0, 0, 0.0
    for ids in pieces:
        losses = nll_of(ids)
        unk = ids[1:] == unk_id
        tokens += len(ids) - 1
        nll += float(losses.sum())
        unknown += int(np.count_nonzero(unk))
        unknown_nll += float(losses[unk].sum())
    return Evaluation(tokens, nll, characters, unknown, unknown_nll)


def evaluate_text(bundle: Bundle, text: str) -> Evaluation:
    """Score one text with a loaded run.

    Bits per character divide by the characters of the whole NFC text, blank lines and
    newlines included (a final newline is assumed; ``\r\n`` is one), whatever the level.
    """
    pieces, characters = _pieces(bundle, text)
    return _total(
        pieces, characters, lambda ids: _token_nll(bundle, ids), bundle.tokenizer.vocab.unk_id
    )


def unigram_log_probs(bundle: Bundle, train_text: str) -> np.ndarray:
    """Log-probability of every id under a unigram model of ``train_text`` as the run reads
    it (the ids :func:`evaluate_text` would score on it): add-one smoothing over every
    token but ``<pad>``, so ``<unk>`` and unseen tokens get what a single count gives."""
    size = len(bundle.tokenizer.vocab)
    pieces, _ = _pieces(bundle, train_text)
    counts = np.ones(size)
    for ids in pieces:
        counts += np.bincount(ids[1:], minlength=size)[:size]
    counts[PAD_ID] = 0.0
    with np.errstate(divide="ignore"):
        return np.log(counts / counts.sum())


def evaluate_unigram(bundle: Bundle, train_text: str, text: str) -> Evaluation:
    """Score ``text`` as :func:`evaluate_text` does (the same tokens, characters and
    ``<unk>`` accounting), with the unigram model of :func:`unigram_log_probs` in place
    of the run's network: the baseline a trained model must beat."""
    logp = unigram_log_probs(bundle, train_text)
    pieces, characters = _pieces(bundle, text)
    return _total(pieces, characters, lambda ids: -logp[ids[1:]], bundle.tokenizer.vocab.unk_id)
