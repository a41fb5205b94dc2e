"""The drain loop's way to a direct feed (``ocstream/transport/drain.py``, ``_Drain``): the
checks faust's ``getmany`` and drain loop make before a record goes on, applied to a fetched
partition's records before they become ``FeedMessage`` objects in the feed.

The consumer here holds only the state those checks read and write (faust's real one needs a
running transport; every worker test runs the loop with it); the feed, its flow control and
the messages are the real ones.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from ocstream.transport.direct import DirectFeed
from ocstream.transport.drain import _Drain
from tests.direct_app import feed_app, fetched

TOPIC = "xcm-legs"
TP0 = TP(TOPIC, 0)


def consumer_of(app: Any, **extra: Any) -> Any:
    """The consumer state ``_Drain`` reads and writes, recorded."""
    consumer = SimpleNamespace(
        app=app,
        flow_active=True,
        _read_offset=defaultdict(lambda: None),
        _buffered_partitions=set(),
        _commit_every=None,
        _n_acked=0,
        gaps=[],
        commits=0,
        highwater=lambda tp: 1000,
        **extra,
    )

    async def add_gap(tp: TP, start: int, end: int) -> None:
        consumer.gaps.append((tp, start, end))

    async def commit() -> None:
        consumer.commits += 1

    consumer._add_gap = add_gap
    consumer.commit = commit
    app.topics = SimpleNamespace(acks_enabled_for=lambda topic: True)
    app.monitor = SimpleNamespace(track_tp_end_offset=lambda tp, offset: None)
    return consumer


def batch(*offsets: int) -> list[tuple[int, dict[bytes, bytes]]]:
    return [(offset, fetched(b'{"n": %d}' % offset)) for offset in offsets]


async def test_records_become_feed_messages_of_the_fetch_generation_and_move_the_read_offset() -> (
    None
):
    app = feed_app()
    consumer = consumer_of(app)
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
    assert consumer.gaps == [(TP0, 6, 8)]


async def test_a_new_generation_or_a_stopped_flow_leaves_the_rest_of_the_fetch_unread() -> None:
    app = feed_app()
    consumer = consumer_of(app)
    feed = DirectFeed(app, TOPIC, 100)
    drain = _Drain(consumer, app.consumer_generation_id, {TP0})
    app.consumer_generation_id += 1  # a rebalance while the fetch was under way
    assert not await drain.to_feed(feed, TP0, batch(0, 1))
    assert len(feed) == 0 and consumer._read_offset[TP0] is None and drain.stopped

    app = feed_app()
    consumer = consumer_of(app)
    feed = DirectFeed(app, TOPIC, 100)
    drain = _Drain(consumer, app.consumer_generation_id, {TP0})
    consumer.flow_active = False
    assert not await drain.to_feed(feed, TP0, batch(0, 1))
    assert len(feed) == 0 and consumer._read_offset[TP0] is None


async def test_a_partition_no_longer_active_is_skipped_unless_its_buffer_is_full() -> None:
    app = feed_app()
    consumer = consumer_of(app)
    feed = DirectFeed(app, TOPIC, 100)
    other = TP(TOPIC, 1)
    drain = _Drain(consumer, app.consumer_generation_id, {other})
    assert await drain.to_feed(feed, TP0, batch(0, 1))  # the fetch goes on with the others
    assert len(feed) == 0 and consumer._read_offset[TP0] is None
    consumer._buffered_partitions.add(TP0)
    assert await drain.to_feed(feed, TP0, batch(0, 1))
    assert len(feed) == 2 and consumer._read_offset[TP0] == 1


async def test_every_commit_every_acks_the_loop_commits() -> None:
    app = feed_app()
    consumer = consumer_of(app)
    consumer._commit_every = 10
    consumer._n_acked = 10
    feed = DirectFeed(app, TOPIC, 100)
    drain = _Drain(consumer, app.consumer_generation_id, None)
    assert await drain.to_feed(feed, TP0, batch(0, 1))
    assert consumer.commits == 1 and consumer._n_acked == 0
