"""Delivery: ``xcm-notifications`` → agent ``xcm_deliver`` → webhook, websocket and log channels.

The agent takes the notifications in batches, as the topic holds them (bytes, and the origin
from the record's ``origin`` header), and hands each batch to
:meth:`ocstream.delivery.Delivery.deliver_encoded` (``app.delivery``), which decodes those a
subscription follows, applies the subscriptions' filters and hands them to their channels in
two Redis round trips per batch.
Webhook deliveries are persistent (retried from Redis by the dispatchers of the delivering
workers), so the agent only queues them.

A batch is whatever the stream has ready when the previous batch is done, up to
:data:`MAX_BATCH`: one notification at a time when they trickle in (no waiting window), large
batches under load. Batches run one after the other, each in the stream's order, so a journey's
``xcm.sent`` is queued before its ``xcm.received``, and a terminal finds the per-subscription
timer that its ``xcm.sent`` set. A record is acknowledged once its batch is delivered, so the
committed offset never passes a notification that was not delivered (faust commits the
contiguous prefix of what was acknowledged). A Redis outage is waited out and the batch
delivered again; the markers keep every channel at most once.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from ocstream.dataflow import declare_outputs
from ocstream.delivery import ORIGIN_HEADER, SELECT_HEADER, Encoded, EncodedNote
from ocstream.stages import Backlog
from ocstream.transport.client import Backoff, retryable
from ocstream.transport.direct import DirectFeed, direct_feed
from ocstream.transport.wire import header_items

log = logging.getLogger("ocstream.delivery")

NOTIFICATIONS_TOPIC = "xcm-notifications"

#: Most notifications delivered in one batch (and taken from the stream ahead of delivery).
MAX_BATCH = 256

#: On stop, how long the batch under way and those taken may take before they are cancelled
#: (what is not acknowledged is delivered by the next owner of its partition).
STOP_GRACE = 5.0


async def deliver_batch(app: Any, notifications: Sequence[EncodedNote]) -> None:
    """Deliver a batch; waits out Redis outages (then delivers the whole batch again), logs and
    counts other failures. The items are notifications as the topic holds them, ``(origin,
    JSON bytes)``, the bytes maybe still to be read (see :func:`encoded`)."""
    delivery = getattr(app, "delivery", None)
    if delivery is None:  # an app built without delivery (tools, tests)
        return
    backoff = Backoff()
    while True:
        try:
            await delivery.deliver_encoded(notifications)
            return
        except Exception as exc:
            if retryable(exc):
                # Redis is away, or refuses writes for now (out of memory, a replica): wait
                # for it rather than lose the notifications.
                delay = backoff.next_delay()
                log.warning("delivery: Redis error (%s), retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            # Notifications that cannot be delivered must not stop the others; the webhook
            # dispatcher keeps its own retries and dead letters.
            origins = sorted({item[0] for item in notifications if item[0]})
            log.exception("delivering %d notifications of %s failed", len(notifications), origins)
            delivery.counters["errors"] += len(notifications)
            return


def encoded(event: Any, value: Encoded) -> tuple[str | None, Encoded, bytes | None]:
    """A record of the stream as :func:`deliver_batch` takes it: ``(origin, bytes, selector)``,
    the origin from the record's ``origin`` header and the selector from its ``select`` header
    (None without them)."""
    origin = selected = None
    for name, header in header_items(getattr(event, "headers", None)):
        if name == ORIGIN_HEADER:
            origin = header.decode() if isinstance(header, bytes) else str(header)
        elif name == SELECT_HEADER:
            selected = header if isinstance(header, bytes) else str(header).encode()
    return (origin, value, selected)


async def deliver_stream(app: Any, stream: Any, max_batch: int = MAX_BATCH) -> None:
    """Deliver a faust stream of notifications (see :func:`deliver_records`); each record is
    acknowledged through the stream once its batch is delivered."""
    stream.enable_acks = False  # acknowledged by hand, when the delivery is done

    async def records() -> AsyncIterator[tuple[Any, EncodedNote]]:
        async for notification in stream:
            event = stream.current_event
            yield event, encoded(event, notification)

    await deliver_records(app, records(), stream.ack, stream.channel.queue.qsize, max_batch)


async def deliver_feed(app: Any, feed: DirectFeed, max_batch: int = MAX_BATCH) -> None:
    """Deliver the notifications of a direct feed (``ocstream/transport/direct.py``: taken
    from the fetch, without faust's stream; see :func:`deliver_records`)."""

    async def records() -> AsyncIterator[tuple[Any, EncodedNote]]:
        while True:
            await feed.wait()
            while (message := feed.next()) is not None:
                # The value is read (decompressed) only if the notification is needed.
                yield message, encoded(message, message.read_value)

    await deliver_records(app, records(), feed.ack, feed.__len__, max_batch)


async def deliver_records(
    app: Any,
    records: AsyncIterator[tuple[Any, EncodedNote]],
    ack: Callable[[Any], Any],
    waiting: Callable[[], int],
    max_batch: int = MAX_BATCH,
) -> None:
    """Deliver ``records`` (``(handle, (origin, bytes))``, in the topic's order) in batches of
    up to ``max_batch``, in order, calling ``ack(handle)`` for each once its batch is
    delivered. ``waiting()`` counts the records not yet taken from the source."""
    taken: asyncio.Queue[tuple[Any, Any]] = asyncio.Queue(maxsize=max_batch)
    # What this worker's extraction and matching wait for before their next batch
    # (ocstream/stages.py): the notifications taken, and those waiting in the source.
    backlog = app.delivery_backlog = Backlog(waiting)

    async def deliver() -> None:
        while True:
            batch = [await taken.get()]
            while len(batch) < max_batch and not taken.empty():
                batch.append(taken.get_nowait())
            try:
                await deliver_batch(app, [notification for _, notification in batch])
                for handle, _ in batch:
                    if handle is not None:
                        acked = ack(handle)
                        if inspect.isawaitable(acked):
                            await acked
            except asyncio.CancelledError:
                raise
            except Exception:  # acknowledging failed: the records are delivered again later
                log.exception("delivery: acknowledging a batch of %d failed", len(batch))
            finally:
                for _ in batch:
                    taken.task_done()
                backlog.finished(len(batch))

    deliverer = asyncio.create_task(deliver(), name="xcm-deliver-batches")
    try:
        async for handle, notification in records:
            await taken.put((handle, notification))
            backlog.took()
    finally:
        try:
            await asyncio.wait_for(taken.join(), STOP_GRACE)
        except TimeoutError:
            left = taken.qsize()
            log.warning("delivery: stopped with %d notifications taken, not delivered", left)
        finally:
            deliverer.cancel()
            await asyncio.gather(deliverer, return_exceptions=True)


def declare(app: Any) -> None:
    # Bytes, decoded by delivery only where a subscription follows their origin.
    notifications = app.topic(NOTIFICATIONS_TOPIC, key_type=str, value_serializer="raw")
    # Taken from the fetch itself, not through faust's stream (registered before the worker
    # fetches anything).
    feed = direct_feed(app, notifications.get_topic_name())

    @app.agent(notifications, name="xcm_deliver")  # type: ignore[untyped-decorator]
    async def xcm_deliver(stream: Any) -> None:
        """Takes its records from the topic's direct feed; faust's ``stream`` gets none."""
        await deliver_feed(app, feed)

    # What app.delivery hands the notifications to: none of it is a topic, so faust cannot tell.
    declare_outputs(
        app,
        "xcm_deliver",
        {
            "webhooks": "HTTP POST to subscribers, queued and retried from Redis",
            "websockets": "Redis pub/sub, forwarded by the workers holding the sockets",
            "log": "one log line per notification",
        },
        pages={"websockets": ["/ws/subs"]},
    )


__all__ = [
    "MAX_BATCH",
    "declare",
    "deliver_batch",
    "deliver_feed",
    "deliver_records",
    "deliver_stream",
]
