"""The server's fast paths keep its behaviour: the decoding thread's events are handed to
the requests at most once per ``DRAIN_INTERVAL`` (at once after a quiet spell), all of
them and in order; and a step where no job leaves the batch keeps the batch as it is,
while jobs that do leave at different steps leave each other's tokens unchanged."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_serve_support import char_model
from textgen.serve.batcher import Batcher, End, Job, Tokens
from textgen.serve.runs import DRAIN_INTERVAL, Service, Settings


class _Loop:
    """Records what a decoding thread asks the event loop to run, instead of running it."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def call_soon_threadsafe(self, fn: Any, *args: Any) -> None:
        self.calls.append((fn, *args))

    def call_later(self, delay: float, fn: Any) -> None:  # only passed along, never called
        raise AssertionError("call_later must run on the loop's thread")


class _Feed:
    def __init__(self) -> None:
        self.got: list[tuple[int, Any]] = []

    def handle(self, k: int, event: Any) -> None:
        self.got.append((k, event))


def _job(feed: _Feed, index: int) -> Job:
    job = Job(np.array([1]), 1, 10, None, np.random.default_rng(0), None)
    job.feed = feed  # type: ignore[attr-defined]
    job.index = index  # type: ignore[attr-defined]
    return job


def test_a_drain_after_a_quiet_spell_is_at_once_and_the_next_waits_for_the_interval() -> None:
    service = Service({}, Settings())
    loop = _Loop()
    service.loop = loop  # type: ignore[assignment]
    feed = _Feed()
    jobs = [_job(feed, k) for k in range(3)]
    service.deliver([(jobs[0], Tokens(np.array([5])))])
    assert loop.calls == [(service._drain,)]  # nothing drained for long: at once
    service.deliver([(jobs[1], Tokens(np.array([6])))])  # a drain is pending: nothing more
    assert len(loop.calls) == 1
    service._drain()
    assert [k for k, _ in feed.got] == [0, 1]
    service.deliver([(jobs[2], End("length"))])  # just drained: the next drain waits
    assert len(loop.calls) == 2
    fn, delay, target = loop.calls[1]
    assert fn == loop.call_later and target == service._drain
    assert 0 < delay <= DRAIN_INTERVAL
    service._drain()
    assert [k for k, _ in feed.got] == [0, 1, 2]
    assert isinstance(feed.got[2][1], End)


def test_events_of_many_steps_reach_their_requests_all_and_in_order() -> None:
    service = Service({}, Settings())
    loop = _Loop()
    service.loop = loop  # type: ignore[assignment]
    feeds = [_Feed() for _ in range(4)]
    jobs = [_job(feed, 0) for feed in feeds]
    drains = 0
    for step in range(50):
        service.deliver([(job, Tokens(np.array([step]))) for job in jobs])
        if step % 7 == 6:  # the loop gets to run now and then
            service._drain()
            drains += 1
    service._drain()
    assert len(loop.calls) == drains + 1  # one scheduled callback per drain
    for feed in feeds:
        assert [int(event.ids[0]) for _, event in feed.got] == list(range(50))


def _run_batch(lm: Any, specs: list[tuple[int, int, int]]) -> tuple[list[list[int]], int]:
    """Greedy jobs (seed id, n, max_tokens) decoded together by the batcher's step; each
    job's tokens per row, and how many steps rebuilt the batch's service."""
    out: dict[int, list[list[int]]] = {}
    batcher = Batcher(lm, lambda events: None, max_batch=64)
    jobs = []
    for seed, n, length in specs:
        job = Job(np.array([seed, seed + 1]), n, length, None, np.random.default_rng(0), None)
        out[id(job)] = [[] for _ in range(n)]
        jobs.append(job)
        batcher.submit(job)

    def deliver(events: list) -> None:
        for job, event in events:
            if isinstance(event, Tokens):
                for row, token in enumerate(event.ids):
                    out[id(job)][row].append(int(token))

    batcher.deliver = deliver
    rebuilt = [0]
    leave = batcher._leave

    def counted_leave() -> None:
        before = batcher._state
        leave()
        if batcher._running and batcher._state is not before:
            rebuilt[0] += 1

    batcher._leave = counted_leave  # type: ignore[method-assign]
    while batcher.running or batcher.waiting:
        with batcher._cond:
            batcher._admit()
        batcher._step()
        for job in batcher._running:
            job.taken = job.sent  # a client that keeps up
    return [out[id(job)] for job in jobs], rebuilt[0]


def test_a_step_where_no_job_leaves_keeps_the_batch_state() -> None:
    lm, _ = char_model()
    # all four end at the same step: until then nobody leaves and the service is kept as
    # the step made it; once all end, no batch is left to rebuild
    _tokens, rebuilt = _run_batch(lm, [(3, 1, 12), (4, 2, 12), (5, 1, 12), (6, 1, 12)])
    assert rebuilt == 0
    _tokens, rebuilt = _run_batch(lm, [(3, 1, 5), (4, 2, 12), (7, 1, 9)])
    assert rebuilt == 2  # rebuilt once at each step where a job leaves, and only then


@settings(max_examples=15, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(2, 20), st.integers(1, 3), st.integers(1, 25)),
        min_size=1,
        max_size=6,
    )
)
def test_jobs_leaving_at_different_steps_get_the_tokens_they_get_alone(specs: list) -> None:
    lm, _ = char_model()
    together, _ = _run_batch(lm, specs)
    for spec, rows in zip(specs, together, strict=True):
        alone, _ = _run_batch(lm, [spec])
        assert rows == alone[0]
        assert all(len(row) == spec[2] for row in rows)
