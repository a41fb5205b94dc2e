"""The direct feed (``ocstream/transport/direct.py``): faust's rules for a topic's messages
kept without its streams.

The feed runs with real workers in every test of the XCM dataflow (the matcher takes its
records from it: tests/xcm/test_dataflow_workers.py, tests/test_redis_restart.py, ...); here
its rules one by one, with faust's real flow control and messages around it
(``tests/direct_app.py``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from faust.types import TP, ConsumerMessage

from ocstream.transport.direct import DirectFeed, direct_feed, feeds_of
from ocstream.transport.metrics import METRICS
from tests.direct_app import consumer_message, feed_app

TOPIC = "xcm-legs"


def make_app(maxsize: int = 100) -> Any:
    return feed_app(maxsize)


def message(partition: int, offset: int, generation: int = 3) -> ConsumerMessage:
    return consumer_message(TOPIC, partition, offset, generation=generation)


async def turns(count: int) -> None:
    """Let the event loop run ``count`` times (everything ready runs), without a clock."""
    for _ in range(count):
        await asyncio.sleep(0)


def put(feed: DirectFeed, *messages: ConsumerMessage) -> None:
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
