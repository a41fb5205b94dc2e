"""HTTP views the worker serves next to faust's own.

``/metrics`` is the Prometheus text exposition of the transport's counters and of this worker's
place in its group. The XCM and API metrics will join it.
"""

from __future__ import annotations

import logging
from typing import Any

from faust.web import Request, Response, View
from redis.exceptions import RedisError

from .ops import render_delivery_metrics
from .transport import METRICS

log = logging.getLogger(__name__)

COUNTER_HELP = {
    "records_produced": "Records appended to topics by this process.",
    "produce_retries": "Produce batches retried after a Redis error.",
    "records_fetched": "Records fetched from topic partitions.",
    "fetch_errors": "Fetches that failed with a Redis error.",
    "commits": "Offset commits attempted.",
    "commits_fenced": "Offset commits refused because the generation moved on.",
    "rebalances": "Assignments taken by this process.",
    "retention_trimmed": "Entries removed by retention.",
    "retention_trimmed_uncommitted": "Entries removed by retention before a group committed them.",
    "tombstones_removed": "Changelog tombstones removed after their retention.",
}


ENGINE_METRICS = {
    "oc_engine_out_total": ("sent",),
    "oc_engine_in_total": ("legs_received",),
    "oc_engine_matched_total": ("received",),
    "oc_engine_relayed_total": ("relayed",),
    "oc_engine_hop_total": ("hop_in", "hop_out", "hop_failed"),
    "oc_engine_timeout_total": ("timeout",),
    "oc_engine_orphan_inbound_total": ("inbound_expired",),
    "oc_engine_late_received_total": ("late_received",),
    "oc_xcm_unknown_page_format_total": ("dead_letters_unknown-page-format",),
    "oc_xcm_missing_bytes_total": ("dead_letters_missing-bytes",),
}


def render_metrics(app: Any) -> str:
    lines: list[str] = []
    for name, value in METRICS.as_dict().items():
        metric = f"ocstream_transport_{name}_total"
        lines += [
            f"# HELP {metric} {COUNTER_HELP.get(name, name)}",
            f"# TYPE {metric} counter",
            f"{metric} {value}",
        ]
    consumer = app.consumer
    group = getattr(consumer, "group", None)
    gauges = {
        "ocstream_group_generation": ("Generation this worker holds.", app.consumer_generation_id),
        "ocstream_group_assigned_partitions": (
            "Topic partitions assigned to this worker.",
            len(consumer.assignment()),
        ),
        "ocstream_group_leader": (
            "1 if this worker holds the group's leader lease.",
            int(bool(group and group.is_leader)),
        ),
    }
    for metric, (text, value) in gauges.items():
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} gauge", f"{metric} {value}"]
    counters = getattr(app, "xcm_counters", {})
    for name, value in sorted(counters.items()):
        metric = f"oc_xcm_{name}_total"
        lines += [f"# TYPE {metric} counter", f"{metric} {value}"]
    # The engine's counters under the names dashboards know (XCM.md §14; the engine is global,
    # so without the subscription label).
    for metric, names in ENGINE_METRICS.items():
        value = sum(counters.get(name, 0) for name in names)
        lines += [f"# TYPE {metric} counter", f"{metric} {value}"]
    return "\n".join(lines) + "\n"


def register_views(app: Any) -> None:
    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            text = render_metrics(self.app)
            app: Any = self.app
            webhooks = getattr(app, "webhooks", None)
            if webhooks is not None:
                try:
                    app.webhook_gauges = await webhooks.gauges()
                except Exception:  # Redis away: the counters still render
                    app.webhook_gauges = {}
            text += render_delivery_metrics(app)
            ingress = getattr(self.app, "ingress", None)
            if ingress is not None:
                text += ingress.metrics.render()
            return self.text(text, content_type="text/plain; version=0.0.4")

    @app.page("/networks")
    class NetworksView(View):
        """The networks in the registry, read on every request: networks that an ingress adds
        later show up without a restart (the distributed mode)."""

        async def get(self, request: Request) -> Response:
            try:
                records = await _registry(self.app).all()
            except RedisError as exc:
                log.warning("/networks: Redis failed (%s: %s)", type(exc).__name__, exc)
                body = {
                    "error": True,
                    "statusCode": 503,
                    "reason": "the network registry is unavailable; retry later",
                }
                return self.json(body, status=503)
            return self.json({urn: r.model_dump() for urn, r in sorted(records.items())})

    @app.page("/ingress/health")
    class IngressHealthView(View):
        async def get(self, request: Request) -> Response:
            ingress = getattr(self.app, "ingress", None)
            if ingress is None:
                body = {"error": True, "statusCode": 404, "reason": "no ingress in this worker"}
                return self.json(body, status=404)
            return self.json(await ingress.health())


def _registry(app: Any) -> Any:
    from .ingress.registry import NetworkRegistry
    from .transport.client import request_client

    registry = getattr(app, "_ocstream_registry", None)
    if registry is None:
        # Request path: bounded pool, short timeouts (see request_client).
        client = request_client(str(app.conf.broker[0]), name="ocstream-web")
        registry = NetworkRegistry(client, app.transport_settings.prefix)
        app._ocstream_registry = registry
    return registry
