"""Operations views of the worker: ``/health``, the admin routes (webhook dead letters),
``/topology.json``, and the read-only views behind the dashboard: ``/xcm/notifications``,
``/xcm/journeys``, ``/xcm/journeys/{id}`` (read back from the ``xcm-notifications`` topic, see
:mod:`ocstream.recent`) and ``/webhooks/status``.

``/health`` answers 200 when Redis answers, with the freshness of each network's tip and this
worker's consumer lag; 503 with ``"status": "down"`` when Redis does not answer within 1.5 s.
The status is ``degraded`` (still 200: the worker itself is fine, and a load balancer should
keep it) when a network's last block is older than ``stale_after`` seconds, when a network was
never reached (no tip yet), or, in the embedded mode, when one of the worker's own followers is
not following; ``reasons`` says which, one line each (``docs/deploy.md``).

Admin routes need ``Authorization: Bearer <token>`` with one of the configured admin tokens;
with none configured they answer 403.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Iterable
from typing import Any

from faust.web import Request, Response, View

from . import recent
from .dataflow import describe
from .transport.keys import Keyspace

__all__ = ["consumer_lag", "register_ops"]

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


#: Seconds /health waits for Redis (one probe, shared by concurrent requests) before "down".
HEALTH_TIMEOUT = 1.5


class HealthProbe:
    """Reads what ``/health`` needs from Redis, on a small pool of its own with short timeouts.

    Concurrent requests share one probe in flight (single flight): a burst of 300 health checks
    costs Redis one HGETALL, and none of them waits behind the API's connections.
    Each answer is at most one probe old. A probe that takes longer than ``timeout`` fails
    ("down"); a request that gives up does not cancel the probe the others wait for.
    """

    def __init__(self, redis_url: str, prefix: str, *, timeout: float = HEALTH_TIMEOUT) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.timeout = timeout
        self._registry: Any = None
        self._inflight: asyncio.Future[dict[str, Any]] | None = None

    def registry(self) -> Any:
        from .ingress.registry import NetworkRegistry
        from .transport.client import request_client

        if self._registry is None:
            client = request_client(
                self.redis_url, name="ocstream-health", timeout=1.0, max_connections=4
            )
            self._registry = NetworkRegistry(client, self.prefix)
        return self._registry

    async def _probe(self) -> dict[str, Any]:
        registry = self.registry()
        async with asyncio.timeout(self.timeout):  # the HGETALL is the proof Redis answers
            return dict(await registry.all())

    async def records(self) -> dict[str, Any]:
        """The network records; raises when Redis does not answer in time."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.ensure_future(self._probe())
            # Retrieved here too, in case every request that waited for it went away.
            self._inflight.add_done_callback(lambda f: f.cancelled() or f.exception())
        return await asyncio.shield(self._inflight)

    async def close(self) -> None:
        if self._registry is not None:
            await self._registry.client.aclose()


def network_reasons(
    records: dict[str, Any], now: float, stale_after: float
) -> tuple[dict[str, Any], list[str], dict[str, str]]:
    """Per network its tip and the age of its last block; the stale networks; and the reason
    of each network that is stale or was never reached (no tip yet)."""
    networks: dict[str, Any] = {}
    stale: list[str] = []
    reasons: dict[str, str] = {}
    for urn, record in sorted(records.items()):
        age = None if record.updated_at is None else round(now - record.updated_at, 1)
        networks[urn] = {"tip": record.tip_number, "age_seconds": age}
        if record.tip_number is None:
            reasons[urn] = "never reached (no block published yet)"
        elif age is not None and age > stale_after:
            stale.append(urn)
            reasons[urn] = f"last block {age:.0f}s ago (stale after {stale_after:g}s)"
    return networks, stale, reasons


