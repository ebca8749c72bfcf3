"""The hand-over of one request's tokens from the decoding thread to its coroutine.

The decoding thread's events reach the event loop through
:meth:`~textgen.serve.runs.Service.deliver`; there each request's :class:`Feed` turns
them into news (new text of a choice, its logprob entry, its end) without a task per job
or a queue per token, and :func:`run` hands the news to the request's coroutine in
batches. A failure of the decoding loop reaches the request as :class:`GenerationFailed`
(:class:`ShuttingDown` when the server stops it), never as a hang.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from textgen.serve.batcher import End, Failed, Tokens
from textgen.serve.responses import Admitted, logprob_entry
from textgen.serve.runs import Service

News = tuple[int, str, Any, "str | None"]  # choice index, delta, logprob entry, finish


class GenerationFailed(Exception):
    """The decoding loop failed for a job."""


class ShuttingDown(GenerationFailed):
    """The server stopped the request: its shutdown timeout is near."""


class Feed:
    """The news of one request, made on the event loop's thread as the decoding thread's
    events arrive (:meth:`handle`, called when the server drains delivered events; no task per job
    and no queue per token), and handed to the request's coroutine in batches by
    :func:`run`. A job counts as read (``job.taken``) only when its news is handed over,
    so the batcher parks a job whose client does not read."""

    def __init__(self, service: Service, admitted: Admitted) -> None:
        self.admitted = admitted
        self.news: list[News] = []
        self.steps = [0] * len(admitted.jobs)  # token events handled, not yet handed over
        self.first = [True] * len(admitted.jobs)
        self.live = len(admitted.jobs)
        self.error: str | None = None
        self.closing = False  # the server is shutting down (the error says so)
        self.ready = asyncio.Event()
        self.eos = admitted.model.tokenizer.eos_id
        self.tokens = service.metrics.tokens.labels(admitted.model.name)
        self.ttft = service.metrics.ttft.labels(admitted.model.name)

    def handle(self, k: int, event: Any) -> None:
        """Take the event of job ``k`` and wake the request's coroutine; an error while
        handling it ends the request with that error."""
        try:
            self._handle(k, event)
        except Exception as err:  # a bug here must reach the client as an error, not a hang
            self.error = f"internal error: {err}"
        self.ready.set()

    def interrupt(self, message: str) -> None:
        """End the request now with ``message`` (a 503: the server is shutting down) and
        cancel its jobs, so they leave the batch."""
        self.closing = True
        self.error = message
        self.ready.set()
        for job in self.admitted.jobs:
            job.cancel()

    def _handle(self, k: int, event: Any) -> None:
        job, choices, n = self.admitted.jobs[k], self.admitted.choices[k], self.admitted.req.n
        news = self.news
        if isinstance(event, Tokens):
            self.steps[k] += 1
            if self.first[k]:
                self.ttft.observe(time.monotonic() - job.created)
                self.first[k] = False
            count = 0
            for row, choice in enumerate(choices):
                if choice.finish is not None:
                    continue
                token = int(event.ids[row])
                if token == self.eos:
                    choice.finish = "stop"
                    news.append((k * n + row, choice.flush(), None, "stop"))
                    continue
                count += 1
                entry = (
                    logprob_entry(choice, token, event, row) if event.logprob is not None else None
                )
                if choice.push(token):
                    if entry is not None:
                        entry = (*entry, choice.offsets[-1])  # where its text starts
                    choice.finish = "stop"
                    job.finish_row(row)
                    news.append((k * n + row, choice.flush(), entry, "stop"))
                else:
                    if entry is not None:
                        entry = (*entry, choice.offsets[-1])
                    news.append((k * n + row, choice.delta(), entry, None))
            self.tokens.inc(count)
        elif isinstance(event, End):
            self.live -= 1
            if event.reason == "cancelled":
                return
            for row, choice in enumerate(choices):
                if choice.finish is None:
                    choice.finish = "length"  # a stop the last token completed makes it "stop"
                    news.append((k * n + row, choice.flush(), None, choice.finish))
        elif isinstance(event, Failed):
            self.live -= 1
            self.error = event.message


async def run(admitted: Admitted) -> AsyncIterator[list[News]]:
    """The request's news as it comes, merged over its jobs, in batches (a client that
    lags gets several steps at once): ``(choice index, delta text, logprob entry, finish
    reason or None)``; raises :class:`GenerationFailed` after the news before a failure."""
    feed = admitted.feed
    while True:
        await feed.ready.wait()
        feed.ready.clear()
        news, feed.news = feed.news, []
        for k, job in enumerate(admitted.jobs):
            job.taken += feed.steps[k]
            feed.steps[k] = 0
        if news:
            yield news
        if feed.error is not None:
            raise (ShuttingDown if feed.closing else GenerationFailed)(feed.error)
        if feed.live == 0 and not feed.news:  # news that came while the client was written
            return  # to is handed over first (``ready`` is set again for it)
