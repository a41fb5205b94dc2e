"""Delivery: notifications from the XCM dataflow to subscribers' channels.

The agent ``xcm_deliver`` (``topology/delivery.py``) hands every notification of
``xcm-notifications`` to :meth:`Delivery.deliver`, which

* finds the subscriptions that want it (origin, final destination, sender, event types; the
  subscriptions are the live view of Redis, so a change on any worker applies within a second);
* keeps **one terminal per journey and subscription**: the first of ``xcm.received``,
  ``xcm.timeout`` (the engine's, or the subscription's own ``outboundTTL``) and a failed
  ``xcm.hop`` is delivered, later ones are counted as late and dropped;
* runs each subscription's ``outboundTTL`` as a persisted timer (a Redis sorted set) that fires
  an ``xcm.timeout`` for that subscription alone when no receipt came first;
* hands the notification, with ``subscriptionId`` added, to each wanted channel: the webhook
  dispatcher (persistent retries), the websocket hub (fan-out to every worker's sockets), or the
  log. A notification id reaches a channel at most once.

Redis keys (prefix ``ocs:``): ``dlv:term:{sub}:{journey}`` (terminal delivered),
``dlv:sent:{sub}:{channel}:{notification}`` (websocket/log deduplication), ``dlv:ttl`` (zset of
``{sub}|{journey}`` by deadline), ``dlv:ttl:notes`` (the ``xcm.sent`` each timer repeats) and
the pub/sub channel ``dlv:notes`` (every notification, for ephemeral subscriptions).

Ephemeral subscriptions (a websocket's) do not get ``outboundTTL`` timers: they end with their
socket, and a timer could fire on a worker that does not know them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any, Protocol

import orjson
from mode import Service
from redis.asyncio import Redis

from .transport.client import TRANSIENT_ERRORS, Backoff

__all__ = ["Delivery", "is_terminal"]

log = logging.getLogger("ocstream.delivery")

#: How long delivery bookkeeping is kept (a journey lives at most a day, bridges included).
BOOKKEEPING_SECONDS = 7 * 86400


def is_terminal(notification: Mapping[str, Any]) -> bool:
    """Whether a notification ends its journey for a subscriber."""
    kind = notification.get("type")
    if kind in ("xcm.received", "xcm.timeout"):
        return True
    waypoint = notification.get("waypoint") or {}
    if kind == "xcm.bridge" and notification.get("bridgeStatus") == "accepted":
        # Accepted onto a bridge that is the journey's last leg (e.g. to Ethereum): ocstream
        # follows it no further, so that is where the journey ends (docs/matching.md).
        return bool(waypoint.get("legIndex") == len(notification.get("legs") or []) - 1)
    return bool(kind in ("xcm.hop", "xcm.bridge") and waypoint.get("outcome") == "Fail")


class _Subscriptions(Protocol):
    def matching(self, notification: Mapping[str, Any]) -> list[Any]: ...

    def get(self, subscription_id: str) -> Any: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class _Webhooks(Protocol):
    async def enqueue(
        self, subscription_id: str, channel_index: int, notification: dict[str, Any]
    ) -> bool: ...


class _Hub(Protocol):
    async def publish(self, subscription_id: str, notification: Mapping[str, Any]) -> int: ...


class _Log(Protocol):
    async def deliver(self, subscription_id: str, notification: dict[str, Any]) -> None: ...


class Delivery(Service):
    """Routes notifications to channels; a faust app service (started with the worker)."""

    def __init__(
        self,
        *,
        client: Redis,
        prefix: str,
        subscriptions: _Subscriptions,
        webhooks: _Webhooks | None = None,
        hub: _Hub | None = None,
        log_sink: _Log | None = None,
        services: tuple[Any, ...] = (),
        timer_interval: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.client = client
        self.prefix = prefix
        self.subscriptions = subscriptions
        self.webhooks = webhooks
        self.hub = hub
        self.log_sink = log_sink
        self.timer_interval = timer_interval
        self.counters: Counter[str] = Counter()
        self._services = services  # started and stopped with this one (dispatcher, hub)
        self._ttl_key = f"{prefix}dlv:ttl"
        self._ttl_notes = f"{prefix}dlv:ttl:notes"
        self._notes = f"{prefix}dlv:notes"
        #: Set while the fan-out of notifications to ephemeral subscriptions is subscribed.
        self.listening = asyncio.Event()

    async def on_start(self) -> None:
        await self.subscriptions.start()
        for service in self._services:
            await service.start()
        self.add_future(self._timers())
        self.add_future(self._listen())

    async def on_stop(self) -> None:
        for service in reversed(self._services):
            try:
                await service.stop()
            except Exception:  # stopping must go on for the others
                log.exception("stopping %r failed", service)
        await self.subscriptions.stop()

    # -- delivering --

    async def deliver(self, notification: dict[str, Any]) -> int:
        """Deliver one notification to every subscription that wants it; returns how many.

        Ephemeral subscriptions live in the worker that holds their websocket, which may not be
        this one: the notification is also published to every worker (``dlv:notes``), and each
        delivers it to its own ephemeral subscriptions."""
        delivered = 0
        for subscription in self.subscriptions.matching(notification):
            if not getattr(subscription, "is_ephemeral", False):
                delivered += await self.deliver_to(subscription, notification)
        await self.client.publish(self._notes, orjson.dumps(notification))
        return delivered

    async def _deliver_ephemeral(self, notification: dict[str, Any]) -> None:
        for subscription in self.subscriptions.matching(notification):
            if getattr(subscription, "is_ephemeral", False):
                await self.deliver_to(subscription, notification)

    async def _listen(self) -> None:
        """Receive every notification (``dlv:notes``) for this worker's ephemeral
        subscriptions; resubscribes after a Redis outage."""
        backoff = Backoff()
        while not self.should_stop:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(self._notes)
                self.listening.set()
                backoff.reset()
                while not self.should_stop:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None:
                        continue
                    try:
                        await self._deliver_ephemeral(orjson.loads(message["data"]))
                    except TRANSIENT_ERRORS:
                        raise
                    except Exception:
                        log.exception("ephemeral delivery failed")
            except TRANSIENT_ERRORS as exc:
                self.listening.clear()
                delay = backoff.next_delay()
                log.warning("notification fan-out: Redis error (%s), again in %.1fs", exc, delay)
                await self.sleep(delay)
            finally:
                try:
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                except Exception:  # the connection may already be gone
                    pass

    async def deliver_to(self, subscription: Any, notification: dict[str, Any]) -> int:
        kind = str(notification["type"])
        journey = str(notification.get("journeyId", ""))
        member = f"{subscription.id}|{journey}"
        if is_terminal(notification):
            # The marker holds the terminal's notification id: a retry of this same delivery
            # (after a Redis error further down) goes on; another terminal is late.
            key = f"{self.prefix}dlv:term:{subscription.id}:{journey}"
            note_id = str(notification["id"])
            if not await self.client.set(key, note_id, nx=True, ex=BOOKKEEPING_SECONDS):
                held = await self.client.get(key)
                if (held.decode() if isinstance(held, bytes) else held) != note_id:
                    self.counters["late"] += 1  # this subscription already had its terminal
                    return 0
            await self.client.zrem(self._ttl_key, member)
            await self.client.hdel(self._ttl_notes, member)
        elif (
            kind == "xcm.sent"
            and getattr(subscription, "outboundTTL", None)
            and not getattr(subscription, "is_ephemeral", False)
        ):
            deadline = time.time() + subscription.outboundTTL / 1000
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(self._ttl_notes, member, orjson.dumps(notification))
                pipe.zadd(self._ttl_key, {member: deadline}, nx=True)
                await pipe.execute()
        payload = {**notification, "subscriptionId": subscription.id}
        sent = 0
        for index in subscription.channel_indexes(kind):
            channel = subscription.channels[index]
            if channel.type == "webhook":
                if self.webhooks is not None and await self.webhooks.enqueue(
                    subscription.id, index, payload
                ):
                    sent += 1
                continue
            if not await self._first_time(subscription.id, index, str(notification["id"])):
                self.counters["duplicates"] += 1
                continue
            if channel.type == "websocket" and self.hub is not None:
                await self.hub.publish(subscription.id, payload)
                sent += 1
            elif channel.type == "log" and self.log_sink is not None:
                await self.log_sink.deliver(subscription.id, payload)
                sent += 1
        self.counters[f"delivered_{kind}"] += sent
        return sent

    async def _first_time(self, subscription_id: str, channel: int, notification_id: str) -> bool:
        key = f"{self.prefix}dlv:sent:{subscription_id}:{channel}:{notification_id}"
        return bool(await self.client.set(key, 1, nx=True, ex=BOOKKEEPING_SECONDS))

    # -- per-subscription timeouts --

    async def _timers(self) -> None:
        backoff = Backoff()
        while not self.should_stop:
            try:
                fired = await self.fire_due_timers()
                backoff.reset()
                if not fired:
                    await self.sleep(self.timer_interval)
            except TRANSIENT_ERRORS as exc:
                delay = backoff.next_delay()
                log.warning("subscription timers: Redis error (%s), retrying in %.1fs", exc, delay)
                await self.sleep(delay)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("subscription timers failed; retrying")
                await self.sleep(self.timer_interval)

    async def fire_due_timers(self, now: float | None = None) -> int:
        """Deliver ``xcm.timeout`` for each subscription timer that is due; returns how many.

        Several workers run this loop: ``ZREM`` tells which one claimed a timer."""
        now = time.time() if now is None else now
        due = await self.client.zrangebyscore(self._ttl_key, 0, now, start=0, num=100)
        fired = 0
        for raw in due:
            member = raw.decode() if isinstance(raw, bytes) else str(raw)
            note = await self.client.hget(self._ttl_notes, member)
            if not await self.client.zrem(self._ttl_key, member):
                continue  # another worker took it
            subscription_id = member.split("|", 1)[0]
            subscription = self.subscriptions.get(subscription_id)
            if note is None or subscription is None:
                await self.client.hdel(self._ttl_notes, member)
                continue
            sent = orjson.loads(note)
            timeout = {
                **sent,
                "type": "xcm.timeout",
                "id": f"{sent['journeyId']}:timeout:{len(sent.get('legs') or [1]) - 1}",
            }
            try:
                await self.deliver_to(subscription, timeout)
            except BaseException:
                # Not delivered: put the timer back (due now) for the next pass, or another
                # worker, to fire it again.
                await self.client.zadd(self._ttl_key, {member: now})
                raise
            await self.client.hdel(self._ttl_notes, member)
            self.counters["subscription_timeouts"] += 1
            fired += 1
        return fired
