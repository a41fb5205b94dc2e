"""TopicWriter and the APPEND script on real Redis 7 and 6.2."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from ocstream.transport import Keyspace, TopicError, TopicWriter
from ocstream.transport.retention import apply as apply_retention
from ocstream.transport.settings import TransportSettings
from ocstream.transport.wire import Record, entry_value, id_to_offset
from ocstream.transport.writer import append_records


async def test_concurrent_writers_get_dense_unique_offsets(redis_url: str, prefix: str) -> None:
    writers = [TopicWriter.from_url(redis_url, prefix=prefix) for _ in range(4)]
    await writers[0].create_topic("t", 2)

    async def write(writer: TopicWriter, n: int) -> list[int]:
        offsets: list[int] = []
        for i in range(25):
            items = [(None, f"{n}-{i}-{j}") for j in range(4)]
            offsets += await writer.send_many("t", items, partition=i % 2)
        return offsets

    results = await asyncio.gather(*(write(w, n) for n, w in enumerate(writers)))
    for writer in writers:
        await writer.close()
    client = aioredis.Redis.from_url(redis_url)
    keys = Keyspace(prefix)
    lengths = []
    for p in range(2):
        ids = [entry_id for entry_id, _ in await client.xrange(keys.stream("t", p))]
        assert [id_to_offset(i) for i in ids] == list(range(len(ids)))  # dense, from 0
        lengths.append(len(ids))
    assert lengths == [208, 192]  # batches i = 0, 2, … 24 went to partition 0
    assert sum(len(r) for r in results) == 400
    await client.aclose()


async def test_lost_sequence_counter_resumes_after_the_stream(redis_url: str, prefix: str) -> None:
    async with TopicWriter.from_url(redis_url, prefix=prefix) as writer:
        await writer.create_topic("t", 1)
        assert await writer.send_many("t", [(b"k", b"v")] * 3) == [0, 1, 2]
        await writer.client.delete(Keyspace(prefix).sequence("t", 0))
        assert await writer.send_many("t", [(b"k", b"v")] * 2) == [3, 4]
        assert await writer.send("t", value=b"x") == 5


async def test_topics_are_created_once_and_partitions_checked(redis_url: str, prefix: str) -> None:
    async with TopicWriter.from_url(redis_url, prefix=prefix, default_partitions=3) as writer:
        assert await writer.create_topic("a", 5) == 5
        assert await writer.create_topic("a", 9) == 5  # an existing topic keeps its count
        await writer.send("b", key=b"k", value=b"v")  # auto-created with the default
        assert await writer.topics.get("b") == 3
        with pytest.raises(TopicError, match="has 5 partitions"):
            await writer.send("a", value=b"v", partition=5)
        with pytest.raises(TopicError):
            await writer.create_topic("c", 0)


async def test_compaction_keeps_last_value_and_tombstones_expire(
    redis_url: str, prefix: str
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    keys = Keyspace(prefix)
    batch = [("cl", 0, Record(f"k{i % 3}".encode(), str(i).encode(), 1)) for i in range(30)]
    batch.append(("cl", 0, Record(b"k0", None, 1)))  # delete k0
    offsets = await append_records(client, keys, batch, compacted={"cl"})
    assert offsets == list(range(31))
    entries = await client.xrange(keys.stream("cl", 0))
    latest = {fields[b"k"]: fields.get(b"v") for _, fields in entries}
    assert latest == {b"k1": b"28", b"k2": b"29", b"k0": None}
    assert len(entries) == 3  # one entry per key, the tombstone included
    assert await client.zcard(keys.tombstones("cl", 0)) == 1
    # A compressed value is a value, not a tombstone.
    big = b"0x" + b"ab" * 1000
    await append_records(client, keys, [("cl", 0, Record(b"k2", big, 1))], compacted={"cl"})
    entries = await client.xrange(keys.stream("cl", 0))
    assert {fields[b"k"]: entry_value(fields) for _, fields in entries}[b"k2"] == big
    assert b"z" in entries[-1][1] and await client.zcard(keys.tombstones("cl", 0)) == 1
    # Highwater survives compaction: the next write is offset 32.
    assert await append_records(client, keys, [("cl", 0, Record(b"k1", b"x", 1))], {"cl"}) == [32]

    settings = TransportSettings(tombstone_retention=0)
    await apply_retention(client, keys, settings, {"cl": 1}, compacted={"cl"})
    entries = await client.xrange(keys.stream("cl", 0))
    assert {fields[b"k"] for _, fields in entries} == {b"k1", b"k2"}
    assert not await client.hexists(keys.compaction_index("cl", 0), "k0")
    assert await client.zcard(keys.tombstones("cl", 0)) == 0
    await client.aclose()


async def test_retention_trims_and_reports_uncommitted_entries(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    from ocstream.transport.metrics import METRICS

    client = aioredis.Redis.from_url(redis_url)
    keys = Keyspace(prefix)
    await append_records(client, keys, [("ev", 0, Record(None, b"v", 1))] * 100)
    await client.sadd(keys.groups, "slow", "fast")
    for group, committed in (("slow", 50), ("fast", 95)):
        await client.sadd(keys.group(group).topics, "ev")
        await client.hset(keys.group(group).offsets, "ev\x1f0", committed)
    before = METRICS.retention_trimmed_uncommitted
    await apply_retention(client, keys, TransportSettings(max_len=30), {"ev": 1}, compacted=())
    first = await client.xrange(keys.stream("ev", 0), count=1)
    assert id_to_offset(first[0][0]) == 70 and await client.xlen(keys.stream("ev", 0)) == 30
    # The slow group had not committed offsets 50..69: that loss is logged and counted.
    assert METRICS.retention_trimmed_uncommitted - before == 20
    assert any(
        "'slow'" in r.getMessage() and "20 entries" in r.getMessage() for r in caplog.records
    )
    assert not any("'fast'" in r.getMessage() for r in caplog.records)
    # A per-topic limit overrides the default; 0 keeps everything.
    await client.hset(keys.retention, "ev", 0)
    await append_records(client, keys, [("ev", 0, Record(None, b"v", 1))] * 10)
    await apply_retention(client, keys, TransportSettings(max_len=5), {"ev": 1}, compacted=())
    assert await client.xlen(keys.stream("ev", 0)) == 40
    await client.aclose()


async def test_acl_user_and_password_come_from_the_url(redis_url: str, prefix: str) -> None:
    import uuid

    import redis as sync_redis
    from yarl import URL

    admin = sync_redis.Redis.from_url(redis_url)
    user = f"ocs-{uuid.uuid4().hex[:8]}"
    # Only keys under this test's prefix: the transport must never touch anything else.
    admin.acl_setuser(
        user, enabled=True, passwords=["+s3cret"], keys=[f"{prefix}*"], commands=["+@all"]
    )
    try:
        url = str(URL(redis_url).with_user(user).with_password("s3cret"))
        async with TopicWriter.from_url(url, prefix=prefix) as writer:
            await writer.create_topic("t", 2)
            assert await writer.send_many("t", [(b"k", b"v")] * 3, partition=1) == [0, 1, 2]
        bad = str(URL(redis_url).with_user(user).with_password("wrong"))
        async with TopicWriter.from_url(bad, prefix=prefix) as writer:
            with pytest.raises(sync_redis.AuthenticationError):
                await writer.send("t", value=b"v")
    finally:
        admin.acl_deluser(user)
