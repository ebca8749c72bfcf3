"""The models a server serves and what its routes share: loading a run, the decoding loop
of each model, and the hand-over of the decoding threads' events to the event loop.

:class:`Service` is the one record the routes read (settings, metrics, the models,
whether they are loaded); it loads the models in a background thread (:meth:`~Service.load`)
and :meth:`~Service.deliver` takes the events of the decoding threads to the requests'
:class:`~textgen.serve.feed.Feed` objects on the event loop. Nothing here speaks HTTP except
the one 503 a route raises while the models load (:meth:`~Service.check_ready`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from textgen.serve.api import ApiError
from textgen.serve.batcher import Batcher, Job
from textgen.serve.metrics import Metrics
from textgen.serve.worker import DecoderFailed, DecodingProcess

RETRY_AFTER = "1"  # the Retry-After of every 503 the server answers
# the least time between two hand-overs of the decoding threads' events to the requests:
# each hand-over wakes every stream and writes to its socket once (a loopback send costs
# about as much CPU as a token's decoding step at 32 streams), so a stream gets the tokens
# of the steps of this interval in one write (each token still its own event)
DRAIN_INTERVAL = 0.004


@dataclass
class Settings:
    """What ``textgen serve``'s options set."""

    api_key: str | None = None
    max_tokens_limit: int = 4096
    max_batch: int = 64
    max_waiting: int = 256
    max_body_bytes: int = 1 << 20
    cors_origins: list[str] = field(default_factory=list)
    # each model decodes in a process of its own (textgen.serve.worker), not in a thread
    # of the server's; its loader must then be picklable
    decode_process: bool = False
    blas_threads: int = 0  # OpenBLAS threads of a decoding process (0: its default)


@dataclass
class Loaded:
    """A model ready to serve: the numpy LM, its tokenizer and what /v1/models shows."""

    lm: Any
    tokenizer: Any
    info: dict[str, Any]


def load_run(path: Path, native: bool = False) -> Loaded:
    """Load a run directory (checksums checked, no TensorFlow); ``native``: decode with
    the compiled step (:meth:`textgen.decoding.numpy_lm.NumpyLM.use_native`) where the
    model has one, compiled here, before the server reports itself ready."""
    from textgen.rundir import load_bundle

    if native:
        # numba's OpenMP threads, started by the first compiled step below, sleep between
        # steps instead of spinning: a spinning one takes a core from the event loop and
        # the clients (at 32 streams on 2 cores the server spent 128 against 94 CPU µs a
        # token); a policy already set is kept
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    bundle = load_bundle(path)
    lm = bundle.lm
    if native and not lm.use_native():  # compiled (or loaded from the cache) here
        print(f"{path.name}: no compiled step for this model (its cell, its layers' widths,"
              " its vocabulary or no numba); it decodes on numpy", file=sys.stderr)  # fmt: skip
    return Loaded(lm, bundle.tokenizer, describe(lm, bundle.tokenizer))


def describe(lm: Any, tokenizer: Any) -> dict[str, Any]:
    """The model's sizes, for /v1/models."""
    params = sum(int(a.size) for key, a in lm.arrays().items() if key != "cell")
    return {
        "level": tokenizer.level,
        "cell": lm.cell,
        "layers": len(lm.layers),
        "units": lm.layers[0].units,
        "vocab_size": lm.vocab_size,
        "parameters": params,
        "step": "native" if getattr(lm, "native", False) else "numpy",
    }


class Served:
    """One model being served: its generator (seed encoding) and its decoding loop."""

    def __init__(
        self,
        name: str,
        loaded: Loaded,
        settings: Settings,
        app: Service,
        loader: Callable[[], Loaded] | None = None,
    ) -> None:
        from textgen.decoding.generate import Generator

        self.name = name
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.generator = Generator(loaded.lm, loaded.tokenizer, warn=lambda _m: None)
        self.created = int(time.time())
        metrics = app.metrics
        options: dict[str, Any] = {
            "max_batch": settings.max_batch,
            "max_waiting": settings.max_waiting,
            "on_step": metrics.batch.labels(name).observe,
            "on_counts": lambda running, waiting: (
                metrics.running.labels(name).set(running),
                metrics.waiting.labels(name).set(waiting),
            ),
        }
        self.batcher: Batcher | DecodingProcess
        if settings.decode_process and loader is not None:
            self.batcher = DecodingProcess(
                loader,
                loaded.lm,
                app.deliver,
                blas_threads=settings.blas_threads or None,
                **options,
            )
        else:
            self.batcher = Batcher(loaded.lm, app.deliver, **options)
        self.beams = asyncio.Semaphore(1)  # beam searches run one at a time, off the batch
        self.beams_waiting = 0


