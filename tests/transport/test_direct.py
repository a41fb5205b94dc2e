"""The direct feed (``ocstream/transport/direct.py``): faust's rules for a topic's messages
kept without its streams.

The feed runs with real workers in every test of the XCM dataflow (the matcher takes its
records from it: tests/xcm/test_dataflow_workers.py, tests/test_redis_restart.py, ...); here
its rules one by one, with faust's real flow control and the messages the drain loop makes
(``tests/direct_app.py``).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from ocstream.transport.direct import DirectFeed, FeedMessage, direct_feed, feeds_of
from ocstream.transport.metrics import METRICS
from tests.direct_app import feed_app, feed_message, fetched

TOPIC = "xcm-legs"


def make_app(maxsize: int = 100) -> Any:
    return feed_app(maxsize)


def message(partition: int, offset: int, generation: int = 3) -> FeedMessage:
    return feed_message(TOPIC, partition, offset, generation=generation)


async def turns(count: int) -> None:
    """Let the event loop run ``count`` times (everything ready runs), without a clock."""
    for _ in range(count):
        await asyncio.sleep(0)


def put(feed: DirectFeed, *messages: FeedMessage) -> None:
    """Put as the drain loop does when the flow is active: the put completes at once."""
    for m in messages:
        coro = feed.put(m)
        with pytest.raises(StopIteration):
            coro.send(None)


def test_messages_come_out_in_order_tracked_and_are_acked_through_the_consumer() -> None:
    app = make_app()
    feed = DirectFeed(app, TOPIC, 100)
    put(feed, message(0, 1), message(1, 7), message(0, 2))
    taken = [feed.next(), feed.next(), feed.next()]
    assert [(m.partition, m.offset) for m in taken] == [(0, 1), (1, 7), (0, 2)]
    assert feed.next() is None and len(feed) == 0
    assert app.consumer.unacked == set(taken)  # a rebalance's wait_empty waits for them
    assert all(m.tracked for m in taken)
    for m in taken:
        feed.ack(m)
        feed.ack(m)  # twice: acknowledged once
    assert app.consumer.acked == [(TP(TOPIC, 0), 1), (TP(TOPIC, 1), 7), (TP(TOPIC, 0), 2)]
    assert app.consumer.unacked == set()


def test_the_process_counters_count_what_was_taken_and_what_was_dropped() -> None:
    app = make_app()
    feed = DirectFeed(app, TOPIC, 100)
    taken, dropped = METRICS.direct_records_taken, METRICS.direct_records_dropped
    put(feed, message(0, 1), message(0, 2, generation=2), message(0, 3), message(1, 1))
    assert feed.next() is not None and feed.next() is not None  # the stale one in between
    feed.clear()
    assert METRICS.direct_records_taken - taken == 2
    assert METRICS.direct_records_dropped - dropped == 2  # the stale one, the one cleared


def test_stale_messages_are_dropped_neither_tracked_nor_acked() -> None:
    """Fetched under an earlier generation, or taken while the flow is suspended (a rebalance
    under way): not processed, and not acknowledged, so no commit covers them before the
    partition's next owner reads them again."""
    app = make_app()
    feed = DirectFeed(app, TOPIC, 100)
    old, current = message(0, 1, generation=2), message(0, 2)
    put(feed, old, current)
    assert feed.next() is current
    assert not old.tracked and old not in app.consumer.unacked
    put(feed, message(0, 3))
    app.flow_control.suspend()
    assert feed.next() is None
    assert feed.dropped == 2 and app.consumer.acked == []


async def test_a_put_waits_while_the_flow_is_suspended_and_the_feed_is_cleared_with_it() -> None:
    app = make_app()
    feed = direct_feed(app, TOPIC)
    assert feeds_of(app) == {TOPIC: feed} and feeds_of(make_app()) == {}
    with pytest.raises(ValueError, match="already has a direct feed"):
        direct_feed(app, TOPIC)
    put(feed, message(0, 1))
    app.flow_control.suspend()
    app.flow_control.clear()  # what the group does when it releases the partitions
    assert len(feed) == 0 and feed.dropped == 1
    waiting = asyncio.ensure_future(feed.put(message(0, 2)))
    await turns(5)  # nothing to wait for when nothing may happen: a few loop turns
    assert not waiting.done() and len(feed) == 0
    app.flow_control.resume()  # clears the managed queues, then lets the put through
    await asyncio.wait_for(waiting, 1)
    assert [feed.next().offset, feed.next()] == [2, None]


