"""Text generation from a trained model, carrying the recurrent state.

The seed is fed through the network once; every further token is one recurrent step
(:class:`~textgen.stepper.NumpyLM`), never a re-run over the growing prefix. The classic
tutorial's ``sentence_generation(model, tokenizer, current_word, n)`` keeps its meaning
and output (greedy argmax, seed followed by the generated words) on this fast path.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from textgen.errors import DataError, UsageError
from textgen.sampling import Decoded, Pick, decode, greedy
from textgen.stepper import NumpyLM
from textgen.tokenizers import Tokenizer


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
        pick: Pick = greedy,
        rng: np.random.Generator | None = None,
        on_token: Callable[[int, int], None] | None = None,
    ) -> Decoded:
        """Generate up to ``length`` ids after ``seed`` for ``num`` samples decoded as one batch."""
        if length < 1:
            raise UsageError(f"--length must be at least 1, got {length}")
        ids = np.tile(self.encode_seed(seed), (num, 1))
        logits, state = self.lm.run(ids)
        return decode(
            self.lm.step,
            logits[:, -1],
            state,
            length=length,
            pick=pick,
            stop_id=self.tokenizer.eos_id,
            rng=rng,
            on_token=on_token,
        )

    def join(self, seed: str, ids: list[int]) -> str:
        """The seed as given followed by the decoded tokens (a space between words)."""
        text = self.tokenizer.decode(ids)
        if not text:
            return seed
        sep = " " if self.tokenizer.level == "word" else ""
        return f"{seed}{sep}{text}"

    def generate(self, seed: str, *, length: int, num: int = 1, **kwargs: Any) -> list[str]:
        """Generate ``num`` texts, each the seed followed by up to ``length`` new tokens."""
        decoded = self.continue_ids(seed, length=length, num=num, **kwargs)
        return [self.join(seed, ids) for ids in decoded.ids]


def _as_numpy(model: Any) -> NumpyLM:
    if isinstance(model, NumpyLM):
        return model
    if hasattr(model, "lm") and isinstance(model.lm, NumpyLM):
        return model.lm
    from textgen.model import to_numpy

    return to_numpy(model)


def sentence_generation(model: Any, tokenizer: Tokenizer, current_word: str, n: int) -> str:
    """The tutorial's greedy decoder: ``current_word`` followed by up to ``n`` predicted tokens.

    ``model`` is a trained Keras LM, a :class:`NumpyLM` or a loaded run bundle. Stops early
    at ``<eos>`` for a model that has one. Example::

        >>> sentence_generation(model, tokenizer, "경마장에", 4)
        '경마장에 있는 말이 뛰고 있다'
    """
    return Generator(_as_numpy(model), tokenizer).generate(current_word, length=n)[0]
