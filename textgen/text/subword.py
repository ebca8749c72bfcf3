"""Subword level: a sentencepiece model (BPE or unigram) trained on the training split.

sentencepiece is configured so that its ids *are* textgen's ids (``<pad>`` = 0, ``<unk>`` =
1, ``<eos>`` = 2, no ``<s>``) and so that decoding is lossless: no normalization rule, no
whitespace folding, no dummy prefix, and byte fallback: a character without a piece is
spelled in UTF-8 byte pieces. The characters the training text holds only once get no piece
of their own (:func:`character_coverage`), so the training ids hold byte pieces and the model
learns what they cost; a character never seen in training then costs what bytes cost rather
than an id the model was never trained on. sentencepiece writes spaces as the piece marker ``▁``
(U+2581), so a literal U+2581 in the text is escaped first (as ``ESC`` + ``s``, and ``ESC``
itself as ``ESC`` + ``e``, with ``ESC`` a private-use character) and unescaped after
decoding: ``decode(encode(x)) == x`` for every NFC string.

The trained model is stored inside ``tokenizer.json`` (base64 of its serialized proto),
so a run directory stays self-contained and its checksums cover it.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from textgen.errors import DataError, UsageError
from textgen.text.base import Tokenizer, check_format_version
from textgen.text.vocab import EOS, EOS_ID, PAD, PAD_ID, UNK, UNK_ID, Vocab

MAX_SENTENCE_BYTES = 1 << 16  # longer lines are cut for training the pieces only
# characters of training lines held to learn the pieces: a larger corpus is sampled
# (reservoir sampling of whole lines), so fitting memory is bounded whatever its size
MAX_SAMPLE_CHARS = 100_000_000
# sentencepiece refuses a character_coverage below this (trainer_interface.cc)
MIN_COVERAGE = 0.98
ESC = "\U0010fffd"  # private use: escapes U+2581 (sentencepiece's space mark) and itself
_ESCAPES = {ESC + "e": ESC, ESC + "s": "\u2581"}


def escape(text: str) -> str:
    """Make ``text`` free of U+2581 so sentencepiece's space mark is unambiguous."""
    if ESC in text:
        text = text.replace(ESC, ESC + "e")
    return text.replace("\u2581", ESC + "s") if "\u2581" in text else text


def unescape(text: str) -> str:
    """Undo :func:`escape` (a lone ``ESC`` a model generated stays as it is)."""
    if ESC not in text:
        return text
    return re.sub(ESC + "[es]", lambda m: _ESCAPES[m.group(0)], text)


def _sample_lines(lines: Iterator[str], budget: int | None = None) -> list[str]:
    """All of ``lines`` when they fit in ``budget`` characters; otherwise a uniform sample
    of as many lines as first filled the budget (reservoir sampling, fixed seed).

    A corpus within the budget is used whole and in order, exactly as before sampling.
    """
    budget = MAX_SAMPLE_CHARS if budget is None else budget
    kept: list[str] = []
    chars = 0
    for line in lines:
        kept.append(line)
        chars += len(line)
        if chars > budget:
            break
    else:
        return kept
    rng, size, seen = np.random.default_rng(0), len(kept), len(kept)
    for line in lines:
        seen += 1
        slot = int(rng.integers(seen))
        if slot < size:
            kept[slot] = line
    return kept


def character_coverage(lines: Iterable[str]) -> float:
    """sentencepiece's ``character_coverage`` that leaves out exactly the characters seen
    once in ``lines`` (so byte fallback spells them), or 1.0 when there are none.

    sentencepiece (``--byte_fallback``: "you need to set --character_coverage less than
    1.0, otherwise byte-fall-backed token may not appear in the training data") keeps the
    most frequent characters until the kept ones cover ``character_coverage`` of the
    character occurrences and spells the rest in byte pieces. The share of the characters
    seen at least twice is that boundary; half an occurrence below it keeps float rounding
    from dropping the last of them (exact up to some 10 million characters, one character
    off beyond). Never below :data:`MIN_COVERAGE`, sentencepiece's floor: a text where
    singletons are over 2% of the characters keeps its more frequent singletons.
    """
    counts: dict[str, int] = {}
    for line in lines:
        for ch in line:
            counts[ch] = counts.get(ch, 0) + 1
    total = sum(counts.values())
    once = sum(1 for n in counts.values() if n == 1)
    if not once or not total:
        return 1.0
    return max(MIN_COVERAGE, (total - once - 0.5) / total)


def _spm() -> Any:
    try:
        import sentencepiece
    except ImportError:  # pragma: no cover - a declared dependency
        raise UsageError(
            "the subword level needs sentencepiece: pip install sentencepiece"
        ) from None
    return sentencepiece


