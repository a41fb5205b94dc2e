"""Operations views of the worker: ``/health``, the delivery part of ``/metrics``, the admin
routes (webhook dead letters) and ``/topology.json``.

``/health`` answers 200 when Redis answers, with the freshness of each network's tip and this
worker's consumer lag; 503 when Redis does not. A network whose last block is older than
``stale_after`` seconds is listed as stale and makes the status ``degraded`` (still 200: the
worker itself is fine, and a load balancer should keep it).

Admin routes need ``Authorization: Bearer <token>`` with one of the configured admin tokens;
with none configured they answer 403.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterable
from typing import Any

from faust.web import Request, Response, View

from .dataflow import describe

__all__ = ["register_ops", "render_delivery_metrics"]

STARTED = time.time()


def _webhooks(app: Any) -> Any:
    return app.webhooks


def _error(view: View, status: int, reason: str) -> Response:
    return view.json({"error": True, "statusCode": status, "reason": reason}, status=status)


#: Largest integer accepted in an admin query (Redis ranges are 64-bit).
MAX_QUERY_INT = 1 << 31
#: Channel indexes accepted by the admin routes.
MAX_CHANNELS = 1000


def _small_int(text: str) -> int:
    """A decimal integer of ASCII digits (optional sign) below :data:`MAX_QUERY_INT`; else
    ValueError."""
    digits = text[1:] if text[:1] in "+-" else text
    if not digits.isascii() or not digits.isdigit() or len(digits) > 10:
        raise ValueError(text)
    value = int(text)
    if abs(value) >= MAX_QUERY_INT:
        raise ValueError(text)
    return value


def _authorized(request: Request, tokens: Iterable[str]) -> bool:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return False
    given = header[len("Bearer ") :].encode()
    return any(hmac.compare_digest(given, token.encode()) for token in tokens)


def consumer_lag(app: Any) -> dict[str, int]:
    """Records not yet processed, per assigned topic partition (``topic:partition``): the
    partition's end minus this worker's committed offset (the next record to process). The
    consumer reads ahead into its buffers, so the offset it has *read* says little: under a
    backlog the records wait in memory, read but not processed. Commits come every few
    seconds, so the figure includes up to that much of recent work."""
    consumer = app.consumer
    lag: dict[str, int] = {}
    committed = getattr(consumer, "_committed_offset", {})
    read = getattr(consumer, "_read_offset", {})
    for tp in sorted(consumer.assignment()):
        try:
            highwater = consumer.highwater(tp)
        except Exception:
            continue
        if highwater is None:
            continue
        done = committed.get(tp)
        if done is None:  # nothing committed yet in this assignment: what was read
            position = read.get(tp)
            done = position + 1 if position is not None else 0
        lag[f"{tp.topic}:{tp.partition}"] = max(0, int(highwater - done))
    return lag


def render_delivery_metrics(app: Any) -> str:
    """Prometheus text for subscriptions, deliveries and webhooks (``oc_*`` names)."""
    lines: list[str] = []
    live = getattr(app, "subscriptions_live", None)
    if live is not None:
        persistent = len(live.persistent())
        ephemeral = len(live.all()) - persistent
        lines += [
            "# TYPE oc_active_subscriptions_count gauge",
            f'oc_active_subscriptions_count{{type="persistent"}} {persistent}',
            f'oc_active_subscriptions_count{{type="ephemeral"}} {ephemeral}',
        ]
    delivery = getattr(app, "delivery", None)
    if delivery is not None:
        lines.append("# TYPE oc_notifier_notification_total counter")
        for name, value in sorted(delivery.counters.items()):
            if name.startswith("delivered_"):
                kind = name.removeprefix("delivered_")
                lines.append(f'oc_notifier_notification_total{{type="{kind}"}} {value}')
        for name in ("late", "duplicates", "errors", "subscription_timeouts"):
            metric = f"oc_delivery_{name}_total"
            lines += [f"# TYPE {metric} counter", f"{metric} {delivery.counters.get(name, 0)}"]
    webhooks = getattr(app, "webhooks", None)
    if webhooks is not None:
        for name, value in sorted(webhooks.counters.items()):
            metric = f"oc_webhook_{name}_total"
            lines += [f"# TYPE {metric} counter", f"{metric} {value}"]
        for name, value in sorted(getattr(app, "webhook_gauges", {}).items()):
            metric = f"oc_webhook_{name}"
            lines += [f"# TYPE {metric} gauge", f"{metric} {value}"]
    hub = getattr(app, "websocket_hub", None)
    if hub is not None:
        lines.append("# TYPE oc_socket_listener_count gauge")
        for kind, count in sorted(hub.clients_by_type().items()):
            lines.append(f'oc_socket_listener_count{{type="{kind}"}} {count}')
    lag = consumer_lag(app) if getattr(app, "consumer", None) is not None else {}
    lines.append("# TYPE ocstream_consumer_lag_records gauge")
    for key, behind in lag.items():
        topic, partition = key.rsplit(":", 1)
        lines.append(
            f'ocstream_consumer_lag_records{{topic="{topic}",partition="{partition}"}} {behind}'
        )
    return "\n".join(lines) + "\n" if lines else ""


def register_ops(app: Any, *, admin_tokens: tuple[str, ...], stale_after: float = 120.0) -> None:
    @app.page("/health")
    class HealthView(View):
        async def get(self, request: Request) -> Response:
            from .web import _registry

            registry = _registry(self.app)
            try:
                await registry.client.ping()
                records = await registry.all()
            except Exception as exc:
                body = {"status": "down", "redis": f"unreachable: {exc}", "statusCode": 503}
                return self.json(body, status=503)
            now = time.time()
            networks = {}
            stale = []
            for urn, record in sorted(records.items()):
                age = None if record.updated_at is None else round(now - record.updated_at, 1)
                if age is not None and age > stale_after:
                    stale.append(urn)
                networks[urn] = {"tip": record.tip_number, "age_seconds": age}
            lag = consumer_lag(self.app)
            body = {
                "status": "degraded" if stale else "ok",
                "uptime_seconds": round(now - STARTED, 1),
                "redis": "ok",
                "networks": networks,
                "stale_networks": stale,
                "consumer_lag": {"total": sum(lag.values()), "partitions": lag},
            }
            return self.json(body)

    @app.page("/topology.json")
    class TopologyView(View):
        async def get(self, request: Request) -> Response:
            return self.json(describe(self.app).to_dict())

    def admin(view: View, request: Request) -> Response | None:
        if not admin_tokens:
            return _error(view, 403, "admin routes are disabled: set OCSTREAM_ADMIN_TOKENS")
        if not _authorized(request, admin_tokens):
            return _error(view, 401, "a valid admin bearer token is required")
        return None

    @app.page("/admin/webhooks/dead-letters")
    class DeadLettersView(View):
        async def get(self, request: Request) -> Response:
            if (refused := admin(self, request)) is not None:
                return refused
            try:
                limit = min(1000, max(1, _small_int(request.query.get("limit", "100"))))
                offset = max(0, _small_int(request.query.get("offset", "0")))
            except ValueError:
                return _error(self, 400, f"limit and offset must be integers below {MAX_QUERY_INT}")
            letters = await _webhooks(self.app).dead_letters(limit=limit, offset=offset)
            return self.json(letters)

    @app.page("/admin/webhooks/dead-letters/{delivery_id}/replay")
    class ReplayView(View):
        async def post(self, request: Request, delivery_id: str) -> Response:
            if (refused := admin(self, request)) is not None:
                return refused
            if not await _webhooks(self.app).replay(delivery_id):
                return _error(self, 404, f"no dead letter {delivery_id}")
            return self.json({"replayed": delivery_id})

    @app.page("/admin/webhooks/{subscription_id}/{channel}/enable")
    class EnableView(View):
        async def post(self, request: Request, subscription_id: str, channel: str) -> Response:
            if (refused := admin(self, request)) is not None:
                return refused
            try:
                index = _small_int(channel)
            except ValueError:
                index = -1
            if index < 0 or index >= MAX_CHANNELS:
                return _error(
                    self,
                    400,
                    f"the channel is its index in the subscription (0 to {MAX_CHANNELS - 1})",
                )
            await _webhooks(self.app).enable(subscription_id, index)
            return self.json({"enabled": [subscription_id, index]})
