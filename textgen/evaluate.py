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
with either line ending.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import asdict, dataclass

import numpy as np

from textgen.decoding.sampling import log_softmax
from textgen.rundir import Bundle

CHUNK = 512  # tokens per numpy call; bounds memory for the (chunk, vocab) logits


@dataclass(frozen=True)
class Evaluation:
    """Totals over the evaluated text; the rates derive from them."""

    tokens: int
    nll: float  # total negative log-likelihood in nats
    characters: int
    unknown: int  # tokens that map to <unk>

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
    def oov_rate(self) -> float:
        return self.unknown / self.tokens if self.tokens else math.nan

    def as_dict(self) -> dict[str, float]:
        return asdict(self) | {
            "cross_entropy": self.cross_entropy,
            "perplexity": self.perplexity,
            "bits_per_char": self.bits_per_char,
            "oov_rate": self.oov_rate,
        }

    def __add__(self, other: Evaluation) -> Evaluation:
        return Evaluation(
            self.tokens + other.tokens,
            self.nll + other.nll,
            self.characters + other.characters,
            self.unknown + other.unknown,
        )


def _score(bundle: Bundle, ids: np.ndarray) -> float:
    """Total NLL of ``ids[1:]`` given the prefix, state carried, in chunks."""
    lm, state, nll = bundle.lm, None, 0.0
    for start in range(0, len(ids) - 1, CHUNK):
        inputs = ids[start : start + CHUNK]
        targets = ids[start + 1 : start + 1 + CHUNK]
        inputs = inputs[: len(targets)]
        logits, state = lm.run(inputs[None, :], state)
        logp = log_softmax(logits[0])
        nll -= float(logp[np.arange(len(targets)), targets].sum())
    return nll


def evaluate_text(bundle: Bundle, text: str) -> Evaluation:
    """Score one text with a loaded run.

    Bits per character divide by the characters of the whole NFC text, blank lines and
    newlines included (a final newline is assumed; ``\r\n`` is one), whatever the level.
    """
    tok = bundle.tokenizer
    if "\r" not in tok.vocab:  # a model that never saw \r reads \r\n as the \n it knows
        text = text.replace("\r\n", "\n")
    if not text.endswith("\n"):
        text += "\n"
    characters = len(unicodedata.normalize("NFC", text.replace("\r\n", "\n")))
    if bundle.line_mode:
        total = Evaluation(0, 0.0, characters, 0)
        for line in text.splitlines():
            if not line.strip():
                continue
            ids = tok.encode(line, eos=True)
            if len(ids) >= 2:
                nll = _score(bundle, ids)
                unknown = int(np.count_nonzero(ids[1:] == tok.vocab.unk_id))
                total = total + Evaluation(len(ids) - 1, nll, 0, unknown)
        return total
    ids = tok.encode_stream(text)  # the text as trained: blank lines are tokens at char level
    unknown = int(np.count_nonzero(ids[1:] == tok.vocab.unk_id))
    if bundle.config.train.carry_state:
        nll = _score(bundle, ids) if len(ids) >= 2 else 0.0
    else:  # windows of seq_len inputs from a zero state, each scored on its next tokens
        window = bundle.config.data.seq_len
        nll = sum(
            _score(bundle, ids[start : start + window + 1])
            for start in range(0, len(ids) - 1, window)
        )
    return Evaluation(max(len(ids) - 1, 0), nll, characters, unknown)
