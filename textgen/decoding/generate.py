"""Text generation from a trained model, carrying the recurrent state.

The seed is fed through the network once; every further token is one recurrent step
(:class:`~textgen.decoding.numpy_lm.NumpyLM`), never a re-run over the growing prefix. The classic
tutorial's ``sentence_generation(model, tokenizer, current_word, n)`` keeps its meaning
and output (greedy argmax, seed followed by the generated words) on this fast path.

At the jamo level every strategy picks only the jamo that may follow the previous token
in a syllable (:mod:`textgen.text.hangul`), from the state the seed's last ids leave, so
the recomposed text holds no loose jamo and a text cut at ``length`` ends on a whole
syllable.
"""

from __future__ import annotations

import bisect
import sys
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from textgen.decoding.numpy_lm import NumpyLM
from textgen.decoding.sampling import Decoded, beam_search, decode, greedy, sampler
from textgen.errors import DataError, UsageError
from textgen.text.base import Tokenizer
from textgen.text.hangul import SyllableMask, syllable_mask
from textgen.text.vocab import EOS, PAD, UNK, UNK_ID

STRATEGIES = ("greedy", "sample", "beam")
MAX_LENGTH = 1_000_000  # new tokens per text: the picked ids are kept in one array
MAX_SAMPLES = 10_000  # texts per seed, decoded as one batch
MAX_BEAM_WIDTH = 1_000  # beams of one search; each step ranks width x vocabulary scores
MAX_TOKENS = 10_000_000  # rows x --length: the picked ids (or the beams' back-pointers)
SPECIALS = (PAD, UNK, EOS)  # spelled in a seed, they are text, never the special ids
PREFILL_LOGITS = 1 << 24  # logits (floats) of one chunk of the seed, at most


@dataclass(frozen=True)
class Strategy:
    """How the next token is chosen; checked on construction with one-line errors."""

    name: str = "greedy"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    beam_width: int = 4
    length_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in STRATEGIES:
            raise UsageError(
                f"--strategy must be one of {', '.join(STRATEGIES)}, got {self.name!r}"
            )
        if self.name == "sample" and self.temperature <= 0:
            raise UsageError(
                f"--temperature must be > 0 when sampling, got {self.temperature} "
                "(use --strategy greedy for argmax)"
            )
        if not 0 < self.top_p <= 1:
            raise UsageError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise UsageError(f"--top-k must be >= 0 (0 = off), got {self.top_k}")
        if self.beam_width < 1:
            raise UsageError(f"--beam-width must be >= 1, got {self.beam_width}")
        if self.beam_width > MAX_BEAM_WIDTH:
            raise UsageError(
                f"--beam-width must be at most {MAX_BEAM_WIDTH:,}, got {self.beam_width:,}"
            )


def check_sizes(length: int, num: int, strategy: Strategy | None = None) -> None:
    """Refuse a --length or -n that is not positive or would not fit in memory, alone or
    together: the ids of -n texts (or of --beam-width beams) of --length tokens are held
    at once, so their product is bounded by :data:`MAX_TOKENS`. A beam search finds at
    most --beam-width texts, so -n may not exceed it."""
    if length < 1:
        raise UsageError(f"--length must be at least 1, got {length}")
    if length > MAX_LENGTH:
        raise UsageError(f"--length must be at most {MAX_LENGTH:,}, got {length:,}")
    if num < 1:
        raise UsageError(f"-n/--num-samples must be at least 1, got {num}")
    if num > MAX_SAMPLES:
        raise UsageError(f"-n/--num-samples must be at most {MAX_SAMPLES:,}, got {num:,}")
    beam = strategy is not None and strategy.name == "beam"
    if beam and num > strategy.beam_width:
        raise UsageError(
            f"-n {num} is more than --beam-width {strategy.beam_width}: a beam search keeps "
            "at most --beam-width texts; raise --beam-width or lower -n"
        )
    rows, name = (strategy.beam_width, "--beam-width") if beam else (num, "-n")
    if rows * length > MAX_TOKENS:
        raise UsageError(
            f"{name} × --length must be at most {MAX_TOKENS:,} tokens, got "
            f"{rows:,} × {length:,}; ask for fewer or shorter texts"
        )


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


