"""Decoding loops over a ``next(ids, state) → (logits, state)`` callable.

Samplers never import a model: they get the logits for the next token and a function that
advances the recurrent state by one token, so every strategy is testable with fake logits
and no TensorFlow. A strategy is a ``pick(logits, rng) → ids`` function; the loop owns
stopping (``<eos>`` per sequence, and the maximum length).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

NextFn = Callable[[np.ndarray, Any], tuple[np.ndarray, Any]]
Pick = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def greedy(logits: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """The most likely token of each row (the tutorial's ``argmax``; ties → lowest id)."""
    return np.argmax(logits, axis=-1)


@dataclass
class Decoded:
    """Generated ids per sequence (stop token excluded) and their mean log-probability."""

    ids: list[list[int]]
    mean_logprob: list[float]


def decode(
    next_fn: NextFn,
    logits: np.ndarray,
    state: Any,
    *,
    length: int,
    pick: Pick = greedy,
    stop_id: int | None = None,
    rng: np.random.Generator | None = None,
    on_token: Callable[[int, int], None] | None = None,
) -> Decoded:
    """Pick up to ``length`` tokens for each row of ``logits`` (batch, vocab).

    ``logits`` are those after the seed; each picked token advances ``state`` by one step
    through ``next_fn``. A row ends at ``stop_id`` (not included in its output).
    ``on_token(row, id)`` is called for each token as it is produced, for streaming.
    """
    rng = rng if rng is not None else np.random.default_rng()
    batch = logits.shape[0]
    out: list[list[int]] = [[] for _ in range(batch)]
    logp_sum = np.zeros(batch)
    done = np.zeros(batch, dtype=bool)
    for t in range(length):
        ids = np.asarray(pick(logits, rng), dtype=np.int64)
        logp = log_softmax(logits.astype(np.float64))[np.arange(batch), ids]
        for row in np.flatnonzero(~done):
            token = int(ids[row])
            if stop_id is not None and token == stop_id:
                done[row] = True
                continue
            out[row].append(token)
            logp_sum[row] += logp[row]
            if on_token is not None:
                on_token(int(row), token)
        if done.all() or t == length - 1:
            break
        logits, state = next_fn(ids, state)
    means = [float(logp_sum[r] / len(out[r])) if out[r] else 0.0 for r in range(batch)]
    return Decoded(out, means)
