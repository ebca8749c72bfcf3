"""Text generation from a trained model, carrying the recurrent state.

The seed is fed through the network once; every further token is one recurrent step
(:class:`~textgen.decoding.numpy_lm.NumpyLM`), never a re-run over the growing prefix. The classic
tutorial's ``sentence_generation(model, tokenizer, current_word, n)`` keeps its meaning
and output (greedy argmax, seed followed by the generated words) on this fast path.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from textgen.decoding.numpy_lm import NumpyLM
from textgen.decoding.sampling import Decoded, beam_search, decode, greedy, sampler
from textgen.errors import DataError, UsageError
from textgen.text.base import Tokenizer

STRATEGIES = ("greedy", "sample", "beam")
MAX_LENGTH = 1_000_000  # new tokens per text: the picked ids are kept in one array
MAX_SAMPLES = 10_000  # texts per seed, decoded as one batch
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


def check_sizes(length: int, num: int) -> None:
    """Refuse a --length or -n that is not positive or would not fit in memory."""
    if length < 1:
        raise UsageError(f"--length must be at least 1, got {length}")
    if length > MAX_LENGTH:
        raise UsageError(f"--length must be at most {MAX_LENGTH:,}, got {length:,}")
    if num < 1:
        raise UsageError(f"-n/--num-samples must be at least 1, got {num}")
    if num > MAX_SAMPLES:
        raise UsageError(f"-n/--num-samples must be at most {MAX_SAMPLES:,}, got {num:,}")


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

    def encode_seed(self, seed: str) -> np.ndarray:
        """Seed text → ids; unknown tokens become ``<unk>`` with a warning naming them."""
        tokens = self.tokenizer.split(seed)
        if not tokens:
            raise UsageError('the seed is empty; give at least one token, e.g. --seed "The"')
        unknown = self.tokenizer.unknown_tokens(seed)
        if len(unknown) == len(set(tokens)):
            raise DataError(
                "no token of the seed is in the model's vocabulary: "
                + ", ".join(map(repr, unknown))
            )
        if unknown:
            self.warn(f"not in the vocabulary, read as <unk>: {', '.join(map(repr, unknown))}")
        return np.asarray(self.tokenizer.vocab.ids(tokens), dtype=np.int64)

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
        Each sample ends at ``<eos>``, at the ``stop`` string, or after ``length`` tokens.
        Beam search returns the ``num`` best beams of a single search.
        """
        strategy = strategy or Strategy()
        check_sizes(length, num)
        seed_ids = self.encode_seed(seed)
        if strategy.name == "beam":
            last, state = self.prefill(seed_ids, 1)
            return beam_search(
                self.lm.step,
                last,
                state,
                width=strategy.beam_width,
                length=length,
                stop_id=self.tokenizer.eos_id,
                alpha=strategy.length_penalty,
                num=num,
            )
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
            should_stop=self._stop_test(stop),
            rng=np.random.default_rng(rng_seed),
            on_token=on_token,
        )

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

    def _stop_test(self, stop: str | None) -> Callable[[int, list[int]], bool] | None:
        if not stop:
            return None
        tail = len(stop) + 1  # every token is at least one character
        return lambda _row, ids: stop in self.tokenizer.decode(ids[-tail:])

    def join(self, seed: str, ids: list[int], stop: str | None = None) -> str:
        """The seed as given followed by the decoded tokens (a space between words).

        With ``stop``, the generated text ends just before the first occurrence of it.
        """
        text = self.tokenizer.continuation(seed, ids)
        if stop and stop in text:
            text = text[: text.index(stop)]
            if self.tokenizer.level != "char":
                text = text.rstrip()
        return self.tokenizer.attach(seed, text)

    def printer(self, seed: str, write: Callable[[str], None]) -> Callable[[int, int], None]:
        """An ``on_token`` callback that writes the seed and then the text as it grows
        (streaming to a terminal), holding back the characters a later token may still
        change (a jamo-level syllable that can take a final consonant). Its ``finish(text)``
        writes the rest of the final text."""
        tok = self.tokenizer
        ids: list[int] = []
        start = tok.attach(seed, "")
        shown = [start[: len(start) - tok.unstable_tail(start)]]
        write(shown[0])

        def show(text: str) -> None:
            if text.startswith(shown[0]) and len(text) > len(shown[0]):
                write(text[len(shown[0]) :])
                shown[0] = text

        def on_token(_row: int, token: int) -> None:
            ids.append(token)
            text = tok.attach(seed, tok.continuation(seed, ids))
            show(text[: len(text) - tok.unstable_tail(text)])

        on_token.finish = show  # type: ignore[attr-defined]
        return on_token

    def generate(self, seed: str, *, length: int, num: int = 1, **kwargs: Any) -> list[str]:
        """Generate ``num`` texts, each the seed followed by up to ``length`` new tokens."""
        decoded = self.continue_ids(seed, length=length, num=num, **kwargs)
        return [self.join(seed, ids, kwargs.get("stop")) for ids in decoded.ids]


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