class SubwordTokenizer(Tokenizer):
    """A :class:`Tokenizer` whose tokens are sentencepiece pieces."""

    keeps_whitespace = False  # a stream is its non-blank lines, each ended by <eos>
    eos_in_stream = True
    tokens_are_chars = False
    is_jamo = False

    cannot_grow = (
        "--extend-vocab cannot grow a subword vocabulary: the sentencepiece model that "
        "segments the text is fixed (new pieces would never be produced), and its 256 byte "
        "pieces already cover any character of the new corpus"
    )

    def __init__(self, model_proto: bytes, subword_model: str, normalize: str = "nfc") -> None:
        self.model_proto = model_proto
        self.subword_model = subword_model
        self.processor = _spm().SentencePieceProcessor(model_proto=model_proto)
        pieces = [self.processor.id_to_piece(i) for i in range(self.processor.get_piece_size())]
        super().__init__("subword", Vocab(pieces), normalize=normalize)

    # -- text ↔ tokens -------------------------------------------------------------------
    def normalize_text(self, text: str) -> str:
        return escape(super().normalize_text(text))

    def split(self, text: str) -> list[str]:
        return self.processor.encode(self.normalize_text(text), out_type=str)

    def join(self, tokens: Iterable[str]) -> str:
        return unescape(self.processor.decode_pieces(list(tokens)))

    def encode(self, text: str, *, eos: bool = False) -> np.ndarray:
        ids = self.processor.encode(self.normalize_text(text))
        if eos:
            ids.append(self.eos_id)
        return np.asarray(ids, dtype=np.int32)

    def unknown_tokens(self, text: str) -> list[str]:
        return []  # byte fallback: every character has pieces

    def decode(self, ids: Iterable[int]) -> str:
        skip = {0, self.eos_id}
        return unescape(self.processor.decode([int(i) for i in ids if int(i) not in skip]))

    def unstable_tail(self, text: str) -> int:
        # an unfinished UTF-8 sequence of byte pieces decodes as U+FFFD until it completes
        return 1 if text.endswith("\ufffd") else 0

    # -- training and persistence ---------------------------------------------------------
    @classmethod
    def fit(  # type: ignore[override]
        cls,
        texts: Iterable[str],
        level: str = "subword",
        *,
        eos: bool = True,
        subword_model: str = "unigram",
        vocab_size: int = 1000,
        normalize: str = "nfc",
    ) -> SubwordTokenizer:
        """Train a sentencepiece model on the lines of ``texts``."""
        import unicodedata

        form = normalize.upper()
        lines = _sample_lines(
            unicodedata.normalize(form, line)[: MAX_SENTENCE_BYTES // 4]
            for text in texts
            for line in text.splitlines()
            if line.strip()
        )
        if not lines:
            raise DataError("no text to train subword pieces on")
        model = io.BytesIO()
        try:
            _spm().SentencePieceTrainer.train(
                sentence_iterator=iter(lines),
                model_writer=model,
                model_type=subword_model,
                vocab_size=vocab_size,
                hard_vocab_limit=False,  # a small corpus may not fill vocab_size
                character_coverage=character_coverage(lines),
                byte_fallback=True,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                add_dummy_prefix=False,
                split_digits=True,
                max_sentence_length=MAX_SENTENCE_BYTES,
                pad_id=PAD_ID,
                unk_id=UNK_ID,
                eos_id=EOS_ID,
                bos_id=-1,
                pad_piece=PAD,
                unk_piece=UNK,
                eos_piece=EOS,
                num_threads=2,
                minloglevel=2,
            )
        except RuntimeError as err:
            need = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(err))
            if need:
                raise DataError(
                    f"data.vocab_size = {vocab_size} is too small for this corpus: its "
                    f"characters, 256 byte pieces and 3 specials need at least {need.group(1)}"
                ) from None
            raise DataError(
                f"sentencepiece could not train {subword_model} pieces: {err}"
            ) from None
        return cls(model.getvalue(), subword_model, normalize)

    def to_dict(self) -> dict[str, Any]:
        return super().to_dict() | {
            "subword_model": self.subword_model,
            "sentencepiece": base64.b64encode(self.model_proto).decode("ascii"),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "tokenizer") -> SubwordTokenizer:
        check_format_version(data, source)
        try:
            tok = cls(
                base64.b64decode(data["sentencepiece"], validate=True),
                data["subword_model"],
                data["normalize"],
            )
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise DataError(f"{source}: malformed subword tokenizer ({err})") from None
        if list(tok.vocab.tokens) != data.get("vocab"):
            raise DataError(f"{source}: the vocabulary does not match the sentencepiece model")
        return tok
