"""HTTP views the worker serves next to faust's own.

``/metrics`` is the Prometheus text exposition of the worker's metrics, written by
:mod:`ocstream.metrics` (``docs/deploy.md`` lists them).
"""

from __future__ import annotations

import logging
from typing import Any

from faust.web import Request, Response, View
from redis.exceptions import RedisError

from . import metrics

log = logging.getLogger(__name__)


def register_views(app: Any) -> None:
    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            app: Any = self.app
            webhooks = getattr(app, "webhooks", None)
            if webhooks is not None:
                try:
                    app.webhook_gauges = await webhooks.gauges()
                except Exception:  # Redis away: the counters still render
                    app.webhook_gauges = {}
            body = metrics.render_worker(app)
            return self.bytes(body, headers={"Content-Type": metrics.CONTENT_TYPE})

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