def register_ops(
    app: Any,
    *,
    admin_tokens: tuple[str, ...],
    stale_after: float = 120.0,
    redis_url: str | None = None,
) -> None:
    probe = HealthProbe(redis_url or str(app.conf.broker[0]), app.transport_settings.prefix)
    app.health_probe = probe

    @app.page("/health")
    class HealthView(View):
        async def get(self, request: Request) -> Response:
            try:
                records = await probe.records()
            except Exception as exc:  # a timeout, a Redis error: the answer is "down"
                text = str(exc) or f"no answer within {probe.timeout:g}s"
                reason = f"Redis does not answer: {type(exc).__name__}: {text}"
                body = {
                    "status": "down",
                    "redis": f"unreachable: {type(exc).__name__}: {text}",
                    "reasons": [reason],
                    "statusCode": 503,
                }
                return self.json(body, status=503)
            now = time.time()
            networks, stale, problems = network_reasons(records, now, stale_after)
            ingress = getattr(self.app, "ingress", None)
            if ingress is not None:  # the embedded mode: this worker's own followers
                followed, follower_problems = ingress.network_health(now)
                for urn, state in followed.items():
                    networks.setdefault(urn, {"tip": None, "age_seconds": None})
                    networks[urn]["follower"] = state["state"]
                for urn, reason in follower_problems.items():
                    problems.setdefault(urn, reason)  # the registry's reason first
            reasons = [f"{urn}: {reason}" for urn, reason in sorted(problems.items())]
            lag = consumer_lag(self.app)
            body = {
                "status": "degraded" if reasons else "ok",
                "uptime_seconds": round(now - STARTED, 1),
                "redis": "ok",
                "reasons": reasons,
                "networks": networks,
                "stale_networks": stale,
                "consumer_lag": {"total": sum(lag.values()), "partitions": lag},
            }
            return self.json(body)

    @app.page("/topology.json")
    class TopologyView(View):
        async def get(self, request: Request) -> Response:
            return self.json(describe(self.app).to_dict())

    def _limit(request: Request, default: int, most: int) -> int:
        try:
            return min(most, max(1, int(request.query.get("limit", str(default)))))
        except ValueError:
            raise ValueError("limit must be an integer") from None

    async def _topic(app: Any) -> tuple[Any, Keyspace, int]:
        from .web import _registry

        client = _registry(app).client
        keys = Keyspace(app.transport_settings.prefix)
        default = int(app.conf.topic_partitions)
        return (
            client,
            keys,
            await recent.partitions_of(client, keys, recent.NOTIFICATIONS_TOPIC, default),
        )

    @app.page("/xcm/notifications")
    class NotificationsView(View):
        """The newest notifications of the whole group (``?limit=``, ``?origin=``)."""

        async def get(self, request: Request) -> Response:
            try:
                limit = _limit(request, 50, 500)
            except ValueError as exc:
                return _error(self, 400, str(exc))
            client, keys, partitions = await _topic(self.app)
            origin = request.query.get("origin") or None
            found = await recent.recent_notifications(
                client, keys, partitions, limit=limit, origin=origin
            )
            return self.json(found)

    @app.page("/xcm/journeys")
    class JourneysView(View):
        """The most recent journeys of the whole group (``?limit=``, at most 200)."""

        async def get(self, request: Request) -> Response:
            try:
                limit = _limit(request, 20, 200)
            except ValueError as exc:
                return _error(self, 400, str(exc))
            client, keys, partitions = await _topic(self.app)
            return self.json(await recent.journeys(client, keys, partitions, limit=limit))

    @app.page("/xcm/journeys/{journey_id}")
    class JourneyView(View):
        """One journey: its summary and its notifications in full."""

        async def get(self, request: Request, journey_id: str) -> Response:
            client, keys, partitions = await _topic(self.app)
            found = await recent.journey_notifications(client, keys, partitions, journey_id)
            if not found:
                return _error(self, 404, f"no notification of journey {journey_id} found")
            body = recent.summarize(journey_id, found)
            body["notifications"] = found
            return self.json(body)

    @app.page("/webhooks/status")
    class WebhookStatusView(View):
        """Webhook delivery per persistent subscription with a webhook channel."""

        async def get(self, request: Request) -> Response:
            webhooks = getattr(self.app, "webhooks", None)
            live = getattr(self.app, "subscriptions_live", None)
            if webhooks is None or live is None:
                return _error(self, 404, "no webhook delivery in this worker")
            figures = await webhooks.subscription_status()
            webhook_channels = [
                (subscription, indexes)
                for subscription in live.persistent()[:500]
                if (
                    indexes := [
                        index
                        for index, channel in enumerate(subscription.channels)
                        if channel.type == "webhook"
                    ]
                )
            ]
            # One MGET for every channel's disabled flag, not a GET per channel.
            disabled = await webhooks.disabled_channels(
                [(s.id, index) for s, indexes in webhook_channels for index in indexes]
            )
            zero = {"delivered": 0, "failed": 0, "retrying": 0, "dead": 0}
            rows = [
                {
                    "id": subscription.id,
                    "urls": [subscription.channels[index].url for index in indexes],
                    **zero,
                    **figures.get(subscription.id, {}),
                    "disabledChannels": [i for i in indexes if (subscription.id, i) in disabled],
                }
                for subscription, indexes in webhook_channels
            ]
            rows.sort(key=lambda row: str(row["id"]))
            return self.json({"subscriptions": rows, "totals": await webhooks.gauges()})

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
