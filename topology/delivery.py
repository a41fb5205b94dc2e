"""Delivery: ``xcm-notifications`` → agent ``xcm_deliver`` → webhook, websocket and log channels.

Each notification goes to :meth:`ocstream.delivery.Delivery.deliver` (``app.delivery``), which
applies the subscriptions' filters and hands it to their channels. Webhook deliveries are
persistent (retried from Redis by every worker's dispatcher), so the agent only queues them.

The agent delivers up to :data:`CONCURRENCY` notifications at a time, and the notifications of
one journey in their order: a journey's ``xcm.sent`` is queued before its ``xcm.received``, and
a terminal finds the per-subscription timer that its ``xcm.sent`` set. Deliveries that run at
the same time share the webhook dispatcher's write pipeline and its claims, where one at a time
paid a round trip and a claim each. A record is acknowledged when its delivery is done, so the
committed offset never passes a notification that was not delivered (faust commits the
contiguous prefix of what was acknowledged).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from ocstream.dataflow import declare_outputs
from ocstream.transport.client import TRANSIENT_ERRORS, Backoff

log = logging.getLogger("ocstream.delivery")

NOTIFICATIONS_TOPIC = "xcm-notifications"

#: How many notifications are delivered at the same time. Each one holds a Redis connection
#: while it runs; the client's pool has 100, shared with the dispatcher and the API.
CONCURRENCY = 16

#: On stop, how long deliveries under way may take before they are cancelled (a cancelled one
#: is not acknowledged, so the next owner of its partition delivers it).
STOP_GRACE = 5.0


async def deliver_one(app: Any, notification: dict[str, Any]) -> None:
    """Deliver one notification; waits out Redis outages, logs and counts other failures."""
    delivery = getattr(app, "delivery", None)
    if delivery is None:  # an app built without delivery (tools, tests)
        return
    backoff = Backoff()
    while True:
        try:
            await delivery.deliver(notification)
            return
        except TRANSIENT_ERRORS as exc:
            # Redis is away: wait for it rather than lose the notification.
            delay = backoff.next_delay()
            log.warning("delivery: Redis error (%s), retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
        except Exception:
            # A notification that cannot be delivered must not stop the others; the webhook
            # dispatcher keeps its own retries and dead letters.
            log.exception("delivering %s failed", notification.get("id"))
            delivery.counters["errors"] += 1
            return


async def deliver_stream(app: Any, stream: Any, concurrency: int = CONCURRENCY) -> None:
    """Deliver a stream of notifications, ``concurrency`` at a time, each journey in order,
    acknowledging each record once its notification is delivered."""
    stream.enable_acks = False  # acknowledged by hand, when the delivery is done
    slots = asyncio.Semaphore(concurrency)
    latest: dict[str, asyncio.Task[None]] = {}  # the last delivery of each journey
    running: set[asyncio.Task[None]] = set()

    async def deliver(event: Any, notification: Any, after: asyncio.Task[None] | None) -> None:
        try:
            if after is not None:
                await asyncio.wait({after})  # the journey's previous notification first
            await deliver_one(app, notification)
            if event is not None:
                await stream.ack(event)
        finally:
            slots.release()

    def done(task: asyncio.Task[None], journey: str) -> None:
        running.discard(task)
        if latest.get(journey) is task:
            del latest[journey]

    try:
        async for notification in stream:
            event = stream.current_event
            await slots.acquire()
            journey = notification.get("journeyId") if isinstance(notification, dict) else None
            key = str(journey) if journey else f"#{id(event)}"
            task = asyncio.create_task(deliver(event, notification, latest.get(key)))
            latest[key] = task
            running.add(task)
            task.add_done_callback(functools.partial(done, journey=key))
    finally:
        if running:
            _, late = await asyncio.wait(set(running), timeout=STOP_GRACE)
            for task in late:
                task.cancel()


def declare(app: Any) -> None:
    notifications = app.topic(NOTIFICATIONS_TOPIC, key_type=str, value_serializer="json")

    @app.agent(notifications, name="xcm_deliver")  # type: ignore[untyped-decorator]
    async def xcm_deliver(stream: Any) -> None:
        await deliver_stream(app, stream)

    # What app.delivery hands the notifications to: none of it is a topic, so faust cannot tell.
    declare_outputs(
        app,
        "xcm_deliver",
        {
            "webhooks": "HTTP POST to subscribers, queued and retried from Redis",
            "websockets": "Redis pub/sub, forwarded by every worker to its sockets",
            "log": "one log line per notification",
        },
        pages={"websockets": ["/ws/subs"]},
    )


__all__ = ["CONCURRENCY", "declare", "deliver_one", "deliver_stream"]
