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

**No side waits for the other while holding a lock.** Each side writes to the pipe from
a thread of its own (here :class:`_Writer`, in the child :class:`_Outbox`, which also
carries the child's counts), and each side's reader only reads, so a full pipe in one
direction cannot stop the other side from emptying the other direction. The child
ignores SIGINT and SIGTERM: Ctrl-C in a terminal, or a service manager, signals the
whole process group, and the server stops its decoding processes itself once the
streams in flight have finished.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.reduction import ForkingPickler
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
        self._writer: _Writer | None = None
        self._lock = threading.Lock()  # the live jobs and the counts; never held to send
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
        try:
            self._proc.start()  # pickles the loader
        except Exception as err:
            here.close()
            there.close()
            raise DecoderFailed(
                f"the model's loader cannot be sent to a decoding process ({err}); give a "
                "picklable one (functools.partial(load_run, path)) or decode in a thread "
                "(Settings(decode_process=False), textgen serve --decoder thread)"
            ) from None
        there.close()
        self._conn = here
        try:
            kind, *rest = self._first_message(here)
        except DecoderFailed:
            here.close()
            raise
        if kind != "ready":
            self._proc.join(5)
            here.close()
            raise DecoderFailed(rest[0])
        self._writer = _Writer(here)
        self._reader = threading.Thread(
            target=self._read, name="textgen-decoder-reader", daemon=True
        )
        self._reader.start()

    def _first_message(self, conn: Any) -> tuple:
        """The child's "ready" or ("error", message), or :class:`DecoderFailed` when it
        ends (or is still loading after :data:`START_TIMEOUT`) without one."""
        deadline = time.monotonic() + START_TIMEOUT
        while not conn.poll(0.1):
            if self._proc.is_alive() and time.monotonic() < deadline:
                continue
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(5)
                raise DecoderFailed(
                    f"the decoding process was still loading after {START_TIMEOUT:.0f} s"
                )
            break
        try:
            return conn.recv()
        except (EOFError, OSError):
            self._proc.join(5)
            raise DecoderFailed(
                f"the decoding process ended while loading (exit code {self._proc.exitcode}; "
                "a script that starts a server must do it under if __name__ == '__main__')"
            ) from None

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the child (its jobs end where they are), the writer and the reader."""
        with self._lock:
            self._stopping = True
        if self._writer is not None:
            self._writer.put(("stop",))
            self._writer.close(timeout)
        if self._proc is not None:
            self._proc.join(timeout)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(1)
        if self._reader is not None:
            self._reader.join(timeout)
        if self._conn is not None:
            self._conn.close()

    def submit(self, job: Job) -> None:
        self.submit_all([job])

    def submit_all(self, jobs: list[Job]) -> None:
        """Queue ``jobs`` together or not at all (:class:`QueueFull` as the batcher's)."""
        keys = [next(self._keys) for _ in jobs]
        # pickled here (a job that cannot be sent is the caller's error, now), and not
        # under the lock: a long prompt takes a while
        message = bytes(
            ForkingPickler.dumps(("submit", [_spec(k, j) for k, j in zip(keys, jobs, strict=True)]))
        )
        with self._lock:
            if self.waiting + len(jobs) > self.max_waiting:
                raise QueueFull
            failed = self.failed
            if failed is None:
                for key, job in zip(keys, jobs, strict=True):
                    self._live[key] = _Live(job, job.taken, job.cancelled, list(job.done))
                self._submitted += len(jobs)
                # queued under the lock, so that no news of these jobs from the reader
                # (a cancel) can reach the child before the jobs themselves
                self._writer.put_bytes(message)  # type: ignore[union-attr]
        if failed is not None:  # each fails as a failed step fails its jobs
            self.deliver([(job, Failed(failed)) for job in jobs])

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        """Jobs waiting in the child at its last count, and those sent since."""
        return self._waiting + self._submitted - self._seen

    # -- this process's side of the pipe ------------------------------------------------------
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
        """Hand one message's events over. Its counts are taken first: a client that
        reads a token may send its next request at once, and the queue's bound must not
        see the job whose token it read as still waiting (a 503 with room in the queue)."""
        _, items, rows, counts = message
        events, ended = [], []
        with self._lock:
            if counts is not None:
                self._running, self._waiting, self._seen = counts
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
        if counts is not None and self.on_counts is not None:
            self.on_counts(counts[0], self.waiting)
        if events:
            self.deliver(events)

    def _sync(self) -> None:
        """Send what the request side wrote on the live jobs since the last time (each
        job's fields read once: the event loop may write them meanwhile)."""
        news = []
        with self._lock:
            for key, live in self._live.items():
                job = live.job
                taken, cancelled, done = job.taken, job.cancelled, list(job.done)
                if taken != live.taken:
                    live.taken = taken
                    news.append((key, "taken", taken))
                if cancelled and not live.cancelled:
                    live.cancelled = True
                    news.append((key, "cancel", None))
                if done != live.done:
                    rows = [
                        r
                        for r, (a, b) in enumerate(zip(done, live.done, strict=True))
                        if a and not b
                    ]
                    live.done = done
                    news.append((key, "finish", rows))
        if news:
            self._writer.put(("jobs", news))  # type: ignore[union-attr]

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
        if self._writer is not None:
            self._writer.close(1)


class _Writer:
    """This process's writes to the child, in order, from a thread of their own: a full
    pipe blocks only this thread, never the event loop or the reader."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="textgen-decoder-writer", daemon=True)
        self.thread.start()

    def put(self, message: Any) -> None:
        self.put_bytes(bytes(ForkingPickler.dumps(message)))

    def put_bytes(self, data: bytes) -> None:
        self.queue.put(data)

    def close(self, timeout: float | None) -> None:
        """End the thread once what is queued is written (or the child is gone)."""
        self.queue.put(None)
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout)

    def _run(self) -> None:
        while (data := self.queue.get()) is not None:
            try:
                self.conn.send_bytes(data)
            except (OSError, ValueError):
                return  # the child is gone: the reader finds it and fails its jobs


# -- the child ----------------------------------------------------------------------------------
def _child(conn: Any, loader: Callable[[], Any], max_batch: int, blas_threads: int | None) -> None:
    """The decoding process: load the model, run a :class:`Batcher` on it, apply the
    parent's messages until it says stop or goes away. A failure of its own is printed
    on stderr and ends it with exit code 1 (the server then fails the jobs in flight)."""
    for sig in (signal.SIGINT, signal.SIGTERM):  # the server stops it (see the module doc)
        signal.signal(sig, signal.SIG_IGN)
    if blas_threads:
        from textgen.decoding.blas import set_blas_threads

        set_blas_threads(blas_threads)
    try:
        from textgen.text.hangul import syllable_mask

        loaded = loader()
        mask = syllable_mask(loaded.tokenizer)
    except Exception as err:  # the server reports it as the load's error
        with contextlib.suppress(OSError, ValueError):
            conn.send(("error", str(err) or type(err).__name__))
        return
    jobs: dict[int, Job] = {}
    keys: dict[int, int] = {}  # id(job) -> key
    seen = [0]  # jobs taken in (under the batcher's lock, as its counts are made)
    outbox = _Outbox(conn)

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
        on_counts=lambda running, waiting: outbox.counts((running, waiting, seen[0])),
    )
    with contextlib.suppress(OSError, ValueError):
        conn.send(("ready",))
    outbox.start()
    batcher.start()
    code = 0
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
    except Exception:
        traceback.print_exc(file=sys.stderr)
        code = 1
    finally:
        batcher.stop()
        outbox.stop()
        os._exit(code)  # no interpreter teardown: the decoding thread may still be in a step


class _Outbox:
    """The child's events and counts, sent by a thread of their own in one message per
    :data:`SEND_INTERVAL` at most (all that came since the last), in order."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.items: list[Any] = []
        self.rows: list[int] = []  # the batch rows of each step since the last message
        self.count: Any = None  # the latest (running, waiting, seen), None: unchanged
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

    def counts(self, counts: Any) -> None:
        with self.cond:
            self.count = counts
            self.cond.notify()

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
                while not (self.items or self.count or self.stopping):
                    self.cond.wait()
                if self.stopping and not (self.items or self.count):
                    return
            wait = last + SEND_INTERVAL - time.monotonic()
            if wait > 0 and not self.stopping:
                time.sleep(wait)
            with self.cond:
                message = ("events", self.items, self.rows, self.count)
                self.items, self.rows, self.count = [], [], None
            last = time.monotonic()
            try:
                self.conn.send(message)
            except (OSError, ValueError):
                return  # the parent is gone
