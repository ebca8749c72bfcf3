"""Continuous batching: one decoding thread per served run steps every running request
together, one token per request per step.

A request (a :class:`Job`: one prompt, ``n`` choices) waits in a bounded queue, is
admitted when the batch has room for its ``n`` rows, has its seed consumed in chunks of
at most :data:`PREFILL_CHUNK` tokens (one chunk per job per step, the chunks of equal
length fed as one batched product), and then joins the running batch at the next step.
Each step feeds the last token of every running row through one batched
:meth:`NumpyLM.step`; each job then picks its own next tokens from its rows of the logits
with its own settings and its own random generator, so its output does not depend on
the other requests beside it. A job leaves the batch when all its rows are done (``<eos>``,
a stop string the request side saw, or ``max_tokens``) or when it is cancelled (its
client went away); its rows are dropped before the next step.

The picks mirror :func:`textgen.decoding.sampling.decode`, which ``textgen generate``
runs: the seed is prefilled for one row, greedy is the argmax, sampling calls the
:func:`~textgen.decoding.sampling.sampler` pick on the job's ``n`` rows with a generator
seeded by the request's ``seed``, and a row that is done keeps being stepped until its
job leaves, as ``decode`` keeps its batch. At the jamo level a job carries the model's
:class:`~textgen.text.hangul.SyllableMask` and its rows' states (from its seed's last ids),
and picks from its rows with the tokens that may not come next at ``-inf``, its last token
(at ``max_tokens``) with the mask's final rows, as ``decode`` does; log-probabilities stay
the model's own. Results go to the request side through
``deliver(job, event)``, called on the event loop's thread
(``loop.call_soon_threadsafe``), one call per step for all jobs.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from textgen.decoding.numpy_lm import NumpyLM
from textgen.decoding.sampling import Pick
from textgen.text.hangul import SyllableMask

PREFILL_CHUNK = 64  # seed tokens one job feeds per step, so running streams keep moving
PREFILL_BUDGET = 1024  # seed tokens fed per step across all jobs, at most
MAX_BACKLOG = 256  # steps a job may be ahead of its client before it is parked


class QueueFull(Exception):
    """The waiting queue is full; the request should be retried later (503)."""


@dataclass(eq=False)
class Job:
    """One prompt's generation: ``n`` rows decoded together with one random generator."""

    seed_ids: np.ndarray
    n: int
    max_tokens: int
    pick: Pick | None  # None: greedy (argmax)
    rng: np.random.Generator
    stop_id: int | None
    logprobs: int | None = None  # top alternatives per token (0: only the chosen one's)
    created: float = field(default_factory=time.monotonic)
    mask: SyllableMask | None = None  # the jamo level's well-formed-syllable mask
    mask_states: np.ndarray | None = field(init=False, default=None)  # (n,), with a mask
    done: list[bool] = field(init=False)
    cancelled: bool = False
    produced: int = 0
    sent: int = 0  # token events delivered (written by the decoding thread only)
    taken: int = 0  # token events read by the request side (written by it only)
    # prefill progress, owned by the decoding thread
    _fed: int = 0
    _state: Any = None
    _logits: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.done = [False] * self.n
        if self.mask is not None:
            self.mask_states = self.mask.starts(self.seed_ids, self.n)

    def cancel(self) -> None:
        """Leave the batch at the next step (the client went away or the request ended)."""
        self.cancelled = True

    @property
    def backlog(self) -> int:
        """Token events delivered and not yet read: how far ahead of its client it is."""
        return self.sent - self.taken

    def finish_row(self, row: int) -> None:
        """Row ``row`` needs no more tokens (a stop string ended it)."""
        self.done[row] = True


@dataclass
class Tokens:
    """One step's tokens for a job: ``ids`` (n,), and with logprobs requested, the chosen
    tokens' log-probabilities (n,) and the top alternatives (n, k) ids and values."""

    ids: np.ndarray
    logprob: np.ndarray | None = None
    top_ids: np.ndarray | None = None
    top_logprob: np.ndarray | None = None


@dataclass
class End:
    """The job has left the batch: ``reason`` is ``length``, ``done`` or ``cancelled``."""

    reason: str


@dataclass
class Failed:
    """The decoding loop failed for this job (sent as an error event mid-stream)."""

    message: str


Deliver = Callable[[list[tuple[Job, Any]]], None]


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


