"""Counters and gauges of the ingress, per network."""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field


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

    def render(self) -> str:
        """Prometheus text exposition."""
        lines: list[str] = []
        series = {
            "ocstream_ingress_blocks_published_total": ("counter", "blocks_published"),
            "ocstream_ingress_finalized_height": ("gauge", "finalized_height"),
            "ocstream_ingress_tip_height": ("gauge", "tip_height"),
            "ocstream_ingress_backlog_blocks": ("gauge", "backlog"),
            "ocstream_ingress_errors_total": ("counter", "errors"),
            "ocstream_ingress_reconnects_total": ("counter", "reconnects"),
            "ocstream_ingress_decode_seconds_total": ("counter", "decode_seconds"),
        }
        for metric, (kind, attribute) in series.items():
            lines.append(f"# TYPE {metric} {kind}")
            for network, values in sorted(self.networks.items()):
                lines.append(f'{metric}{{network="{network}"}} {getattr(values, attribute)}')
        # The v1 name dashboards know (XCM.md §14), by network (origin) and failed step.
        lines.append("# TYPE oc_catcher_errors_total counter")
        for network, values in sorted(self.networks.items()):
            for step, count in sorted(values.errors_by_step.items()):
                lines.append(f'oc_catcher_errors_total{{origin="{network}",step="{step}"}} {count}')
        return "\n".join(lines) + "\n"
