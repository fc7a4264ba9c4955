"""The application's metrics in one place: every ingress replica sends what it counted to one `MetricsHub`
replica, so `GET /metrics` reports the whole application whichever replica answers.

Each ingress replica keeps a `Pending` tally of its requests and sends it at most every `FLUSH_S` seconds (and
before it answers `/metrics` itself), so the figures of other replicas are at most that far behind. A restarted
hub starts again from zero, which Prometheus reads as a counter reset.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bigearth.serving.interfaces import Metrics

log = logging.getLogger("bigearth.serve")

FLUSH_S = 1.0
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class Pending:
    """What one ingress replica counted since its last flush."""

    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    latency: dict[str, list[float]] = field(default_factory=dict)
    batch_sizes: list[int] = field(default_factory=list)

    def request(self, route: str, status: int, seconds: float) -> None:
        self.requests[(route, str(status))] += 1
        self.latency.setdefault(route, []).append(seconds)

    def __bool__(self) -> bool:
        return bool(self.requests or self.batch_sizes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": [[r, s, n] for (r, s), n in self.requests.items()],
            "latency": self.latency,
            "batch_sizes": self.batch_sizes,
        }

    def merged(self, other: Pending) -> Pending:
        """The two tallies as one (a flush that failed is kept for the next)."""
        out = Pending(self.requests + other.requests, dict(self.latency), self.batch_sizes + other.batch_sizes)
        for route, values in other.latency.items():
            out.latency[route] = out.latency.get(route, []) + values
        return out


class Tally:
    """One ingress replica's side: what it counted since its last flush (`pending`), sent to the hub every
        `FLUSH_S` seconds by a task started with the first request (`start`), and on demand (`flush`), to `hub` (the
    `Metrics` interface)."""

    def __init__(self, hub: Metrics) -> None:
        self.hub, self.pending, self.replica_id = hub, Pending(), uuid.uuid4().hex[:8]
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush_every())

    async def _flush_every(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                await self.flush()
            except Exception as e:  # the hub restarting: keep counting, send with the next flush
                log.warning("metrics not sent (%s: %s); retrying", type(e).__name__, e)

    async def flush(self) -> None:
        pending, self.pending = self.pending, Pending()
        if pending:
            try:
                await self.hub.merge(self.replica_id, pending.as_dict())
            except BaseException:  # also a cancelled /metrics request: keep the tally for the next flush
                self.pending = pending.merged(self.pending)
                raise


class MetricsHub:
    """The Prometheus registry of the application (one replica)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("bigearth_requests", "HTTP requests", ["route", "status"], registry=self.registry)
        self.latency = Histogram(
            "bigearth_request_seconds", "request latency", ["route"], registry=self.registry, buckets=LATENCY_BUCKETS
        )
        self.batch_sizes = Histogram(
            "bigearth_classifier_batch_size",
            "batch size each classifier call ran in",
            registry=self.registry,
            buckets=BATCH_BUCKETS,
        )
        self.replicas = Gauge(
            "bigearth_ingress_replicas_reporting", "ingress replicas whose counts are included", registry=self.registry
        )
        self.seen: set[str] = set()

    def merge(self, replica: str, pending: dict[str, Any]) -> None:
        self.seen.add(replica)
        self.replicas.set(len(self.seen))
        for route, status, n in pending["requests"]:
            self.requests.labels(route, status).inc(n)
        for route, values in pending["latency"].items():
            h = self.latency.labels(route)
            for v in values:
                h.observe(v)
        for b in pending["batch_sizes"]:
            self.batch_sizes.observe(b)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))
