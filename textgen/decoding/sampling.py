"""Decoding strategies over a ``next(ids, state) → (logits, state)`` callable.

Samplers never import a model: they get the logits for the next token and a function that
advances the recurrent state by one token, so every strategy is testable with fake logits
and no TensorFlow.

* :func:`decode` is the loop for token-by-token strategies. A strategy is a
  ``pick(logits, rng) → ids`` function: :func:`greedy`, or :func:`sampler` (temperature,
  top-k, top-p). The loop owns stopping: ``<eos>`` per sequence, a caller's stop test
  (e.g. a stop string), and the maximum length.
* :func:`beam_search` keeps the ``width`` best partial sequences by total log-probability
  and ranks finished ones by length-normalized log-probability.

Both take the same stop test, ``should_stop(row, ids)``, which sees the last ``lookback``
ids of a sequence (all of them when ``lookback`` is None), so that a stop string costs the
same at every step however long the text grows.

Both also take a ``mask`` (:class:`~textgen.text.hangul.SyllableMask`, at the jamo level)
and the rows' starting ``mask_states``: before each pick the tokens that may not come next
get ``-inf`` (greedy, sampling after temperature, top-k and top-p, and beam scores alike;
the last step of ``length`` uses the mask's final rows). The mask decides which tokens
can be picked, not what they are worth: the log-probabilities a result reports are the
model's own, and beams are ranked by them (the mask is not renormalized).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from textgen.text.hangul import SyllableMask

NextFn = Callable[[np.ndarray, Any], tuple[np.ndarray, Any]]
Pick = Callable[[np.ndarray, np.random.Generator], np.ndarray]
StopTest = Callable[[int, list[int]], bool]
SCORE_CHUNK = 1 << 18  # logits (floats) decode keeps before scoring them together


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def greedy(logits: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """The most likely token of each row (the tutorial's ``argmax``; ties → lowest id)."""
    return np.argmax(logits, axis=-1)


def filter_logits(logits: np.ndarray, *, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """Set to ``-inf`` every logit outside the ``top_k`` best and outside the nucleus.

    The nucleus is the smallest set of most likely tokens whose probability reaches
    ``top_p`` (the most likely token is always kept). ``top_k=0`` and ``top_p=1`` keep all.
    """
    return _filter_in_place(np.array(logits, dtype=np.float64), top_k, top_p)


def _filter_in_place(logits: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
    """:func:`filter_logits` on a float64 array of the caller's own, which it overwrites."""
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth = np.partition(logits, vocab - top_k, axis=-1)[..., vocab - top_k, None]
        logits[logits < kth] = -np.inf
    if top_p < 1.0:
        order = np.argsort(-logits, axis=-1, kind="stable")
        sorted_logp = np.take_along_axis(log_softmax(logits), order, axis=-1)
        sorted_p = np.exp(sorted_logp)
        cum = np.cumsum(sorted_p, axis=-1)
        # keep a token if the mass before it is below top_p (so the first is always kept)
        keep_sorted = (cum - sorted_p) < top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        logits[~keep] = -np.inf
    return logits


def sampler(temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Pick:
    """A ``pick`` that samples from ``softmax(logits / temperature)`` after top-k/top-p."""
    if temperature <= 0:
        raise ValueError("temperature must be > 0 (use greedy for argmax)")
    if not 0 < top_p <= 1:
        raise ValueError("top_p must be in (0, 1]")
    if top_k < 0:
        raise ValueError("top_k must be >= 0")
    return Sampler(temperature, top_k, top_p)


@dataclass(frozen=True)
class Sampler:
    """The ``pick`` of :func:`sampler` (which checks its settings): a plain object, not a
    closure, so that it can be pickled to the server's decoding process."""

    temperature: float
    top_k: int
    top_p: float

    def __call__(self, logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        # the division makes a new array, which the filter may overwrite
        scaled = _filter_in_place(
            np.asarray(logits, np.float64) / self.temperature, self.top_k, self.top_p
        )
        probs = np.exp(log_softmax(scaled))
        # inverse-CDF sampling: one uniform per row, reproducible for a seeded rng
        u = rng.random((probs.shape[0], 1))
        ids = (np.cumsum(probs, axis=-1) < u).sum(axis=-1)
        ids = np.minimum(ids, probs.shape[-1] - 1)
        # guard against rounding picking a filtered token at the very end of the CDF
        bad = probs[np.arange(len(ids)), ids] == 0
        if bad.any():
            ids[bad] = np.argmax(probs[bad], axis=-1)
        return ids


@dataclass
class Decoded:
    """Generated ids per sequence (stop token excluded) and their mean log-probability.

    The mean is per generated token, counting the stop token when one was produced (its
    probability is part of the sequence's likelihood).
    """

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
    should_stop: StopTest | None = None,
    lookback: int | None = None,
    rng: np.random.Generator | None = None,
    on_token: Callable[[int, int], None] | None = None,
    mask: SyllableMask | None = None,
    mask_states: np.ndarray | None = None,
) -> Decoded:
    """Pick up to ``length`` tokens for each row of ``logits`` (batch, vocab).

    ``logits`` are those after the seed; each picked token advances ``state`` by one step
    through ``next_fn``. A row ends at ``stop_id`` (not included in its output) or when
    ``should_stop(row, ids)`` says so (``ids``: the row's last ``lookback`` ids, or all
    of them), the token that made it say so included. ``on_token(row, id)`` is called
    for each token as it is produced, for streaming. ``mask`` (with the rows' starting
    ``mask_states``, all "other" when None) removes the tokens that may not come next.
    """
    rng = rng if rng is not None else np.random.default_rng()
    batch = logits.shape[0]
    states = _start_states(mask, mask_states, batch)
    picked = np.zeros((length, batch), dtype=np.int64)
    ends = np.full(batch, length)  # tokens kept per row (the stop token is not kept)
    live = np.ones(batch, dtype=bool)
    scores = _Scores(logits, picked)
    any_live = True
    per_row = on_token is not None or should_stop is not None
    for t in range(length):
        if mask is None:
            ids = np.asarray(pick(logits, rng), dtype=np.int64)
        else:
            ids = np.asarray(pick(mask.apply(logits, states, t == length - 1), rng), np.int64)
            states = mask.advance(states, ids)
        picked[t] = ids
        scores.add(logits, live)
        if stop_id is not None:
            hit = ids == stop_id
            if hit.any():
                stopped = live & hit
                ends[stopped] = t
                live &= ~stopped
                any_live = bool(live.any())
        if per_row:  # streaming and stop strings need a look at every row
            for row in np.flatnonzero(live):
                if on_token is not None:
                    on_token(int(row), int(ids[row]))
                start = 0 if lookback is None else max(0, t + 1 - lookback)
                tail = picked[start : t + 1, row]
                if should_stop is not None and should_stop(int(row), tail.tolist()):
                    ends[row] = t + 1
                    live[row] = False
                    any_live = bool(live.any())
        if not any_live or t == length - 1:
            break
        logits, state = next_fn(ids, state)
    out = [picked[: ends[row], row].tolist() for row in range(batch)]
    return Decoded(out, scores.means())


def _start_states(mask: SyllableMask | None, states: np.ndarray | None, rows: int) -> Any:
    """The rows' mask states before the first pick (None without a mask)."""
    if mask is None:
        return None
    if states is None:
        return np.zeros(rows, dtype=np.int64)
    states = np.asarray(states, dtype=np.int64).reshape(-1)
    return np.broadcast_to(states, (rows,)).copy() if states.size == 1 else states


class _Scores:
    """The log-probabilities of the picked tokens, summed per row while the row is live.

    The logits of up to :data:`SCORE_CHUNK` floats' worth of steps are kept and scored
    together (``logits - max``, ``exp``, ``sum``, ``log``: the same float operations per
    row as one step at a time), so a step of the decoding loop costs two copies here
    rather than half a dozen small numpy calls.
    """

    def __init__(self, logits: np.ndarray, picked: np.ndarray) -> None:
        length, batch = picked.shape
        vocab = logits.shape[-1]
        self.steps = max(1, min(length, SCORE_CHUNK // max(1, batch * vocab)))
        self.logits = np.empty((self.steps, batch, vocab), np.asarray(logits).dtype)
        self.live = np.empty((self.steps, batch), dtype=bool)
        self.held = 0  # steps kept, not yet scored
        self.done = 0  # steps scored
        self.sum = np.zeros(batch)
        self.count = np.zeros(batch)
        self.picked = picked  # (length, batch): the ids decode picks, filled step by step

    def add(self, logits: np.ndarray, live: np.ndarray) -> None:
        if self.held == self.steps or np.asarray(logits).dtype != self.logits.dtype:
            self._flush()
            if np.asarray(logits).dtype != self.logits.dtype:
                self.logits = np.empty_like(self.logits, dtype=np.asarray(logits).dtype)
        self.logits[self.held] = logits
        self.live[self.held] = live
        self.held += 1

    def _flush(self) -> None:
        if not self.held:
            return
        n, start = self.held, self.done
        logits, live = self.logits[:n], self.live[:n]
        ids = self.picked[start : start + n]
        shifted = logits - logits.max(axis=-1, keepdims=True)
        lse = np.log(np.exp(shifted).sum(axis=-1))
        logp = np.take_along_axis(shifted, ids[..., None], axis=-1)[..., 0] - lse
        # summed in step order, as one step at a time would: accumulate is sequential
        terms = np.concatenate([self.sum[None], np.where(live, logp, 0.0)])
        self.sum = np.add.accumulate(terms, axis=0)[-1]
        self.count += live.sum(axis=0)
        self.done += n
        self.held = 0

    def means(self) -> list[float]:
        """Per row: the mean log-probability of its scored tokens (the stop token counts)."""
        self._flush()
        return (self.sum / np.maximum(self.count, 1)).tolist()


def take_rows(state: Any, rows: np.ndarray) -> Any:
    """Select batch rows of a state made of numpy arrays in nested lists/tuples."""
    if isinstance(state, np.ndarray):
        return state[rows]
    if isinstance(state, list | tuple):
        return type(state)(take_rows(s, rows) for s in state)
    return state


def beam_search(
    next_fn: NextFn,
    logits: np.ndarray,
    state: Any,
    *,
    width: int,
    length: int,
    stop_id: int | None = None,
    should_stop: StopTest | None = None,
    lookback: int | None = None,
    alpha: float = 1.0,
    num: int = 1,
    reorder: Callable[[Any, np.ndarray], Any] = take_rows,
    mask: SyllableMask | None = None,
    mask_states: np.ndarray | None = None,
) -> Decoded:
    """The ``num`` best continuations of one seed found by beam search (``num <= width``:
    a search of width ``width`` keeps no more sequences than that).

    ``logits`` (1, vocab) and ``state`` (batch 1) are those after the seed. A sequence is
    finished when it picks ``stop_id`` (not kept in its ids), when ``should_stop(row,
    ids)`` says so of its last ``lookback`` ids (the token kept, as in :func:`decode`),
    or at ``length``. Finished sequences are ranked by their total log-probability
    divided by ``len ** alpha`` (``alpha=0``: raw sum, 1: mean per token), with the stop
    token counted in both; partial sequences compete on raw sums.

    The beams are kept as back-pointers, one array per step, so a step costs the same
    however long the beams are; a sequence's ids are read back only when it is needed.
    ``mask`` (from the seed's ``mask_states``) sets the scores of the tokens that may not
    come next to ``-inf``; a candidate at ``-inf`` is never kept.
    """
    if width < 1 or num < 1:
        raise ValueError("beam width and num must be >= 1")
    if num > width:
        raise ValueError(f"num ({num}) must be <= the beam width ({width})")
    tokens: list[np.ndarray] = []  # tokens[t][j]: the last token of beam j after step t
    parents: list[np.ndarray] = []  # parents[t][j]: the beam of step t - 1 it extends
    # finished: (normalized, total logp, n, (step, beam)) with (step, beam) naming the ids
    finished: list[tuple[float, float, int, tuple[int, int]]] = []
    scores = np.zeros(1)
    state = reorder(state, np.zeros(1, dtype=np.int64))
    states = _start_states(mask, mask_states, 1)

    def ids_of(step: int, beam: int, most: int | None = None) -> list[int]:
        out: list[int] = []
        while step >= 0 and (most is None or len(out) < most):
            out.append(int(tokens[step][beam]))
            beam = int(parents[step][beam])
            step -= 1
        return out[::-1]

    def tail(step: int, beam: int) -> list[int]:  # what should_stop sees, less the new token
        return ids_of(step, beam, None if lookback is None else max(lookback - 1, 0))

    def normalized(total: float, n: int) -> float:
        return total / max(n, 1) ** alpha

    for t in range(length):
        cand = scores[:, None] + log_softmax(logits)  # (beams, vocab)
        if mask is not None:
            cand += mask.rows(states, t == length - 1)
        flat = np.argsort(-cand, axis=None, kind="stable")[: 2 * width]
        rows, picks = np.unravel_index(flat, cand.shape)
        keep_rows: list[int] = []
        keep_tokens: list[int] = []
        keep_scores: list[float] = []
        stopped: list[tuple[int, int, float]] = []  # (row, token, total): ended by should_stop
        for row, token in zip(rows.tolist(), picks.tolist(), strict=True):
            total = float(cand[row, token])
            if total == -np.inf:  # masked: so are all after it (they are sorted)
                break
            if stop_id is not None and token == stop_id:
                finished.append((normalized(total, t + 1), total, t + 1, (t - 1, row)))
            elif should_stop is not None and should_stop(row, [*tail(t - 1, row), token]):
                stopped.append((row, token, total))
            elif len(keep_rows) < width:
                keep_rows.append(row)
                keep_tokens.append(token)
                keep_scores.append(total)
        # this step's beams: the live ones first (the next step's rows), then the stopped
        tokens.append(np.asarray(keep_tokens + [tok for _, tok, _ in stopped], np.int64))
        parents.append(np.asarray(keep_rows + [row for row, _, _ in stopped], np.int64))
        for j, (_, _, total) in enumerate(stopped, start=len(keep_rows)):
            finished.append((normalized(total, t + 1), total, t + 1, (t, j)))
        if t == length - 1 or not keep_rows:
            for j, total in enumerate(keep_scores):
                finished.append((normalized(total, t + 1), total, t + 1, (t, j)))
            break
        # stop once no live beam can still beat the num-th best finished one; only the
        # num best finished ones can be returned, so the rest go (a step stays O(width))
        finished.sort(key=lambda f: -f[0])
        del finished[num:]
        if len(finished) >= num and alpha == 0 and max(keep_scores) <= finished[num - 1][0]:
            break
        scores = np.asarray(keep_scores)
        state = reorder(state, np.asarray(keep_rows))
        if mask is not None:
            states = mask.advance(states[keep_rows], np.asarray(keep_tokens))
        logits, state = next_fn(np.asarray(keep_tokens), state)
    finished.sort(key=lambda f: -f[0])
    best = finished[:num]
    return Decoded([ids_of(*f[3]) for f in best], [f[1] / f[2] for f in best])
