"""TopicWriter and the APPEND script on real Redis 7 and 6.2."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import cast
from urllib.parse import urlparse

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError

from ocstream.transport import Keyspace, TopicError, TopicWriter, scripts
from ocstream.transport.client import connect
from ocstream.transport.wire import Record, entry_value, id_to_offset
from ocstream.transport.writer import append_records
from tests.streams import axrange


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
        ids = [entry_id for entry_id, _ in await axrange(client, keys.stream("t", p))]
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


async def test_compaction_keeps_last_value_and_a_tombstone_per_deleted_key(
    redis_url: str, prefix: str
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    keys = Keyspace(prefix)
    batch = [("cl", 0, Record(f"k{i % 3}".encode(), str(i).encode(), 1)) for i in range(30)]
    batch.append(("cl", 0, Record(b"k0", None, 1)))  # delete k0
    offsets = await append_records(client, keys, batch, compacted={"cl"})
    assert offsets == list(range(31))
    entries = await axrange(client, keys.stream("cl", 0))
    latest = {fields[b"k"]: fields.get(b"v") for _, fields in entries}
    assert latest == {b"k1": b"28", b"k2": b"29", b"k0": None}
    assert len(entries) == 3  # one entry per key, the tombstone included
    # A value goes without its time (nothing reads it in a changelog); the tombstone keeps
    # it, since tombstone_retention counts from it.
    assert [sorted(fields) for _, fields in entries] == [[b"k", b"v"], [b"k", b"v"], [b"k", b"t"]]
    assert entries[-1][1][b"t"] == b"1"
    # The tombstone is listed with its seq (offset 30): retention removes tombstones by offset.
    assert await client.zrange(keys.tombstones("cl", 0), 0, -1, withscores=True) == [
        (b"0-31", 31.0)
    ]
    # A compressed value is a value, not a tombstone.
    big = b"0x" + b"ab" * 1000
    await append_records(client, keys, [("cl", 0, Record(b"k2", big, 1))], compacted={"cl"})
    entries = await axrange(client, keys.stream("cl", 0))
    assert {fields[b"k"]: entry_value(fields) for _, fields in entries}[b"k2"] == big
    assert b"z" in entries[-1][1] and await client.zcard(keys.tombstones("cl", 0)) == 1
    # Highwater survives compaction: the next write is offset 32.
    assert await append_records(client, keys, [("cl", 0, Record(b"k1", b"x", 1))], {"cl"}) == [32]
    # Writing a deleted key again drops its tombstone.
    await append_records(client, keys, [("cl", 0, Record(b"k0", b"back", 1))], {"cl"})
    assert await client.zcard(keys.tombstones("cl", 0)) == 0
    await client.aclose()


async def _check_compacted(
    client: aioredis.Redis, keys: Keyspace, newest: dict[bytes, tuple[int, bytes | None]]
) -> None:
    """The stream, its index and its tombstones hold exactly the newest record of each key
    (``newest``: key -> (offset, value or None for a delete))."""
    entries = await axrange(client, keys.stream("cl", 0))
    assert {fields[b"k"]: (id_to_offset(i), entry_value(fields)) for i, fields in entries} == (
        newest
    )
    assert len(entries) == len(newest)
    index = cast(dict[bytes, bytes], await client.hgetall(keys.compaction_index("cl", 0)))
    assert {k: id_to_offset(v) for k, v in index.items()} == {k: o for k, (o, _) in newest.items()}
    tombs = cast(
        list[tuple[bytes, float]],
        await client.zrange(keys.tombstones("cl", 0), 0, -1, withscores=True),
    )
    assert sorted((id_to_offset(i), int(score)) for i, score in tombs) == sorted(
        (o, o + 1) for o, v in newest.values() if v is None
    )


@pytest.mark.parametrize("seed", range(3))
async def test_compaction_in_calls_of_any_size_and_order(
    redis_url: str, prefix: str, seed: int
) -> None:
    """Random writes and deletes of a few keys, in calls of 1 to 40 records: after every call,
    what is left is what a dict of the newest record per key says (a key written, deleted and
    written again in one call; a tombstone replaced in the call that wrote it)."""
    rnd = random.Random(seed)
    client = aioredis.Redis.from_url(redis_url)
    keys = Keyspace(prefix)
    newest: dict[bytes, tuple[int, bytes | None]] = {}
    offset = 0
    for _ in range(40):
        batch = []
        for _ in range(rnd.randint(1, 40)):
            key = f"k{rnd.randrange(6)}".encode()
            value = None if rnd.random() < 0.3 else rnd.choice([b"x", b"0x" + b"ab" * 600])
            batch.append(("cl", 0, Record(key, value, 1)))
        offsets = await append_records(client, keys, batch, compacted={"cl"})
        assert offsets == list(range(offset, offset + len(batch)))
        for o, (_, _, record) in zip(offsets, batch, strict=True):
            assert record.key is not None
            newest[record.key] = (cast(int, o), record.value)  # offsets checked above
        offset += len(batch)
        await _check_compacted(client, keys, newest)
    await client.aclose()


async def test_compaction_of_a_call_larger_than_the_scripts_steps(
    redis_url: str, prefix: str
) -> None:
    """A call of 2,600 records over 1,100 keys (the script reads and writes the index 500 keys
    at a time), over entries of an earlier call."""
    client = aioredis.Redis.from_url(redis_url)
    keys = Keyspace(prefix)
    first = [("cl", 0, Record(f"k{i}".encode(), b"old", 1)) for i in range(1100)]
    await append_records(client, keys, first, compacted={"cl"})
    batch = [
        ("cl", 0, Record(f"k{(i * 7) % 1100}".encode(), None if i % 5 == 0 else b"new", 1))
        for i in range(2600)
    ]
    offsets = await append_records(client, keys, batch, compacted={"cl"})
    assert offsets == list(range(1100, 3700))
    newest: dict[bytes, tuple[int, bytes | None]] = {}
    for o, (_, _, record) in zip(offsets, batch, strict=True):
        assert record.key is not None
        newest[record.key] = (cast(int, o), record.value)  # offsets checked above
    await _check_compacted(client, keys, newest)
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


class CuttingProxy:
    """A TCP proxy to Redis that, once armed, passes only so many more of the client's bytes
    and then drops both connections: what Redis is left with when the process writing is
    killed while its socket still holds part of a round trip."""

    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        self.target = (parsed.hostname or "127.0.0.1", parsed.port or 6379)
        self.allowance: int | None = None
        self.cut = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> CuttingProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    def arm(self, allowance: int) -> None:
        self.allowance = allowance

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)

        async def down() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()

        replies = asyncio.ensure_future(down())
        try:
            while data := await reader.read(65536):
                if self.allowance is not None and len(data) >= self.allowance:
                    up_writer.write(data[: self.allowance])
                    await up_writer.drain()
                    self.cut.set()
                    return
                if self.allowance is not None:
                    self.allowance -= len(data)
                up_writer.write(data)
                await up_writer.drain()
        finally:
            up_writer.close()
            writer.close()
            replies.cancel()


def _append_batch(partitions: int, per_partition: int) -> list[tuple[str, int, Record]]:
    """Records for ``partitions`` partitions of a plain topic and of a changelog."""
    return [
        (topic, p, Record(key=b"k%d" % n, value=b"v" * 400, timestamp_ms=1))
        for topic in ("plain", "table-changelog")
        for p in range(partitions)
        for n in range(per_partition)
    ]


async def _written(
    client: aioredis.Redis, keys: Keyspace, partitions: int
) -> dict[str, tuple[int, int]]:
    """Per partition of :func:`_append_batch`'s topics that holds anything: its entries and its
    sequence counter."""
    out: dict[str, tuple[int, int]] = {}
    for topic in ("plain", "table-changelog"):
        for p in range(partitions):
            length = await client.xlen(keys.stream(topic, p))
            counter = int(await client.get(keys.sequence(topic, p)) or 0)
            if length or counter:
                out[f"{topic}:{p}"] = (length, counter)
    return out


def _whole(partitions: int, per_partition: int) -> dict[str, tuple[int, int]]:
    """What :func:`_written` finds once :func:`_append_batch` is written once: every partition
    holds its records (their keys differ, so compaction keeps them all), the counter at the
    last."""
    return {
        f"{topic}:{p}": (per_partition, per_partition)
        for topic in ("plain", "table-changelog")
        for p in range(partitions)
    }


async def _until_dropped(client: aioredis.Redis, name: str) -> None:
    """Wait until Redis has closed the connections named ``name`` (it runs, or drops, what a
    closed connection sent before it frees it)."""
    deadline = asyncio.get_running_loop().time() + 10
    while any(c.get("name") == name for c in await client.client_list()):
        assert asyncio.get_running_loop().time() < deadline, f"{name}'s connection stays open"
        await asyncio.sleep(0.02)


async def test_a_round_trip_cut_short_writes_no_partition(redis_url: str, prefix: str) -> None:
    """A worker killed while the socket still held part of a round trip (here a proxy drops
    the connection half way through it): Redis ran the complete commands it got, so with a
    plain pipeline the first partitions were written and the rest not. A changelog change
    could then be in Redis without the notification queued before it. The round trip is one
    transaction, which Redis drops without its ``EXEC``: no partition is written, and the
    producer's retry writes all of them once."""
    keys = Keyspace(prefix)
    batch = _append_batch(4, 30)
    direct = aioredis.Redis.from_url(redis_url)
    await direct.script_load(scripts.APPEND)  # else every call of the cut round trip is NOSCRIPT
    async with CuttingProxy(redis_url) as proxy:
        name = f"cut-{prefix.rstrip(':')}"
        client = connect(proxy.url, name=name)
        try:
            await client.ping()  # the connection and its handshake, before the cut is armed
            proxy.arm(sum(len(record.value or b"") for _, _, record in batch) // 2)
            with pytest.raises(RedisConnectionError):
                await append_records(client, keys, batch, {"table-changelog"})
            assert proxy.cut.is_set()
        finally:
            await client.aclose()
    await _until_dropped(direct, name)
    assert await _written(direct, keys, 4) == {}
    offsets = await append_records(direct, keys, batch, {"table-changelog"})
    assert offsets == [n for _ in range(8) for n in range(30)]
    assert await _written(direct, keys, 4) == _whole(4, 30)
    await direct.aclose()


@pytest.mark.parametrize("server", ["redis62", "redis7"])
async def test_a_round_trip_that_reaches_maxmemory_is_written_whole_or_not_at_all(
    server: str, tmp_path: Path
) -> None:
    """Memory grows as a round trip is written, so a Redis reaches its ``maxmemory`` part way
    through one. A plain pipeline then had its first partitions written and the rest refused
    ``OOM``. In a transaction, Redis refuses to queue a command once it is out of memory, which
    discards all of it. Tried at limits from just above the memory in use to above what the
    round trip needs: each round trip is written whole or refused whole (and then retried by
    the producer), and both happen. A private server, of both versions (``maxmemory`` is
    server-wide)."""
    from tests.own_redis import start_version

    redis_server = start_version(server, tmp_path / "redis")
    client = aioredis.Redis.from_url(redis_server.url)
    batch = _append_batch(4, 100)  # 320 kB of values in 8 script calls
    whole = [n for _ in range(8) for n in range(100)]
    outcomes = set()
    try:
        await client.script_load(scripts.APPEND)
        await client.config_set("maxmemory-policy", "noeviction")
        for step in range(16):
            keys = Keyspace(f"oom{step}:")
            await client.config_set("maxmemory", 0)
            used = int((await client.info("memory"))["used_memory"])
            await client.config_set("maxmemory", used + 20_000 + step * 60_000)
            replies = await append_records(client, keys, batch, {"table-changelog"})
            written = await _written(client, keys, 4)
            if replies == whole:
                outcomes.add("written")
                assert written == _whole(4, 100), (step, written)
            else:
                outcomes.add("refused")
                assert all(isinstance(reply, OutOfMemoryError) for reply in replies), (
                    step,
                    replies[::100],
                )
                assert written == {}, (step, written)
        assert outcomes == {"written", "refused"}
    finally:
        await client.aclose()
        redis_server.stop()


async def test_a_round_trip_after_the_script_cache_is_flushed_is_written_once(
    redis_url: str, prefix: str
) -> None:
    """After a restart or ``SCRIPT FLUSH``, every call of a round trip's transaction is answered
    NOSCRIPT at its ``EXEC`` and did nothing: the script is loaded and the calls are sent again,
    once, together."""
    keys = Keyspace(prefix)
    batch = _append_batch(3, 5)
    client = connect(redis_url)
    try:
        await client.script_flush()
        assert await append_records(client, keys, batch, {"table-changelog"}) == [
            n for _ in range(6) for n in range(5)
        ]
        assert await _written(client, keys, 3) == _whole(3, 5)
    finally:
        await client.aclose()
