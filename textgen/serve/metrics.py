"""The server's Prometheus metrics, in a registry of its own (one per app, so that two
servers in one process, as in the tests, do not share counters)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "Metrics"]

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 256)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Requests by status, tokens generated, running and waiting requests, the batch size
    of each decoding step and the time to first token."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "textgen_requests",
            "HTTP requests answered, by path and status.",
            ["path", "status"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "textgen_tokens_generated", "Tokens generated.", ["model"], registry=self.registry
        )
        self.running = Gauge(
            "textgen_requests_running",
            "Requests in the decoding batch (their seed being fed or decoding).",
            ["model"],
            registry=self.registry,
        )
        self.waiting = Gauge(
            "textgen_requests_waiting",
            "Requests waiting for room in the batch.",
            ["model"],
            registry=self.registry,
        )
        self.batch = Histogram(
            "textgen_batch_size",
            "Rows in each decoding step.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "textgen_time_to_first_token_seconds",
            "From a request's arrival to its first generated token.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
