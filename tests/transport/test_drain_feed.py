"""The drain loop's way to a direct feed (``ocstream/transport/drain.py``, ``_Drain``): the
checks faust's ``getmany`` and drain loop make before a record goes on, applied to a fetched
partition's records before they become ``FeedMessage`` objects in the feed.

The consumer is ocstream's own, built by a faust app on a real Redis but not started (no
fetch runs): the read offsets, gaps, acks, flow and generation the checks read and write are
its real state. Every worker test runs the whole loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import faust
import pytest
from faust.types import TP

from ocstream.transport.direct import DirectFeed
from ocstream.transport.drain import _Drain
from ocstream.transport.settings import TransportSettings
from tests.direct_app import fetched

TOPIC = "xcm-legs"
TP0 = TP(TOPIC, 0)


@pytest.fixture
async def app(redis_url: str, prefix: str) -> AsyncIterator[Any]:
    app: Any = faust.App("drain-feed", broker=redis_url, broker_commit_every=10)
    app.transport_settings = TransportSettings(prefix=prefix)
    app.consumer_generation_id = 3
    topic = app.topic(TOPIC)
    app.topics.add(topic)
    await app.topics._update_indices()  # what the conductor does at start: acks for the topic
    app.flow_control.resume()  # as after a worker's first assignment and recovery
    yield app
    await app.consumer.client.aclose()
    await app.consumer.fetch_client.aclose()


def batch(*offsets: int) -> list[tuple[int, dict[bytes, bytes]]]:
    return [(offset, fetched(b'{"n": %d}' % offset)) for offset in offsets]


async def test_records_become_feed_messages_of_the_fetch_generation_and_move_the_read_offset(
    app: Any,
) -> None:
    consumer = app.consumer
    feed = DirectFeed(app, TOPIC, 100)
    consumer._read_offset[TP0] = 4
    drain = _Drain(consumer, app.consumer_generation_id, {TP0})
    assert await drain.to_feed(feed, TP0, batch(3, 4, 5, 8))
    taken = [feed.next() for _ in range(len(feed))]
    # 3 was read before (below the read offset); 4, at the read offset, goes on (faust's rule:
    # at or past it); the gap 6-7 (a compacted or deleted range) is registered for the acks.
    assert [(m.offset, m.value) for m in taken] == [
        (4, b'{"n": 4}'),
        (5, b'{"n": 5}'),
        (8, b'{"n": 8}'),
    ]
    assert all(m.generation_id == app.consumer_generation_id and m.tp == TP0 for m in taken)
    assert consumer._read_offset[TP0] == 8
    # faust's _add_gap(tp, 6, 8), as its own loop calls it, holds the interval [6, 9).
    assert [(i.begin, i.end) for i in consumer._gap[TP0]] == [(6, 9)]


async def test_a_new_generation_or_a_stopped_flow_leaves_the_rest_of_the_fetch_unread(
    app: Any,
) -> None:
    consumer = app.consumer
    feed = DirectFeed(app, TOPIC, 100)
    drain = _Drain(consumer, app.consumer_generation_id, {TP0})
    app.consumer_generation_id += 1  # a rebalance while the fetch was under way
    assert not await drain.to_feed(feed, TP0, batch(0, 1))
    assert len(feed) == 0 and consumer._read_offset[TP0] is None and drain.stopped

    drain = _Drain(consumer, app.consumer_generation_id, {TP0})
    consumer.stop_flow()
    assert not await drain.to_feed(feed, TP0, batch(0, 1))
    assert len(feed) == 0 and consumer._read_offset[TP0] is None


async def test_a_partition_no_longer_active_is_skipped_unless_its_buffer_is_full(app: Any) -> None:
    consumer = app.consumer
    feed = DirectFeed(app, TOPIC, 100)
    other = TP(TOPIC, 1)
    drain = _Drain(consumer, app.consumer_generation_id, {other})
    assert await drain.to_feed(feed, TP0, batch(0, 1))  # the fetch goes on with the others
    assert len(feed) == 0 and consumer._read_offset[TP0] is None
    consumer._buffered_partitions.add(TP0)
    assert await drain.to_feed(feed, TP0, batch(0, 1))
    assert len(feed) == 2 and consumer._read_offset[TP0] == 1


async def test_every_commit_every_acks_the_loop_commits(app: Any) -> None:
    consumer = app.consumer
    assert consumer._commit_every == 10
    consumer._n_acked = 10  # ten acks since the last commit
    feed = DirectFeed(app, TOPIC, 100)
    drain = _Drain(consumer, app.consumer_generation_id, None)
    assert await drain.to_feed(feed, TP0, batch(0, 1))
    assert consumer._n_acked == 0  # the loop committed (nothing was pending: no offset moves)