class Generator:
    """Generates continuations of seeds with one model and tokenizer."""

    def __init__(
        self, lm: NumpyLM, tokenizer: Tokenizer, *, warn: Callable[[str], None] = _warn
    ) -> None:
        self.lm = lm
        self.tokenizer = tokenizer
        self.warn = warn
        # the jamo level's well-formed-syllable mask (None elsewhere; None turns it off)
        self.syllables: SyllableMask | None = syllable_mask(tokenizer)
        self._seed: tuple[str, str] = ("", "")  # the last seed_text: (seed, text)

    def encode_seed(self, seed: str) -> np.ndarray:
        """Seed text → ids; unknown tokens become ``<unk>`` with a warning naming them.

        A seed that spells a special token (``<eos>``, ``<unk>``, ``<pad>``) means the
        text: it is no word of any vocabulary, so it is read as ``<unk>`` like any other
        unknown token, never as the special id."""
        tokens = self.tokenizer.split(seed)
        if not tokens:
            raise UsageError('the seed is empty; give at least one token, e.g. --seed "The"')
        vocab = self.tokenizer.vocab
        missing = set(self.tokenizer.unknown_tokens(seed)) | (set(tokens) & set(SPECIALS))
        unknown = [t for t in dict.fromkeys(tokens) if t in missing]
        if len(unknown) == len(set(tokens)):
            raise DataError(
                "no token of the seed is in the model's vocabulary: "
                + ", ".join(map(repr, unknown))
            )
        if unknown:
            self.warn(f"not in the vocabulary, read as <unk>: {', '.join(map(repr, unknown))}")
        ids = [UNK_ID if t in SPECIALS else vocab.id(t) for t in tokens]
        return np.asarray(ids, dtype=np.int64)

    def seed_text(self, seed: str) -> str:
        """The seed as the model reads it, which is how it is printed: normalized (NFC),
        with single spaces between words at the word level (its tokens, joined)."""
        if self._seed[0] != seed:
            self._seed = (seed, self.tokenizer.join(self.tokenizer.split(seed)))
        return self._seed[1]

    def continue_ids(
        self,
        seed: str,
        *,
        length: int,
        num: int = 1,
        strategy: Strategy | None = None,
        rng_seed: int | None = None,
        stop: str | None = None,
        on_token: Callable[[int, int], None] | None = None,
    ) -> Decoded:
        """Generate up to ``length`` ids after ``seed``, ``num`` samples decoded as one batch.

        The seed runs through the network once; then each token is one recurrent step.
        Each sample ends at ``<eos>``, at the ``stop`` string (its ids then run to the
        token that completed it, at the jamo level to the token after which its last
        syllable can no longer change; :meth:`finish` cuts the text), or after ``length``
        tokens. Beam search returns the ``num`` best beams of a single search.
        """
        strategy = strategy or Strategy()
        check_sizes(length, num, strategy)
        seed_ids = self.encode_seed(seed)
        if strategy.name == "beam":
            return self.beam(seed_ids, strategy=strategy, length=length, num=num, stop=stop)
        should_stop, lookback = self._stop_test(stop)
        last, state = self.prefill(seed_ids, num)
        pick = (
            greedy
            if strategy.name == "greedy"
            else sampler(strategy.temperature, strategy.top_k, strategy.top_p)
        )
        return decode(
            self.lm.step,
            last,
            state,
            length=length,
            pick=pick,
            stop_id=self.tokenizer.eos_id,
            should_stop=should_stop,
            lookback=lookback,
            rng=np.random.default_rng(rng_seed),
            on_token=on_token,
            **self.mask_args(seed_ids, num),
        )

    def beam(
        self,
        seed_ids: np.ndarray,
        *,
        strategy: Strategy,
        length: int,
        num: int = 1,
        stop: str | None = None,
        step: Callable[[np.ndarray, Any], tuple[np.ndarray, Any]] | None = None,
    ) -> Decoded:
        """The ``num`` best beams of one search after ``seed_ids`` (sizes already checked).

        ``step`` replaces the network's step (default ``self.lm.step``): the server wraps
        it to stop the search when its client goes away.
        """
        should_stop, lookback = self._stop_test(stop)
        last, state = self.prefill(seed_ids, 1)
        return beam_search(
            step or self.lm.step,
            last,
            state,
            width=strategy.beam_width,
            length=length,
            stop_id=self.tokenizer.eos_id,
            should_stop=should_stop,
            lookback=lookback,
            alpha=strategy.length_penalty,
            num=num,
            **self.mask_args(seed_ids, 1),
        )

    def mask_args(self, seed_ids: np.ndarray, rows: int) -> dict[str, Any]:
        """The ``mask`` and ``mask_states`` arguments of the samplers for ``rows`` rows
        after ``seed_ids`` (none where no mask applies)."""
        if self.syllables is None:
            return {}
        return {"mask": self.syllables, "mask_states": self.syllables.starts(seed_ids, rows)}

    def prefill(self, seed_ids: np.ndarray, rows: int) -> tuple[np.ndarray, Any]:
        """Run the seed through the network for ``rows`` sequences; return the logits after
        its last token (rows, vocab) and the state.

        The seed goes in chunks that carry the state, sized so that the logits of one
        chunk stay under :data:`PREFILL_LOGITS`: a seed of a megabyte costs time in
        proportion, never gigabytes of output projections.
        """
        chunk = max(1, min(len(seed_ids), PREFILL_LOGITS // (rows * self.lm.vocab_size)))
        state = None
        for start in range(0, len(seed_ids), chunk):
            logits, state = self.lm.run(np.tile(seed_ids[start : start + chunk], (rows, 1)), state)
        return logits[:, -1], state

    @staticmethod
    def _stop(stop: str | None) -> str:
        """The stop string as generated text is written (NFC); "" for none."""
        return unicodedata.normalize("NFC", stop) if stop else ""

    def _stop_test(self, stop: str | None) -> tuple[Callable[[int, list[int]], bool] | None, int]:
        """The test that ends a sequence whose new text holds ``stop``, and how many of its
        last ids it needs: enough for ``len(stop) + 1`` characters, a character being at
        most 4 tokens (3 jamo for a Hangul syllable, 4 byte pieces for a subword), plus
        the syllable held back at the jamo level.

        At the jamo level the last syllable may still take a final consonant (가 + ᆨ is
        각), so a stop is only found in the text before it (:func:`stable_text`): stop
        "가" must not end a text that goes on as 각하. A sequence whose stop lies in that
        syllable when it ends (``length``, ``<eos>``) is still cut there by :meth:`finish`,
        which reads the final text."""
        stop = self._stop(stop)
        if not stop:
            return None, 0
        tok = self.tokenizer
        continuation = tok.continuation
        if not tok.is_jamo:  # only a jamo text's last syllable may still change
            return (lambda _row, ids: stop in continuation("", ids)), 4 * (len(stop) + 1)

        def found(_row: int, ids: list[int]) -> bool:
            return stop in stable_text(tok, continuation("", ids))

        return found, 4 * (len(stop) + 2)

    def _cut(self, text: str, stop: str) -> str | None:
        """The new ``text`` up to the first occurrence of ``stop`` (without the spaces
        before it, unless the level ``keeps_whitespace``), or None when it has none."""
        if not stop or stop not in text:
            return None
        text = text[: text.index(stop)]
        return text if self.tokenizer.keeps_whitespace else text.rstrip()

    def finish(self, seed: str, ids: list[int], stop: str | None = None) -> tuple[str, int]:
        """The text of one generated sequence and the number of its tokens kept.

        The text is the seed as the model reads it (:meth:`seed_text`) followed by the new
        text, which ends just before the first occurrence of ``stop`` in it; the tokens
        kept are those whose text lies wholly before it."""
        tok, shown, stop = self.tokenizer, self.seed_text(seed), self._stop(stop)
        new = tok.continuation(shown, ids)
        cut = self._cut(new, stop)
        if cut is None:
            return tok.attach(shown, new), len(ids)
        lengths = _Lengths(lambda k: len(tok.continuation(shown, ids[:k])))
        kept = bisect.bisect_right(lengths, len(cut), 0, len(ids) + 1) - 1
        return tok.attach(shown, cut), max(kept, 0)

    def join(self, seed: str, ids: list[int], stop: str | None = None) -> str:
        """The seed as the model reads it followed by the decoded tokens (a space between
        words); with ``stop``, the new text ends just before the first occurrence of it."""
        return self.finish(seed, ids, stop)[0]

    def printer(
        self, seed: str, write: Callable[[str], None], stop: str | None = None
    ) -> Callable[[int, int], None]:
        """An ``on_token`` callback that writes the seed and then the text as it grows
        (streaming to a terminal), holding back the characters a later token may still
        change: a jamo-level syllable that can take a final consonant, and an end that
        may be the start of ``stop`` (so a terminal shows what a pipe gets). Its
        ``finish(text)`` writes the rest of the final text."""
        tok, shown_seed, stop = self.tokenizer, self.seed_text(seed), self._stop(stop)
        ids: list[int] = []
        start = tok.attach(shown_seed, "")
        shown = [start[: len(start) - tok.unstable_tail(start)]]
        write(shown[0])

        def show(text: str) -> None:
            if text.startswith(shown[0]) and len(text) > len(shown[0]):
                write(text[len(shown[0]) :])
                shown[0] = text

        def settled(new: str) -> str:
            """What of the new text no later token can move behind the stop string."""
            cut = self._cut(new, stop)
            if cut is not None or not stop:
                return new if cut is None else cut
            return held_back(tok, new, [stop])  # a stop may go on through its end

        def on_token(_row: int, token: int) -> None:
            ids.append(token)
            text = tok.attach(shown_seed, settled(tok.continuation(shown_seed, ids)))
            show(text[: len(text) - tok.unstable_tail(text)])

        on_token.finish = show  # type: ignore[attr-defined]
        return on_token

    def generate(self, seed: str, *, length: int, num: int = 1, **kwargs: Any) -> list[str]:
        """Generate ``num`` texts, each the seed followed by up to ``length`` new tokens."""
        decoded = self.continue_ids(seed, length=length, num=num, **kwargs)
        return [self.join(seed, ids, kwargs.get("stop")) for ids in decoded.ids]


def held_back(tokenizer: Tokenizer, text: str, stops: list[str]) -> str:
    """What of a growing ``text`` no later token can change or move behind a stop string:
    without the characters the next token may still change (a jamo syllable that can take
    a final consonant), an end that may be the start of one of ``stops``, and, where
    whitespace is not tokens, the spaces at the end (a stop's cut drops the spaces before
    it). What ``textgen generate`` writes to a terminal and what the server streams as
    deltas both hold back this way, so neither takes back what it showed."""
    text = text[: len(text) - tokenizer.unstable_tail(text)]
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                text = text[:-k]
                break
    if stops and not tokenizer.keeps_whitespace:
        text = text.rstrip()
    return text


def stable_text(tokenizer: Tokenizer, text: str) -> str:
    """``text`` without the characters the next token may still change, where a stop string
    found would be final (the jamo level, ``tokenizer.is_jamo``; the whole text elsewhere)."""
    if not tokenizer.is_jamo:
        return text
    return text[: len(text) - tokenizer.unstable_tail(text)]


class _Lengths:
    """``lengths[k]``: the length of the new text of the first ``k`` tokens, computed when
    asked (a sequence for :func:`bisect.bisect_right`, which asks O(log n) of them)."""

    def __init__(self, length_of: Callable[[int], int]) -> None:
        self.length_of = length_of

    def __getitem__(self, k: int) -> int:
        return self.length_of(k)


def _as_numpy(model: Any) -> NumpyLM:
    if isinstance(model, NumpyLM):
        return model
    if hasattr(model, "lm") and isinstance(model.lm, NumpyLM):
        return model.lm
    return NumpyLM.from_model(model)


def sentence_generation(model: Any, tokenizer: Tokenizer, current_word: str, n: int) -> str:
    """The tutorial's greedy decoder: ``current_word`` followed by up to ``n`` predicted tokens.

    ``model`` is a trained Keras LM, a :class:`NumpyLM` or a loaded run bundle. Stops early
    at ``<eos>`` for a model that has one. Example::

        >>> sentence_generation(model, tokenizer, "경마장에", 4)
        '경마장에 있는 말이 뛰고 있다'
    """
    return Generator(_as_numpy(model), tokenizer).generate(current_word, length=n)[0]
