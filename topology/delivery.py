"""Delivery: ``xcm-notifications`` → agent ``xcm_deliver`` → webhook, websocket and log channels.

Each notification goes to :meth:`ocstream.delivery.Delivery.deliver` (``app.delivery``), which
applies the subscriptions' filters and hands it to their channels. Webhook deliveries are
persistent (retried from Redis by every worker's dispatcher), so the agent only queues them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ocstream.transport.client import TRANSIENT_ERRORS, Backoff

log = logging.getLogger("ocstream.delivery")

NOTIFICATIONS_TOPIC = "xcm-notifications"


def declare(app: Any) -> None:
    notifications = app.topic(NOTIFICATIONS_TOPIC, key_type=str, value_serializer="json")

    @app.agent(notifications, name="xcm_deliver")  # type: ignore[untyped-decorator]
    async def xcm_deliver(stream: Any) -> None:
        async for notification in stream:
            delivery = getattr(app, "delivery", None)
            if delivery is None:  # an app built without delivery (tools, tests)
                continue
            backoff = Backoff()
            while True:
                try:
                    await delivery.deliver(notification)
                    break
                except TRANSIENT_ERRORS as exc:
                    # Redis is away: wait for it rather than lose the notification.
                    delay = backoff.next_delay()
                    log.warning("delivery: Redis error (%s), retrying in %.1fs", exc, delay)
                    await asyncio.sleep(delay)
                except Exception:
                    # A notification that cannot be delivered must not stop the others; the
                    # webhook dispatcher keeps its own retries and dead letters.
                    log.exception("delivering %s failed", notification.get("id"))
                    delivery.counters["errors"] += 1
                    break


__all__ = ["declare"]
