"""The decoding loop of one served model in a process of its own.

**Why.** A decoding thread and the event loop (HTTP, the server-sent events, each token's
text) share one interpreter lock. The step lets go of it inside numpy's products and
needs it back after each; the event loop holds it for the whole hand-over of a round of
events. Measured on 2 cores at 32 streams (2x256 char LSTM, numpy step): the step's wall
time was 1.5 times its CPU time (33 against 22 µs a row) while 40% of the two cores sat
idle, so the tokens/s were set by the step waiting for the lock, not by the CPU. In a
process of its own the step has its own interpreter and never waits for the HTTP side.

**How.** :class:`DecodingProcess` has the surface of
:class:`~textgen.serve.batcher.Batcher` that the server uses (``start``, ``stop``,
``submit_all``, ``running``, ``waiting``, ``max_waiting``, ``lm``). The child loads the
run with the same loader (so it must be picklable, as ``textgen serve``'s
``partial(load_run, ...)`` is) and runs an ordinary :class:`Batcher` on its copy; its
events come back over a pipe, one message per step, and a reader thread here hands them
to ``deliver`` as the in-process batcher would. What the request side writes on a job
(``cancel()``, ``finish_row()``, ``taken``) is sent to the child by the same thread, after
each message from the child and at least every :data:`SYNC_INTERVAL` (a job ahead of its
client is parked and sends nothing until its client has read). The queue's bound is
kept here, so a full queue is still a 503 at once. If the child dies, every job in
flight fails with a message saying so, as a failed step would, and later requests fail
the same way.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from textgen.serve.batcher import Batcher, End, Failed, Job, QueueFull, Tokens

SYNC_INTERVAL = 0.005  # the longest the request side's writes on a job wait to be sent
# the least time between two messages of events from the child: a fast step (a few
# streams) would otherwise send one per step, and the server's reader thread, waking for
# each, took CPU and the interpreter lock from its event loop (the server hands events
# over every 4 ms at most anyway, runs.DRAIN_INTERVAL)
SEND_INTERVAL = 0.002
START_TIMEOUT = 600.0  # a first --native load compiles its step (about 25 s)


class DecoderFailed(Exception):
    """The decoding process could not load its model or start (its message says why)."""


@dataclass
class _Live:
    """A submitted job and what of its request-side fields the child has been told."""

    job: Job
    taken: int = 0
    cancelled: bool = False
    done: list[bool] = field(default_factory=list)


def _spec(key: int, job: Job) -> dict[str, Any]:
    """What the child needs to rebuild ``job`` (its mask is the child's own model's)."""
    return {
        "key": key,
        "seed_ids": job.seed_ids,
        "n": job.n,
        "max_tokens": job.max_tokens,
        "pick": job.pick,
        "rng": job.rng,
        "stop_id": job.stop_id,
        "logprobs": job.logprobs,
        "created": job.created,
        "mask": job.mask is not None,
    }


class DecodingProcess:
    """A :class:`Batcher` running in a child process; :meth:`submit_all` from any thread."""

    def __init__(
        self,
        loader: Callable[[], Any],
        lm: Any,
        deliver: Callable[[list[tuple[Job, Any]]], None],
        *,
        max_batch: int = 64,
        max_waiting: int = 256,
        on_step: Callable[[int], None] | None = None,
        on_counts: Callable[[int, int], None] | None = None,
        blas_threads: int | None = None,
    ) -> None:
        self.loader = loader
        self.lm = lm  # this process's copy (beam search, /v1/models), not stepped here
        self.deliver = deliver
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.on_step = on_step
        self.on_counts = on_counts
        self.blas_threads = blas_threads
        self.failed: str | None = None
        self._conn: Any = None
        self._proc: Any = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()  # the live jobs, the counts and sending
        self._live: dict[int, _Live] = {}
        self._keys = itertools.count()
        self._submitted = 0  # jobs sent to the child
        self._seen = 0  # of them, those the child had taken in at its last count
        self._running = 0
        self._waiting = 0
        self._stopping = False

    # -- as Batcher --------------------------------------------------------------------------
    def start(self) -> None:
        """Start the child and wait until its model is loaded; :class:`DecoderFailed`
        with the child's message when it cannot load or start."""
        ctx = multiprocessing.get_context("spawn")  # not fork: this process has threads
        here, there = ctx.Pipe()
        self._proc = ctx.Process(
            target=_child,
            args=(there, self.loader, self.max_batch, self.blas_threads),
            name="textgen-decoder",
            daemon=True,
        )
        self._proc.start()
        there.close()
        self._conn = here
        deadline = time.monotonic() + START_TIMEOUT
        while not here.poll(0.1):
            if not self._proc.is_alive() or time.monotonic() > deadline:
                self._proc.kill()
                raise DecoderFailed(
                    f"the decoding process ended while loading (exit code {self._proc.exitcode})"
                )
        try:
            kind, *rest = here.recv()
        except (EOFError, OSError):
            kind, rest = "error", ["the decoding process ended while loading"]
        if kind != "ready":
            self._proc.join(5)
            raise DecoderFailed(rest[0])
        self._reader = threading.Thread(
            target=self._read, name="textgen-decoder-reader", daemon=True
        )
        self._reader.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the child (its jobs end where they are) and the reader."""
        with self._lock:
            self._stopping = True
            self._send(("stop",))
        if self._proc is not None:
            self._proc.join(timeout)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(1)
        if self._reader is not None:
            self._reader.join(timeout)

    def submit(self, job: Job) -> None:
        self.submit_all([job])

    def submit_all(self, jobs: list[Job]) -> None:
        """Queue ``jobs`` together or not at all (:class:`QueueFull` as the batcher's)."""
        with self._lock:
            if self.waiting + len(jobs) > self.max_waiting:
                raise QueueFull
            if self.failed is not None:  # each fails as a failed step fails its jobs
                failed = [(job, Failed(self.failed)) for job in jobs]
            else:
                specs = []
                for job in jobs:
                    key = next(self._keys)
                    self._live[key] = _Live(job, job.taken, job.cancelled, list(job.done))
                    specs.append(_spec(key, job))
                self._submitted += len(jobs)
                self._send(("submit", specs))
                return
        self.deliver(failed)

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        """Jobs waiting in the child at its last count, and those sent since."""
        return self._waiting + self._submitted - self._seen

    # -- this process's side of the pipe ------------------------------------------------------
    def _send(self, message: Any) -> None:
        """Send to the child (under ``_lock``); a child already gone is not an error here:
        the reader finds it and fails its jobs."""
        with contextlib.suppress(OSError, ValueError):
            self._conn.send(message)

    def _read(self) -> None:
        """The reader thread: hand the child's events over, send it the jobs' news."""
        conn = self._conn
        while True:
            try:
                message = conn.recv() if conn.poll(SYNC_INTERVAL) else None
            except (EOFError, OSError):
                break
            if message is not None:
                self._take(message)
            self._sync()
        self._gone()

    def _take(self, message: tuple) -> None:
        kind = message[0]
        if kind == "events":
            _, items, rows = message
            events, ended = [], []
            with self._lock:
                for key, event in items:
                    live = self._live.get(key)
                    if live is None:
                        continue
                    if type(event) is list:
                        event = Tokens(event)  # type: ignore[arg-type]  # read by index
                    elif isinstance(event, End | Failed):
                        ended.append(key)
                    events.append((live.job, event))
                for key in ended:
                    del self._live[key]
            if self.on_step is not None:
                for count in rows:
                    self.on_step(count)
            if events:
                self.deliver(events)
        elif kind == "counts":
            self._count(*message[1:])

    def _count(self, running: int, waiting: int, seen: int) -> None:
        with self._lock:
            self._running, self._waiting, self._seen = running, waiting, seen
        if self.on_counts is not None:
            self.on_counts(running, self.waiting)

    def _sync(self) -> None:
        """Send what the request side wrote on the live jobs since the last time."""
        news = []
        with self._lock:
            for key, live in self._live.items():
                job = live.job
                if job.taken != live.taken:
                    live.taken = job.taken
                    news.append((key, "taken", job.taken))
                if job.cancelled and not live.cancelled:
                    live.cancelled = True
                    news.append((key, "cancel", None))
                if job.done != live.done:
                    rows = [
                        r
                        for r, (a, b) in enumerate(zip(job.done, live.done, strict=True))
                        if a and not b
                    ]
                    live.done = list(job.done)
                    news.append((key, "finish", rows))
            if news:
                self._send(("jobs", news))

    def _gone(self) -> None:
        """The child's pipe closed: fail every live job, unless this process stopped it."""
        if self._proc is not None:
            self._proc.join(5)
        code = None if self._proc is None else self._proc.exitcode
        with self._lock:
            if self._stopping:
                return
            self.failed = f"decoding failed: the decoding process ended (exit code {code})"
            jobs, self._live = [live.job for live in self._live.values()], {}
            self._running = self._waiting = 0
            self._seen = self._submitted
        self.deliver([(job, Failed(self.failed)) for job in jobs])
        if self.on_counts is not None:
            self.on_counts(0, 0)


# -- the child ----------------------------------------------------------------------------------
def _child(conn: Any, loader: Callable[[], Any], max_batch: int, blas_threads: int | None) -> None:
    """The decoding process: load the model, run a :class:`Batcher` on it, apply the
    parent's messages until it says stop or goes away."""
    if blas_threads:
        from textgen.decoding.blas import set_blas_threads

        set_blas_threads(blas_threads)
    send_lock = threading.Lock()

    def send(message: Any) -> None:
        with send_lock, contextlib.suppress(OSError, ValueError):
            conn.send(message)

    try:
        from textgen.text.hangul import syllable_mask

        loaded = loader()
        mask = syllable_mask(loaded.tokenizer)
    except Exception as err:  # the parent reports it as the load's error
        send(("error", str(err) or type(err).__name__))
        return
    jobs: dict[int, Job] = {}
    keys: dict[int, int] = {}  # id(job) -> key
    seen = [0]  # jobs taken in (under the batcher's lock, as its counts are made)
    outbox = _Outbox(send)

    def deliver(events: list[tuple[Job, Any]]) -> None:  # the decoding thread
        items = []
        for job, event in events:
            key = keys.get(id(job))
            if key is None:
                continue
            if type(event) is Tokens and event.logprob is None:
                event = event.ids.tolist()  # a plain list pickles in a fraction of the time
            items.append((key, event))
            if isinstance(event, End | Failed):
                jobs.pop(key, None)
                keys.pop(id(job), None)
        outbox.put(items)

    batcher = Batcher(
        loaded.lm,
        deliver,
        max_batch=max_batch,
        max_waiting=1 << 30,  # the parent keeps the bound
        on_step=outbox.step,
        # called with the batcher's lock held, whenever the counts change
        on_counts=lambda running, waiting: send(("counts", running, waiting, seen[0])),
    )
    send(("ready",))
    outbox.start()
    batcher.start()
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break  # the parent is gone
            kind = message[0]
            if kind == "stop":
                break
            if kind == "submit":
                new = []
                for spec in message[1]:
                    key = spec.pop("key")
                    job = Job(**(spec | {"mask": mask if spec["mask"] else None}))
                    jobs[key], keys[id(job)] = job, key
                    new.append(job)
                with batcher._cond:  # the counts it sends include them
                    seen[0] += len(new)
                    batcher.submit_all(new)
            elif kind == "jobs":
                for key, what, value in message[1]:
                    job = jobs.get(key)
                    if job is None:
                        continue
                    if what == "taken":
                        job.taken = value
                    elif what == "cancel":
                        job.cancel()
                    elif what == "finish":
                        for row in value:
                            job.finish_row(row)
    finally:
        batcher.stop()
        outbox.stop()
        os._exit(0)  # no interpreter teardown: the decoding thread may still be in a step


class _Outbox:
    """The child's events, sent by a thread of their own in one message per
    :data:`SEND_INTERVAL` at most (all that came since the last), in order."""

    def __init__(self, send: Callable[[Any], None]) -> None:
        self.send = send
        self.items: list[Any] = []
        self.rows: list[int] = []  # the batch rows of each step since the last message
        self.stopping = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="textgen-outbox", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def put(self, items: list[Any]) -> None:
        with self.cond:
            self.items += items
            self.cond.notify()

    def step(self, rows: int) -> None:
        with self.cond:  # the decoding thread; taken with the items
            self.rows.append(rows)

    def stop(self) -> None:
        """Send what is left, then end the thread."""
        with self.cond:
            self.stopping = True
            self.cond.notify()
        self.thread.join(5)

    def _run(self) -> None:
        last = 0.0
        while True:
            with self.cond:
                while not self.items and not self.stopping:
                    self.cond.wait()
                if self.stopping and not self.items:
                    return
            wait = last + SEND_INTERVAL - time.monotonic()
            if wait > 0 and not self.stopping:
                time.sleep(wait)
            with self.cond:
                items, self.items = self.items, []
                rows, self.rows = self.rows, []
            last = time.monotonic()
            self.send(("events", items, rows))