class Batcher:
    """The decoding loop of one model; :meth:`submit` jobs from any thread."""

    def __init__(
        self,
        lm: NumpyLM,
        deliver: Deliver,
        *,
        max_batch: int = 64,
        max_waiting: int = 256,
        on_step: Callable[[int], None] | None = None,
        on_counts: Callable[[int, int], None] | None = None,
    ) -> None:
        self.lm = lm
        self.deliver = deliver
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.on_step = on_step  # batch rows of each decoding step (metrics)
        self.on_counts = on_counts  # (running jobs, waiting jobs) when they change
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._prefilling: list[Job] = []
        self._running: list[Job] = []
        self._parked: list[Job] = []  # ahead of their clients: state kept, not stepped
        self._rows = 0  # rows of the admitted jobs (prefilling and running)
        self._stopping = False
        self._logits: np.ndarray | None = None  # (rows, vocab) of the running jobs, in order
        self._state: Any = None
        self._thread = threading.Thread(target=self._loop, name="textgen-batcher", daemon=True)
        self.steps = 0

    # -- the request side ------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        """Queue ``job``; raises :class:`QueueFull` when ``max_waiting`` jobs already wait."""
        self.submit_all([job])

    def submit_all(self, jobs: list[Job]) -> None:
        """Queue ``jobs`` (one request's prompts) together or not at all: raises
        :class:`QueueFull` when they would take the queue over ``max_waiting`` jobs."""
        with self._cond:
            if len(self._waiting) + len(jobs) > self.max_waiting:
                raise QueueFull
            self._waiting.extend(jobs)
            self._counts()
            self._cond.notify_all()

    @property
    def running(self) -> int:
        return len(self._running) + len(self._prefilling) + len(self._parked)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _counts(self) -> None:
        if self.on_counts is not None:
            self.on_counts(self.running, len(self._waiting))

    # -- the decoding thread -----------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                self._drop_cancelled_waiting()
                while not (self._stopping or self._waiting or self._prefilling or self._running):
                    if self._parked:
                        break
                    self._cond.wait()
                if self._stopping:
                    return
                self._admit()
            self._unpark()
            if self._parked and not (self._running or self._prefilling):
                time.sleep(0.002)  # only jobs ahead of their clients: let the clients read
                continue
            try:
                self._step()
            except Exception as err:
                jobs = self._running + self._prefilling + self._parked
                self.deliver([(job, Failed(f"decoding failed: {err}")) for job in jobs])
                with self._cond:
                    self._running, self._prefilling, self._parked, self._rows = [], [], [], 0
                    self._logits = self._state = None
                    self._counts()

    def _drop_cancelled_waiting(self) -> None:
        if any(job.cancelled for job in self._waiting):
            kept = [job for job in self._waiting if not job.cancelled]
            gone = [job for job in self._waiting if job.cancelled]
            self._waiting = deque(kept)
            self.deliver([(job, End("cancelled")) for job in gone])
            self._counts()

    def _admit(self) -> None:
        """Move waiting jobs into prefill while the batch has rows for them (in order)."""
        changed = False
        while self._waiting and self._rows + self._waiting[0].n <= self.max_batch:
            job = self._waiting.popleft()
            self._prefilling.append(job)
            self._rows += job.n
            changed = True
        if changed:
            self._counts()

    def _step(self) -> None:
        self._prefill()
        if not self._running:
            return
        events = self._pick()
        self.deliver(events)
        self._leave()
        if self._running:
            ids = np.concatenate([job._next for job in self._running])  # type: ignore[attr-defined]
            if self.on_step is not None:
                self.on_step(len(ids))
            self._logits, self._state = self.lm.step(ids, self._state)
            self.steps += 1

    def _prefill(self) -> None:
        """Feed one chunk of each prefilling job's seed; jobs whose seed is all fed join."""
        if not self._prefilling:
            return
        budget = PREFILL_BUDGET
        by_size: dict[int, list[Job]] = {}
        for job in self._prefilling:
            if job.cancelled:
                continue
            size = min(PREFILL_CHUNK, len(job.seed_ids) - job._fed)
            if size > budget:
                break
            budget -= size
            by_size.setdefault(size, []).append(job)
        for size, jobs in by_size.items():
            # jobs that start together share one product; the others go one by one
            fresh = [job for job in jobs if job._state is None]
            going = [job for job in jobs if job._state is not None]
            if len(fresh) > 1:
                ids = np.stack([job.seed_ids[:size] for job in fresh])
                logits, state = self.lm.run(ids, None)
                for k, job in enumerate(fresh):
                    job._state = [tuple(part[k : k + 1] for part in layer) for layer in state]
                    job._logits = logits[k : k + 1, -1]
                    job._fed = size
                fresh = []
            for job in fresh + going:
                chunk = job.seed_ids[job._fed : job._fed + size][None]
                logits, job._state = self.lm.run(chunk, job._state)
                job._logits = logits[:, -1]
                job._fed += size
        joined = [j for j in self._prefilling if j.cancelled or j._fed >= len(j.seed_ids)]
        if not joined:
            return
        for job in joined:
            self._prefilling.remove(job)
            if job.cancelled:
                self._rows -= job.n
                self.deliver([(job, End("cancelled"))])
                continue
            rows = np.zeros(job.n, dtype=np.int64)
            state = [tuple(part[rows] for part in layer) for layer in job._state]
            logits = job._logits[rows]
            job._state = job._logits = None
            self._join(job, logits, state)
        with self._cond:
            self._counts()

    def _join(self, job: Job, logits: np.ndarray, state: Any) -> None:
        """Append a job's rows (their logits and state) to the running batch."""
        if self._running:
            self._logits = np.concatenate([self._logits, logits])
            self._state = [
                tuple(np.concatenate([a, b]) for a, b in zip(old, new, strict=True))
                for old, new in zip(self._state, state, strict=True)
            ]
        else:
            self._logits, self._state = logits, state
        self._running.append(job)

    def _unpark(self) -> None:
        """Parked jobs whose clients have caught up (or left) join again; the token they
        picked before parking is fed at the next step, and they pick after it."""
        if not self._parked:
            return
        back = [j for j in self._parked if j.cancelled or j.backlog <= MAX_BACKLOG // 2]
        for job in back:
            self._parked.remove(job)
            state, job._state = job._state, None
            logits = np.zeros((job.n, self.lm.vocab_size), np.float32)  # not used
            job._skip_pick = True  # type: ignore[attr-defined]
            self._join(job, logits, state)

    def _pick(self) -> list[tuple[Job, Any]]:
        """Each running job's next tokens from its rows of the logits."""
        events: list[tuple[Job, Any]] = []
        start = 0
        logits = self._logits
        # one argmax over every row serves all greedy jobs without a mask (each row's
        # argmax is its own); a masked job picks from its own masked rows
        plain = any(j.pick is None and j.mask is None for j in self._running)
        greedy = np.argmax(logits, axis=-1) if plain else None
        for job in self._running:
            rows = logits[start : start + job.n]
            start += job.n
            if getattr(job, "_skip_pick", False):  # back from parking: feed its token first
                job._skip_pick = False  # type: ignore[attr-defined]
                continue
            job.sent += 1
            if job.mask is not None:
                final = job.produced == job.max_tokens - 1
                allowed = job.mask.apply(rows, job.mask_states, final)  # type: ignore[arg-type]
                if job.pick is None:
                    ids = np.argmax(allowed, axis=-1)
                else:
                    ids = np.asarray(job.pick(allowed, job.rng), dtype=np.int64)
                job.mask_states = job.mask.advance(job.mask_states, ids)  # type: ignore[arg-type]
            elif job.pick is None:
                ids = greedy[start - job.n : start]  # type: ignore[index]
            else:
                ids = np.asarray(job.pick(rows, job.rng), dtype=np.int64)
            job._next = ids  # type: ignore[attr-defined]
            job.produced += 1
            if job.stop_id is not None:
                for row in np.flatnonzero(ids == job.stop_id):
                    job.done[row] = True
            if job.logprobs is None:
                events.append((job, Tokens(ids)))
                continue
            logp = _log_softmax(rows)
            chosen = logp[np.arange(job.n), ids]
            k = min(job.logprobs, logp.shape[-1])
            if k:
                top = np.argsort(-logp, axis=-1, kind="stable")[:, :k]
                events.append((job, Tokens(ids, chosen, top, np.take_along_axis(logp, top, -1))))
            else:
                events.append((job, Tokens(ids, chosen)))
        return events

    def _leave(self) -> None:
        """Drop the jobs that are done, cancelled or at ``max_tokens`` from the batch, and
        park those too far ahead of their clients (their rows' state kept aside).

        Most steps nobody leaves: that is found by one pass over the jobs, and the rows'
        index is built only on a step where some job does leave or park."""
        if not any(_leaving(job) for job in self._running) and not any(
            job.cancelled for job in self._parked
        ):
            return
        keep_rows: list[np.ndarray] = []
        kept: list[Job] = []
        ended: list[tuple[Job, Any]] = []
        parked: list[tuple[Job, np.ndarray]] = []
        start = 0
        for job in self._running:
            if job.cancelled:
                ended.append((job, End("cancelled")))
            elif all(job.done):
                ended.append((job, End("done")))
            elif job.produced >= job.max_tokens:
                ended.append((job, End("length")))
            elif job.backlog > MAX_BACKLOG:
                parked.append((job, np.arange(start, start + job.n)))
            else:
                kept.append(job)
                keep_rows.append(np.arange(start, start + job.n))
            start += job.n
        for job in self._parked:
            if job.cancelled:
                ended.append((job, End("cancelled")))
        self._parked = [job for job in self._parked if not job.cancelled]
        for job, rows in parked:
            job._state = [tuple(part[rows] for part in layer) for layer in self._state]
            self._parked.append(job)
        self.deliver(ended)
        with self._cond:
            self._rows -= sum(job.n for job, _ in ended)
            self._running = kept
            if kept:
                index = np.concatenate(keep_rows)
                self._state = [tuple(part[index] for part in layer) for layer in self._state]
                self._logits = self._logits[index]
            else:
                self._state = self._logits = None
            self._counts()
            self._cond.notify_all()


def _leaving(job: Job) -> bool:
    """Whether a running job leaves the batch (or is parked) after this step."""
    return (
        job.cancelled
        or job.produced >= job.max_tokens
        or job.backlog > MAX_BACKLOG
        or all(job.done)
    )
