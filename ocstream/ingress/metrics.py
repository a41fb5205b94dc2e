"""Counters and gauges of the ingress, per network (exposed by :mod:`ocstream.metrics`)."""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.metrics_core import Metric

from ocstream import metrics


@dataclass
class NetworkMetrics:
    blocks_published: int = 0
    finalized_height: int = 0
    tip_height: int = 0
    errors: int = 0
    #: Errors by the step that failed: rpc, decode, chain, replay, redis, crash.
    errors_by_step: Counter[str] = field(default_factory=Counter)
    reconnects: int = 0
    decode_seconds: float = 0.0
    #: Seconds from a finalized head's notification to the XADD of that block (recent ones).
    publish_latencies: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))

    @property
    def backlog(self) -> int:
        """Finalized blocks not yet published (the catch-up backlog)."""
        return max(0, self.finalized_height - self.tip_height)


@dataclass
class IngressMetrics:
    networks: dict[str, NetworkMetrics] = field(default_factory=lambda: defaultdict(NetworkMetrics))

    def render(self) -> bytes:
        """Prometheus text exposition (:func:`ocstream.metrics.ingress_families`)."""
        return metrics.render(self._families)

    def _families(self) -> Iterator[Metric]:
        yield from metrics.ingress_families(self)
        # The process's own (a worker's /metrics has its own).
        yield from metrics.gc_families()
        yield from metrics.loop_families()