async def test_wait_returns_once_a_message_is_put() -> None:
    app = make_app()
    feed = DirectFeed(app, TOPIC, 100)
    waiter = asyncio.ensure_future(feed.wait())
    await turns(5)  # nothing to wait for when nothing may happen: a few loop turns
    assert not waiter.done()
    put(feed, message(0, 1))
    await asyncio.wait_for(waiter, 1)
    await asyncio.wait_for(feed.wait(), 1)  # holds one: returns at once


def test_a_partition_over_maxsize_leaves_the_fetch_until_taken_down_to_a_quarter() -> None:
    app = make_app()
    feed = DirectFeed(app, TOPIC, 8)
    busy, quiet = TP(TOPIC, 0), TP(TOPIC, 1)
    put(feed, *(message(0, n) for n in range(8)), message(1, 0))
    assert app.consumer.full == []
    put(feed, message(0, 8), message(0, 9))
    assert app.consumer.full == [busy]  # once, however many more come
    taken = []
    while not app.consumer.drops:
        taken.append(feed.next())
    assert app.consumer.drops == [busy]
    assert len([m for m in taken if m.tp == busy]) == 10 - 2  # down to 8 // 4
    assert quiet not in app.consumer.full
    put(feed, *(message(0, n) for n in range(10, 20)))
    assert app.consumer.full == [busy, busy]
    feed.clear()  # a rebalance: the partition is fetchable again for whoever gets it
    assert app.consumer.drops == [busy, busy] and len(feed) == 0


def test_a_feed_message_reads_its_value_when_first_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The drain loop makes a ``FeedMessage`` of each record of a feed topic: its value is
    decompressed the first time it is read, and only then (a notification nobody follows is
    never read), and its headers decoded when asked."""
    from ocstream.transport import direct, wire

    value = b'{"note": "' + b"x" * 2000 + b'"}'  # long enough to be stored compressed
    fields = fetched(value, headers=[("origin", b"urn:ocn:polkadot:0")], key=b"chain")
    assert b"z" in fields and b"v" not in fields
    reads: list[Any] = []
    real = wire.entry_value

    def counted(fields: Any) -> bytes | None:
        reads.append(fields)
        return real(fields)

    monkeypatch.setattr(direct, "entry_value", counted)

    tp = TP(TOPIC, 4)
    message = direct.FeedMessage(tp, 41, fields, 3)
    assert (message.topic, message.partition, message.offset, message.tp) == (TOPIC, 4, 41, tp)
    assert message.key == b"chain" and message.generation_id == 3
    assert message.headers == [("origin", b"urn:ocn:polkadot:0")]
    assert reads == []
    assert message.value == value and message.read_value() == value
    assert len(reads) == 1  # decompressed once


def test_a_feed_message_is_acknowledged_by_fausts_own_consumer_code() -> None:
    """faust's ``Consumer.ack`` (run here on the state it uses) takes a ``FeedMessage`` as it
    takes its own messages: marked acked once, its offset recorded, no longer unacked."""
    import weakref
    from collections import defaultdict

    from faust.transport.consumer import Consumer

    from ocstream.transport.direct import FeedMessage

    consumer: Any = SimpleNamespace(
        app=SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: True)),
        _committed_offset=defaultdict(lambda: None),
        _acked_index=defaultdict(set),
        _acked=defaultdict(list),
        _unacked_messages=weakref.WeakSet(),
        _n_acked=0,
        _waiting_for_ack=None,
    )
    tp = TP(TOPIC, 2)
    message = FeedMessage(tp, 9, fetched(b"{}"), 3)
    consumer._unacked_messages.add(message)
    consumer.ack = lambda m: Consumer.ack(consumer, m)
    assert message.ack(consumer) is True
    assert message.ack(consumer) is False  # once
    assert message.acked and consumer._acked[tp] == [9] and consumer._n_acked == 1
    assert message not in consumer._unacked_messages


def test_offer_adds_while_the_flow_is_active_and_leaves_the_wait_to_put() -> None:
    app = make_app()
    feed = DirectFeed(app, TOPIC, 100)
    assert feed.offer(message(0, 1)) is True
    app.flow_control.suspend()
    assert feed.offer(message(0, 2)) is False
    assert len(feed) == 1
    app.flow_control.resume()
    assert feed.offer(message(0, 2)) is True
    assert [feed.next().offset, feed.next().offset] == [1, 2]
