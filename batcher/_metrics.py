"""Prometheus metrics of a :class:`~batcher.server.Server` (the ``metrics`` extra).

Imported only when ``metrics_port`` is set, so the server runs without prometheus-client.
The endpoint is a small HTTP responder on the server's own event loop rather than
prometheus-client's threaded server: the batcher's counters are read on the loop that
changes them, never from another thread mid-update.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from ._core import Batcher

if TYPE_CHECKING:
    from .server import ServerStatistics

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_MAX_REQUEST_HEAD = 8192
# A scraper that connects and says nothing must not hold a task for long.
_HTTP_TIMEOUT_SECONDS = 5.0


class Metrics:
    """The server's metrics registry and the HTTP endpoint that exposes it."""

    def __init__(
        self, models: Mapping[str, Batcher], statistics: Callable[[], ServerStatistics]
    ) -> None:
        # A registry of its own, not the global one: two servers in one process (tests,
        # benchmarks) must not collide on metric names.
        self.registry = CollectorRegistry(auto_describe=True)
        self._latency = Histogram(
            "batcher_request_latency_seconds",
            "Seconds from reading an infer request to having its answer ready",
            ["model"],
            registry=self.registry,
            buckets=_LATENCY_BUCKETS,
        )
        self._errors = Counter(
            "batcher_request_errors",
            "Error answers sent, by error code",
            ["model", "code"],
            registry=self.registry,
        )
        self.registry.register(_BatcherCollector(models, statistics))

    def request(self, model: str, seconds: float) -> None:
        self._latency.labels(model).observe(seconds)

    def error(self, code: str, model: str | None) -> None:
        self._errors.labels(model or "", code).inc()

    def render(self) -> bytes:
        """The exposition text of every metric."""
        data: bytes = generate_latest(self.registry)
        return data

    async def serve(self, listener: anyio.abc.Listener[anyio.abc.SocketStream]) -> None:
        """Answer ``GET /metrics`` on ``listener`` until cancelled, then close it."""
        async with listener:
            await listener.serve(self._answer)

    async def _answer(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            with anyio.move_on_after(_HTTP_TIMEOUT_SECONDS):
                try:
                    head = bytearray()
                    while b"\r\n\r\n" not in head and len(head) < _MAX_REQUEST_HEAD:
                        head += await stream.receive()
                    await stream.send(self._response(bytes(head)))
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    pass

    def _response(self, head: bytes) -> bytes:
        words = head.split(b"\r\n", 1)[0].split()
        path = words[1].split(b"?", 1)[0] if len(words) >= 2 else b""
        if words[:1] == [b"GET"] and path in (b"/metrics", b"/"):
            status, content_type, body = "200 OK", CONTENT_TYPE_LATEST, self.render()
        else:
            status, content_type, body = "404 Not Found", "text/plain", b"try GET /metrics\n"
        header = (
            f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        return header.encode("latin-1") + body


class _BatcherCollector:
    """Reads the batchers' and the server's counters at scrape time (no double counting)."""

    def __init__(
        self, models: Mapping[str, Batcher], statistics: Callable[[], ServerStatistics]
    ) -> None:
        self._models = models
        self._statistics = statistics

    def describe(self) -> list[Any]:
        return []  # unknown until collected; an empty describe keeps registration lazy

    def collect(self) -> Iterator[Any]:
        server = self._statistics()
        yield GaugeMetricFamily(
            "batcher_connections", "Client connections open", value=server.connections
        )
        yield CounterMetricFamily(
            "batcher_connections_refused",
            "Connections refused at max_connections",
            value=server.refused,
        )
        yield CounterMetricFamily("batcher_requests", "Requests read", value=server.requests)
        queue = GaugeMetricFamily(
            "batcher_queue_depth", "Samples waiting in the batcher's queue", labels=["model"]
        )
        inflight = GaugeMetricFamily(
            "batcher_inflight_samples", "Samples being computed", labels=["model"]
        )
        outcomes = CounterMetricFamily(
            "batcher_samples", "Samples by how they ended", labels=["model", "outcome"]
        )
        padded = CounterMetricFamily(
            "batcher_padded_rows", "Rows computed only as padding", labels=["model"]
        )
        chunks = HistogramMetricFamily(
            "batcher_chunk_size",
            "Compiled batch size of each inference run",
            labels=["model"],
        )
        for name, batcher in self._models.items():
            stats = batcher.statistics()
            queue.add_metric([name], stats.queue_depth)
            inflight.add_metric([name], stats.inflight_samples)
            for outcome in ("completed", "failed", "cancelled", "expired", "rejected", "invalid"):
                outcomes.add_metric([name, outcome], getattr(stats, outcome))
            padded.add_metric([name], stats.padded_rows)
            config = batcher.config
            bounds = set(
                range(1, config.largest_batch + 1)
                if isinstance(config.batch_sizes, str)
                else config.batch_sizes
            )
            buckets = []
            cumulative = 0
            for size in sorted(bounds | set(stats.chunks_per_size)):
                cumulative += stats.chunks_per_size.get(size, 0)
                buckets.append((str(size), cumulative))
            buckets.append(("+Inf", cumulative))
            total = sum(size * count for size, count in stats.chunks_per_size.items())
            chunks.add_metric([name], buckets, sum_value=total)
        yield from (queue, inflight, outcomes, padded, chunks)
