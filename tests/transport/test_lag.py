"""A group's lag read from Redis (ocstream.transport.lag), on real Redis 7 and 6.2: topics
written by the real append script, offsets where the group's commit puts them."""

from __future__ import annotations

import redis

from ocstream.transport import Keyspace, TopicWriter
from ocstream.transport.keys import offset_field
from ocstream.transport.lag import group_lag, group_topics


async def test_lag_is_the_end_minus_the_committed_offset(redis_url: str, prefix: str) -> None:
    keys = Keyspace(prefix)
    async with TopicWriter.from_url(redis_url, prefix=prefix) as writer:
        await writer.create_topic("a", 3)
        await writer.create_topic("b", 1)
        await writer.create_topic("a-changelog", 3)
        await writer.send_many("a", [(None, b"x")] * 5, partition=0)
        await writer.send_many("a", [(None, b"x")] * 2, partition=2)
        await writer.send_many("b", [(None, b"x")] * 4, partition=0)
        await writer.send_many("a-changelog", [(b"k", b"x")] * 3, partition=1)
    client = redis.Redis.from_url(redis_url)
    try:
        group = keys.group("g")
        # What a member's subscribe and the group's commits leave (consumer.py, group.py).
        client.sadd(group.topics, "a", "b", "a-changelog", "never-created")
        client.hset(group.offsets, mapping={offset_field("a", 0): 3, offset_field("b", 0): 4})
        assert group_topics(client, keys, "g") == ["a", "b", "never-created"]
        assert group_lag(client, keys, "g") == {
            ("a", 0): 2,  # 5 written, 3 committed
            ("a", 1): 0,  # nothing written
            ("a", 2): 2,  # nothing committed
            ("b", 0): 0,
        }
        # Topics named: the changelog counts too when asked for, an unknown topic adds nothing.
        assert group_lag(client, keys, "g", ["a-changelog", "zzz"]) == {
            ("a-changelog", 0): 0,
            ("a-changelog", 1): 3,
            ("a-changelog", 2): 0,
        }
        # A commit past the end (the counters lost with a Redis that restarted empty) is no lag.
        client.hset(group.offsets, offset_field("a", 2), 9)
        assert group_lag(client, keys, "g", ["a"])[("a", 2)] == 0
        assert group_lag(client, keys, "other") == {}
    finally:
        client.close()