class Listener(Protocol):
    """What the server asks of a request in flight on the batch (its
    :class:`~textgen.serve.feed.Feed`, which imports this module)."""

    def handle(self, k: int, event: Any) -> None:
        """Take the event of the request's job ``k`` (on the event loop's thread)."""

    def interrupt(self, message: str) -> None:
        """End the request now with the error ``message`` and cancel its jobs."""


class Service:
    """The running service, everything the routes share: settings, metrics, the served
    models, the event loop, the requests in flight."""

    def __init__(self, models: dict[str, Callable[[], Loaded]], settings: Settings) -> None:
        self.loaders = models
        self.settings = settings
        self.metrics = Metrics()
        self.models: dict[str, Served] = {}
        self.ready = False
        self.load_error: str | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.on_load_error: Callable[[str], None] | None = None
        self._pending: list[tuple[Job, Any]] = []
        self._pending_lock = threading.Lock()
        self._scheduled = False
        self._drained = 0.0  # when the events were last handed over (time.monotonic)
        self.feeds: set[Listener] = set()  # the requests in flight (on the batch)

    def interrupt(self) -> None:
        """End every request in flight now (the shutdown timeout is near): each gets a 503
        (a stream, an error event and ``[DONE]``) and its jobs leave the batch."""
        for feed in list(self.feeds):
            feed.interrupt("the server is shutting down; retry")

    def deliver(self, events: list[tuple[Job, Any]]) -> None:
        """Called by a decoding thread: hand each job's event to its request (in order).

        Events wait in one list that a single callback on the event loop drains; a new
        callback is scheduled only when none is pending, so a model that steps faster
        than the loop runs does not flood it with one callback per step. A drain comes at
        least :data:`DRAIN_INTERVAL` after the one before (at once when that is longer
        ago), so the streams of a busy server are written to once per interval, not once
        per step."""
        if self.loop is None or not events:
            return
        with self._pending_lock:
            self._pending.extend(events)
            if self._scheduled:
                return
            self._scheduled = True
        wait = self._drained + DRAIN_INTERVAL - time.monotonic()
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
            if wait <= 0:
                self.loop.call_soon_threadsafe(self._drain)
            else:
                self.loop.call_soon_threadsafe(self.loop.call_later, wait, self._drain)

    def _drain(self) -> None:
        self._drained = time.monotonic()
        with self._pending_lock:
            events, self._pending = self._pending, []
            self._scheduled = False
        for job, event in events:
            feed = getattr(job, "feed", None)
            if feed is not None:
                feed.handle(job.index, event)  # type: ignore[attr-defined]

    def load(self) -> None:
        """Load every model, then start their decoding loops (in a background thread)."""
        from textgen.errors import TextgenError

        started: list[Served] = []
        try:
            served = {}
            for name, loader in self.loaders.items():
                served[name] = Served(name, loader(), self.settings, self, loader)
            for model in served.values():
                model.batcher.start()  # a decoding process loads its own copy here
                started.append(model)
        except (TextgenError, OSError, ValueError, KeyError, DecoderFailed) as err:
            for model in started:
                model.batcher.stop()
            self.load_error = str(err)
            if self.on_load_error is not None:
                self.on_load_error(self.load_error)
            return
        self.models = served
        self.ready = True

    def stop(self) -> None:
        """Stop every model's decoding loop (the server is shutting down)."""
        for model in self.models.values():
            model.batcher.stop()

    def decoder_failure(self) -> str | None:
        """Why a model's decoding process is gone (``model: message``), None while every
        model can decode (a decoding thread never goes away)."""
        for model in self.models.values():
            failed = getattr(model.batcher, "failed", None)
            if failed is not None:
                return f"{model.name}: {failed}"
        return None

    def check_ready(self) -> None:
        """A 503 (``loading``, or the load's error) until the models are loaded."""
        if not self.ready:
            message = "the models are still loading" if self.load_error is None else self.load_error
            raise ApiError(503, message, code="loading", headers={"Retry-After": RETRY_AFTER})
