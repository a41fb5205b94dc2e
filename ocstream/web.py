"""HTTP views the worker serves next to faust's own.

``/metrics`` is the Prometheus text exposition of the worker's metrics, written by
:mod:`ocstream.metrics` (``docs/deploy.md`` lists them).
"""

from __future__ import annotations

from typing import Any

from faust.web import Request, Response, View

from . import metrics


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
            records = await _registry(self.app).all()
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
    from .transport.client import connect

    registry = getattr(app, "_ocstream_registry", None)
    if registry is None:
        client = connect(str(app.conf.broker[0]), name="ocstream-web")
        registry = NetworkRegistry(client, app.transport_settings.prefix)
        app._ocstream_registry = registry
    return registry
