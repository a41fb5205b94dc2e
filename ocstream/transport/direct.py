"""A topic's records handed from the drain loop to one agent in batches, without faust's
per-record stream machinery.

faust delivers each fetched record through the conductor (a lock, the topic's channels, the
key and value decoded through its schema, codec and registry layers, an ``Event``), a flow
controlled queue, and the stream's iterator (a ``sleep(0)``, generation and flow checks,
tracking, sensors, the current event in a context variable), and takes it back through
``Stream.ack``. For the XCM matcher, which takes its records in batches anyway and
acknowledges them by hand after each batch's flush, that machinery cost about a sixth of a
worker's CPU (``docs/benchmarks.md``, "Issue 14, eighteenth round").

A :class:`DirectFeed` is registered for a topic before the worker starts
(:func:`direct_feed`). The drain loop (``drain.py``) then puts the topic's messages in the
feed instead of calling the conductor, and the agent takes them (:meth:`DirectFeed.next`),
decodes them itself, and acknowledges them through the consumer (:meth:`DirectFeed.ack`).
faust's rules are kept:

* **Tracking.** A message taken is tracked as pending (``consumer.unacked``), as the stream
  does, so a rebalance (``wait_empty``) and a stop wait for its batch to be flushed and
  acknowledged before the partition's tables are closed and its offsets committed.
* **Flow control.** While faust's flow is suspended (a rebalance, a recovery), a put waits
  for it to resume, as a put into a stream's queue does; the drain loop races that wait with
  the consumer's ``suspend_flow``, as for any delivery. The feed is cleared with the streams'
  queues (``flow_control.clear``): what it held was not tracked nor acknowledged, and the
  next owner of the partition (maybe this worker) reads it again from the committed offset.
* **Stale messages.** A message fetched under an earlier generation, or taken while the flow
  is suspended, is dropped, not processed (faust's stream skips it too); it is not
  acknowledged either, so no commit can cover it before it is read again.
* **Counters.** ``ocstream_transport_direct_records_taken_total`` and
  ``..._dropped_total`` (the stale ones) on ``/metrics``.
* **Messages.** The drain loop makes a :class:`FeedMessage` of each record, not faust's
  ``ConsumerMessage``: it holds what the agents and faust's ``Consumer.ack`` use, and its
  value is decompressed when first read, so a notification that nobody follows is never
  decompressed.
* **Back-pressure.** A partition with more than ``maxsize`` messages in the feed is taken out
  of the fetch (``consumer.on_buffer_full``) until the agent has taken it down to a quarter
  (``on_buffer_drop``), as a stream's queue does at its pressure marks.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from faust.types import TP

from .metrics import METRICS
from .wire import decode_headers, entry_value

__all__ = ["DirectFeed", "FeedMessage", "direct_feed", "feeds_of"]

_UNREAD = object()


class FeedMessage:
    """A fetched record of a topic with a direct feed, as its agent and faust's consumer use it:
    what faust's ``ConsumerMessage`` holds that they read, built for less. The value is
    decompressed when first read, and the headers decoded when read: a notification nobody
    follows is delivered (or skipped) by its ``origin`` header alone."""

    __slots__ = (
        "topic",
        "partition",
        "offset",
        "tp",
        "key",
        "generation_id",
        "acked",
        "tracked",
        "time_in",
        "time_out",
        "time_total",
        "_fields",
        "_value",
        "__weakref__",
    )

    def __init__(self, tp: TP, offset: int, fields: dict[bytes, bytes], generation_id: int) -> None:
        self.topic = tp.topic
        self.partition = tp.partition
        self.offset = offset
        self.tp = tp
        self.key = fields.get(b"k")
        self.generation_id = generation_id
        self.acked = False
        self.tracked = False
        self.time_in: float | None = None
        self.time_out: float | None = None
        self.time_total: float | None = None
        self._fields = fields
        self._value: Any = _UNREAD

    @property
    def value(self) -> bytes | None:
        return self.read_value()

    def read_value(self) -> bytes | None:
        """The value, decompressed the first time it is read."""
        value = self._value
        if value is _UNREAD:
            value = self._value = entry_value(self._fields)
        return value  # type: ignore[no-any-return]

    @property
    def headers(self) -> list[tuple[str, bytes]]:
        return decode_headers(self._fields.get(b"h"))

    def ack(self, consumer: Any) -> bool:
        """Acknowledge through the consumer (faust's ``Consumer.ack`` marks it acked)."""
        acked: bool = consumer.ack(self)
        return acked

    def __repr__(self) -> str:
        return f"<FeedMessage: {self.tp} offset={self.offset}>"


class DirectFeed:
    """The messages of one topic, fetched and not yet taken by its agent."""

    def __init__(self, app: Any, topic: str, maxsize: int) -> None:
        self.app = app
        self.topic = topic
        self.maxsize = maxsize
        self._messages: deque[Any] = deque()
        self._per_tp: dict[TP, int] = {}
        self._full: set[TP] = set()
        self._ready = asyncio.Event()
        #: Messages dropped as stale (an earlier generation, or the flow suspended).
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._messages)

    async def put(self, message: Any) -> None:
        """Add a fetched message (the drain loop); waits while faust's flow is suspended."""
        flow = self.app.flow_control
        if not flow.is_active():
            await flow.acquire()
        self._add(message)

    def offer(self, message: Any) -> bool:
        """Add a fetched message unless faust's flow is suspended (then :meth:`put` waits)."""
        if not self.app.flow_control.is_active():
            return False
        self._add(message)
        return True

    def _add(self, message: Any) -> None:
        self._messages.append(message)
        tp = message.tp
        count = self._per_tp[tp] = self._per_tp.get(tp, 0) + 1
        if count > self.maxsize and tp not in self._full:
            self._full.add(tp)
            self.app.consumer.on_buffer_full(tp)
        self._ready.set()

    async def wait(self) -> None:
        """Return once the feed holds a message."""
        while not self._messages:
            self._ready.clear()
            await self._ready.wait()

    def next(self) -> Any:
        """The next message to process, tracked as pending; None when the feed is empty.
        Stale messages on the way are dropped (see the module docstring)."""
        app = self.app
        messages = self._messages
        while messages:
            message = messages.popleft()
            self._taken_out(message.tp)
            if (
                message.generation_id != app.consumer_generation_id
                or not app.flow_control.is_active()
            ):
                self.dropped += 1
                METRICS.direct_records_dropped += 1
                continue
            if not message.tracked:
                message.tracked = True
                app.consumer.unacked.add(message)
                app.sensors.on_message_in(message.tp, message.offset, message)
            METRICS.direct_records_taken += 1
            return message
        return None

    def ack(self, message: Any) -> None:
        """Acknowledge a message taken with :meth:`next` (after its batch is flushed)."""
        if message.ack(self.app.consumer):
            self.app.sensors.on_message_out(message.tp, message.offset, message)

    def clear(self) -> None:
        """Drop everything held (faust's ``flow_control.clear``, at a rebalance)."""
        self.dropped += len(self._messages)
        METRICS.direct_records_dropped += len(self._messages)
        self._messages.clear()
        self._per_tp.clear()
        full, self._full = self._full, set()
        for tp in full:
            self.app.consumer.on_buffer_drop(tp)

    def _taken_out(self, tp: TP) -> None:
        count = self._per_tp[tp] = self._per_tp[tp] - 1
        if tp in self._full and count <= self.maxsize // 4:
            self._full.discard(tp)
            self.app.consumer.on_buffer_drop(tp)
        if not count:
            del self._per_tp[tp]


def direct_feed(app: Any, topic: str) -> DirectFeed:
    """Register a feed for ``topic`` on ``app`` (before the worker fetches anything): from then
    on its messages go to the feed, not to faust's streams. The feed is cleared with the
    streams' queues."""
    feeds = app.__dict__.setdefault("direct_feeds", {})
    if topic in feeds:
        raise ValueError(f"topic {topic!r} already has a direct feed")
    feed = feeds[topic] = DirectFeed(app, topic, app.conf.stream_buffer_maxsize)
    app.flow_control.manage_queue(feed)
    return feed


def feeds_of(app: Any) -> dict[str, DirectFeed]:
    """The feeds registered on ``app``, by topic (the drain loop's lookup; empty if none)."""
    feeds: dict[str, DirectFeed] = app.__dict__.get("direct_feeds") or {}
    return feeds
