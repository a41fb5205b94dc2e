"""``TableBatch``: what a batch writes to RocksDB and to the changelog in Redis; and the
producer's paths for records nobody waits for one by one (``queue_many``, ``queue``).

faust's real RocksDB store (ocstream's subclass) on disk, and ocstream's Redis producer on a
real Redis, started on their own (no worker); whole workers run the batch in
``tests/xcm/test_dataflow_workers.py`` and the crash tests of ``tests/e2e``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import faust
import orjson
import pytest
import redis.asyncio as aioredis
import rocksdict
from faust.types import TP

from ocstream.runtime import Table
from ocstream.tablebatch import TableBatch
from ocstream.transport.keys import Keyspace
from ocstream.transport.metrics import METRICS
from ocstream.transport.producer import MAX_IN_FLIGHT, Producer
from ocstream.transport.settings import PRODUCE_BATCH_RECORDS, TransportSettings
from ocstream.transport.wire import entry_value
from tests.streams import axrange
from tests.workers import free_port


def redis_app(
    app_id: str, broker: str, tmp_path: Path, settings: TransportSettings
) -> tuple[Any, Producer]:
    """A faust app on the Redis transport with ``settings``, and its producer (not started)."""
    app = faust.App(app_id, broker=broker, store="rocksdb://", datadir=str(tmp_path), Table=Table)
    app.transport_settings = settings  # type: ignore[attr-defined]
    return app, cast(Producer, app.producer)


@pytest.fixture
async def app(redis_url: str, prefix: str, tmp_path: Path) -> AsyncIterator[Any]:
    app, producer = redis_app("tb", redis_url, tmp_path, TransportSettings(prefix=prefix))
    await producer.start()
    yield app
    await producer.stop()


async def changelog(redis_url: str, prefix: str, topic: str, partition: int) -> list[Any]:
    """``(key, value)`` of each entry of a changelog partition, in order."""
    client = aioredis.Redis.from_url(redis_url)
    entries = await axrange(client, Keyspace(prefix).stream(topic, partition))
    await client.aclose()
    return [(fields[b"k"], entry_value(fields)) for _, fields in entries]


async def test_a_batch_writes_each_key_once_and_what_it_removed_again_not_at_all(
    app: Any, redis_url: str, prefix: str
) -> None:
    journeys = app.Table("journeys", default=None, key_type=str)
    seen = app.Table("seen", default=None, key_type=str)
    batch = TableBatch(app, {"journeys": journeys, "seen": seen})
    # What an earlier batch stored.
    batch.views(2)["seen"]["old"] = 1
    await batch.flush()
    await app.producer.flush()
    assert await changelog(redis_url, prefix, "tb-seen-changelog", 2) == [(b'"old"', b"1")]

    view = batch.views(2)
    view["journeys"]["a"] = {"step": 1}
    assert view["journeys"].get("a") == {"step": 1}  # the batch reads its own writes
    got = view["journeys"].get("a")
    got["step"] = 99  # a caller changing what it read changes nothing stored
    assert view["journeys"].get("a") == {"step": 1}
    view["journeys"]["a"] = {"step": 2}
    view["journeys"]["a"] = {"step": 3}
    view["seen"]["pending"] = True
    del view["seen"]["pending"]  # written and removed in the batch
    del view["seen"]["old"]  # stored before the batch: its removal must reach the changelog
    del view["seen"]["never"]
    assert view["seen"].get("pending") is None and view["seen"].get("old") is None
    tp = TP("tb-journeys-changelog", 2)
    assert journeys.data.persisted_offset(tp) is None
    await batch.flush()
    await app.producer.flush()

    # One record per changed key: the last value, or a tombstone (compaction dropped "old"'s
    # earlier value); nothing for what the batch wrote and removed again.
    assert await changelog(redis_url, prefix, "tb-journeys-changelog", 2) == [
        (b'"a"', orjson.dumps({"step": 3}))
    ]
    assert await changelog(redis_url, prefix, "tb-seen-changelog", 2) == [(b'"old"', None)]
    # RocksDB holds what faust itself would have stored, readable through the table's store.
    assert journeys.data._db_for_partition(2).get(b'"a"') == orjson.dumps({"step": 3})
    assert seen.data._db_for_partition(2).get(b'"old"') is None
    assert batch.views(2)["journeys"].get("a") == {"step": 3}
    # The persisted changelog offset: set once the partition's last record is in Redis.
    assert journeys.data.persisted_offset(tp) == 0
    assert seen.data.persisted_offset(TP("tb-seen-changelog", 2)) == 1


async def test_partitions_are_apart(app: Any, redis_url: str, prefix: str) -> None:
    table = app.Table("t", default=None, key_type=str)
    batch = TableBatch(app, {"t": table})
    batch.views(0)["t"]["k"] = "zero"
    batch.views(5)["t"]["k"] = "five"
    assert batch.views(0)["t"].get("k") == "zero"
    await batch.flush()
    await app.producer.flush()
    assert await changelog(redis_url, prefix, "tb-t-changelog", 0) == [(b'"k"', b'"zero"')]
    assert await changelog(redis_url, prefix, "tb-t-changelog", 5) == [(b'"k"', b'"five"')]
    assert table.data._db_for_partition(5).get(b'"k"') == b'"five"'
    assert batch.views(3)["t"].get("k") is None


async def test_a_batch_reads_each_stored_key_once(
    app: Any, redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RocksDB is read once per key and batch: a second read, and the flush's check of whether
    a removed key was stored before the batch, use what the first read found."""
    from ocstream import tablebatch

    reads: list[str] = []
    real = tablebatch._Table.stored

    def counted(self: Any, partition: int, key: str) -> bytes | None:
        reads.append(key)
        return real(self, partition, key)

    monkeypatch.setattr(tablebatch._Table, "stored", counted)
    table = app.Table("r", default=None, key_type=str)
    batch = TableBatch(app, {"r": table})
    batch.views(1)["r"]["kept"] = {"n": 1}
    batch.views(1)["r"]["gone"] = 2
    await batch.flush()
    reads.clear()

    view = batch.views(1)["r"]
    assert view.get("kept") == {"n": 1} and view.get("kept") == {"n": 1}
    assert view.get("gone") == 2
    del view["gone"]
    assert view.get("missing") is None and view.get("missing") is None
    view["missing"] = 3
    del view["missing"]  # never stored: no tombstone, and no second read to know it
    await batch.flush()
    await app.producer.flush()
    assert sorted(reads) == ["gone", "kept", "missing"]
    # Compaction keeps the last record of each key: "gone" ends as a tombstone.
    assert await changelog(redis_url, prefix, "tb-r-changelog", 1) == [
        (b'"kept"', orjson.dumps({"n": 1})),
        (b'"gone"', None),
    ]

    # The next batch reads again: what it remembered ended with the flush.
    reads.clear()
    assert batch.views(1)["r"].get("gone") is None
    assert batch.views(1)["r"].get("kept") == {"n": 1}
    assert reads == ["gone", "kept"]
    await batch.flush()  # nothing written
    # A key removed that the batch never read is still checked against the store.
    reads.clear()
    del batch.views(1)["r"]["kept"]
    await batch.flush()
    assert reads == ["kept"]


async def test_table_databases_filter_memtable_misses(app: Any) -> None:
    """ocstream's table stores open RocksDB with a bloom filter of whole keys on each memtable
    (``ocstream.runtime.RocksDBOptions``): what RocksDB wrote in the database's OPTIONS file."""
    from ocstream.runtime import MEMTABLE_BLOOM_RATIO

    table = app.Table("f", default=None, key_type=str)
    batch = TableBatch(app, {"f": table})
    batch.views(0)["f"]["k"] = 1
    await batch.flush()
    options = sorted(table.data.partition_path(0).glob("OPTIONS-*"))[-1].read_text()
    assert "memtable_whole_key_filtering=true" in options
    assert f"memtable_prefix_bloom_size_ratio={MEMTABLE_BLOOM_RATIO:f}" in options


def test_table_files_filter_10_bits_per_key_and_share_one_block_cache(tmp_path: Path) -> None:
    """A table file RocksDB writes for a table store holds a bloom filter of 10 bits per key
    (faust's options give 3: seen in the file's size, the same entries otherwise), and every
    table database reads through the process's one block cache
    (``ocstream.runtime.block_cache``), not a cache of its own."""
    from faust.stores.rocksdb import RocksDBOptions as FaustRocksDBOptions

    from ocstream.runtime import SST_BLOOM_BITS, RocksDBOptions, block_cache

    keys = 10_000

    def written(options: Any, name: str) -> tuple[int, int]:
        """(bytes of table files, growth of the shared cache after one read)"""
        db = options.open(tmp_path / name)
        for n in range(keys):
            db[b"key-%d" % n] = b"v" * 100
        db.flush()
        used = block_cache().get_usage()
        assert db.get(b"key-5") == b"v" * 100
        grew = block_cache().get_usage() - used
        db.close()
        files = list((tmp_path / name).glob("*.sst"))
        assert files
        return sum(path.stat().st_size for path in files), grew

    faust = FaustRocksDBOptions()
    ours, ours_grew = written(RocksDBOptions(), "ours.db")
    theirs, theirs_grew = written(faust, "faust.db")
    expected = SST_BLOOM_BITS - faust.bloom_filter_size  # 10 - 3
    assert expected == 7
    extra_bits = (ours - theirs) * 8 / keys
    assert expected - 0.5 < extra_bits < expected + 0.5, extra_bits
    assert ours_grew > 0 and theirs_grew == 0
    # Two databases, one cache: a read from a second one adds to the same usage.
    assert written(RocksDBOptions(), "second.db")[1] > 0


MEMTABLES = """
import os, sys
from pathlib import Path
from ocstream.runtime import RocksDBOptions, write_buffer_manager
dbs = [RocksDBOptions().open(Path(sys.argv[1]) / f"{n}.db") for n in range(20)]
value = os.urandom(1000)
for n in range(100_000):  # 5 MB for each database, far below faust's 64 MB memtable
    dbs[n % 20][b"key-%09d" % n] = value
manager = write_buffer_manager()
print(manager.get_buffer_size() if manager is not None else 0)
for db in dbs:
    db.close()
"""


@pytest.mark.parametrize("bound", ["8", "0"])
def test_memtables_of_all_databases_are_bounded_together(tmp_path: Path, bound: str) -> None:
    """``OCSTREAM_ROCKSDB_MEMTABLES_MB`` bounds the memtables of all of a process's table
    databases together (``ocstream.runtime.write_buffer_manager``): 20 databases written 5 MB
    each, 100 MB in all, write table files on the way with a bound of 8 MB. With 0 (no bound),
    none of them fills faust's 64 MB memtable, and they write no table file until closed."""
    env = {**os.environ, "OCSTREAM_ROCKSDB_MEMTABLES_MB": bound}
    done = subprocess.run(
        [sys.executable, "-c", MEMTABLES, str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) == int(bound) * 1024 * 1024
    # Closing writes every memtable out: the files of a database that flushed before its close
    # are more than the one its close wrote.
    files = [len(list(db.glob("*.sst"))) for db in tmp_path.glob("*.db")]
    assert len(files) == 20
    if bound == "0":
        assert max(files) <= 1, files
    else:
        assert sum(files) > 20, files


WRITE_AND_EXIT = """
import asyncio, os, signal, sys
import faust
from ocstream.runtime import Table
from ocstream.tablebatch import TableBatch

async def main() -> None:
    app = faust.App("tb", broker="memory://", store="rocksdb://", datadir=sys.argv[1], Table=Table)
    table = app.Table("w", default=None, key_type=str)
    store = table.data
    store._db_for_partition(0)[b'"a"'] = b'"first"'
    store._dbs.pop(0).close()  # a revoke or a stop: the database is closed
    store._db_for_partition(0)[b'"b"'] = b'"second"'
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    await store.stop()

asyncio.run(main())
"""


@pytest.mark.parametrize("end", ["stop", "kill"])
def test_table_databases_keep_what_a_stop_closes_and_lose_what_a_kill_left_unflushed(
    tmp_path: Path, end: str
) -> None:
    """ocstream's table stores write without RocksDB's write-ahead log (the changelog in Redis
    is what makes a write durable; ``ocstream.runtime.RocksDBOptions``): a database closed by
    a revoke or a stop keeps everything, and a killed worker's database reopens as it was
    when its memtables were last written out, which faust's recovery then replays forward."""
    run = subprocess.run(
        [sys.executable, "-c", WRITE_AND_EXIT, str(tmp_path), end], capture_output=True
    )
    assert run.returncode == (-9 if end == "kill" else 0), run.stderr.decode()[-2000:]
    [path] = [p for p in tmp_path.rglob("*") if p.is_dir() and (p / "CURRENT").exists()]
    db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))
    try:
        assert db.get(b'"a"') == b'"first"'
        assert db.get(b'"b"') == (None if end == "kill" else b'"second"')
    finally:
        db.close()


async def test_queue_many_writes_in_order_with_one_future_for_the_last(
    app: Any, redis_url: str, prefix: str
) -> None:
    """The producer's batch path: records keep their order among ``send`` records, the future
    carries the last one's offset, and ``flush`` waits for them all."""
    producer = app.producer
    topic = "tb-q"
    await producer.create_topic(topic, 4, 1)
    writes, produced = METRICS.produce_writes, METRICS.records_produced
    await producer.send(topic, b"a", b"1", 3, None, None)
    fut = producer.queue_many(topic, 3, [(b"b", b"2"), (b"c", None), (b"d", b"4")])
    await producer.send(topic, b"e", b"5", 3, None, None)
    await producer.flush()
    assert fut.done()
    # Queued without a turn of the loop in between: one round trip (/metrics counts them).
    assert (METRICS.produce_writes - writes, METRICS.records_produced - produced) == (1, 5)
    assert fut.result().offset == 3  # a=0, b=1, c=2, d=3
    assert await changelog(redis_url, prefix, topic, 3) == [
        (b"a", b"1"),
        (b"b", b"2"),
        (b"c", None),
        (b"d", b"4"),
        (b"e", b"5"),
    ]
    with pytest.raises(ValueError):
        producer.queue_many(topic, 3, [])


async def test_queue_many_fails_its_future_when_the_partition_write_fails(
    app: Any, redis_url: str, prefix: str
) -> None:
    producer = app.producer
    topic = "tb-bad"
    await producer.create_topic(topic, 2, 1)
    client = aioredis.Redis.from_url(redis_url)
    await client.set(Keyspace(prefix).stream(topic, 1), "not a stream")  # XADD: WRONGTYPE
    await client.aclose()
    failed, retries = METRICS.produce_failed, METRICS.produce_retries
    fut = producer.queue_many(topic, 1, [(b"k", b"v"), (b"l", b"w")])
    good = producer.queue_many(topic, 0, [(b"m", b"x")])
    await producer.flush()
    assert isinstance(fut.exception(), Exception)
    assert "WRONGTYPE" in str(fut.exception()).upper()
    assert good.result().offset == 0
    # Refused for good: not retried, and each record is counted (the first one had no future
    # to tell: an agent's outputs are queued that way).
    assert (METRICS.produce_failed - failed, METRICS.produce_retries - retries) == (2, 0)
    assert producer.outstanding == 0


@pytest.mark.parametrize("server", ["redis62", "redis7"])
async def test_writes_redis_refuses_for_now_are_kept_in_order_until_it_takes_them(
    server: str, tmp_path: Path
) -> None:
    """Redis at its ``maxmemory`` (policy ``noeviction``) answers every write ``OOM``, in an
    error reply per partition. The producer keeps those records, in order, and retries them
    with backoff; ``flush()`` (which commits wait for) waits; once Redis takes writes again,
    each is written once, in its place. A private server (``maxmemory`` is server-wide), of
    both versions: a script's error reads differently on each. ``tb-oom-new``'s stream does
    not exist yet, which takes the append script's first write through its other branch."""
    from tests.own_redis import start_version

    prefix = "tb-oom:"  # the server is the test's own: nothing else writes to it
    redis_server = start_version(server, tmp_path / "redis")
    _, producer = redis_app("tb-oom", redis_server.url, tmp_path, TransportSettings(prefix=prefix))
    client = aioredis.Redis.from_url(redis_server.url)
    await producer.start()
    try:
        topic, fresh = "tb-oom", "tb-oom-new"
        await producer.create_topic(topic, 1, 1)
        await producer.create_topic(fresh, 1, 1)
        await producer.send(topic, b"before", b"0", 0, None, None)
        await producer.flush()
        used = int((await client.info("memory"))["used_memory"])
        await client.config_set("maxmemory-policy", "noeviction")
        await client.config_set("maxmemory", used // 2)
        retries, failed = METRICS.produce_retries, METRICS.produce_failed
        for n in range(1, 4):  # without a future, as the matcher queues its outputs
            assert producer.queue(topic, b"k%d" % n, b"%d" % n)
        last = producer.queue_many(fresh, 0, [(b"a", b"x"), (b"b", None), (b"c", b"z")])
        flushing = asyncio.ensure_future(producer.flush())
        deadline = asyncio.get_running_loop().time() + 30
        while METRICS.produce_retries < retries + 2:  # two refusals at least, then look
            assert asyncio.get_running_loop().time() < deadline, "no write was refused"
            await asyncio.sleep(0.02)
        assert not flushing.done() and not last.done()
        assert producer.outstanding == 6
        assert await client.xlen(Keyspace(prefix).stream(topic, 0)) == 1
        assert not await client.exists(Keyspace(prefix).stream(fresh, 0))
        await client.config_set("maxmemory", 0)
        await asyncio.wait_for(flushing, 30)
        assert last.result().offset == 2
        assert METRICS.produce_failed == failed
        assert producer.outstanding == 0
        url = redis_server.url
        assert await changelog(url, prefix, topic, 0) == [
            (b"before", b"0"),
            (b"k1", b"1"),
            (b"k2", b"2"),
            (b"k3", b"3"),
        ]
        assert await changelog(url, prefix, fresh, 0) == [(b"a", b"x"), (b"b", None), (b"c", b"z")]
    finally:
        await producer.stop()
        await client.aclose()
        redis_server.stop()


async def test_queue_keys_records_like_send_once_the_partitions_are_known(
    app: Any, redis_url: str, prefix: str
) -> None:
    """``queue`` (the matcher's outputs): the partition of ``send`` for the same key, the order
    of everything queued, headers kept; refused until the topic's partition count is known."""
    from ocstream.transport.wire import partition_for_key

    producer = app.producer
    topic = "tb-out"
    assert producer.queue(topic, b"j1", b"{}") is False  # never seen: send() learns it
    await producer.create_topic(topic, 4, 1)
    keys = [f"journey-{n}".encode() for n in range(12)]
    for n, key in enumerate(keys):
        if n % 3 == 0:
            await producer.send(topic, key, b"%d" % n, None, None, None)
        else:
            assert producer.queue(topic, key, b"%d" % n, [("origin", b"urn:ocn:polkadot:0")])
    await producer.flush()
    client = aioredis.Redis.from_url(redis_url)
    for partition in range(4):
        entries = await axrange(client, Keyspace(prefix).stream(topic, partition))
        mine = [n for n, key in enumerate(keys) if partition_for_key(key, 4) == partition]
        assert [int(entry_value(fields) or b"-1") for _, fields in entries] == mine
        for _, fields in entries:
            n = int(entry_value(fields) or b"-1")
            assert (b"h" in fields) == (n % 3 != 0)
    await client.aclose()


@pytest.mark.parametrize("batch_records", [None, 700])
async def test_a_backlog_is_written_in_round_trips_of_bounded_size(
    redis_url: str, prefix: str, tmp_path: Path, batch_records: int | None
) -> None:
    """Records queued faster than they are written go to Redis ``produce_batch_records`` at a
    time (the default, :data:`PRODUCE_BATCH_RECORDS`, or as set: packing them all in one round
    trip took 200 MiB of heap for 60,000, and Redis serves no other client while it runs one),
    in order, with each future answered."""
    settings = (
        TransportSettings(prefix=prefix)
        if batch_records is None
        else TransportSettings(prefix=prefix, produce_batch_records=batch_records)
    )
    _, producer = redis_app("tb", redis_url, tmp_path, settings)
    await producer.start()
    try:
        topic = "tb-many"
        await producer.create_topic(topic, 2, 1)
        count = 2 * (batch_records or PRODUCE_BATCH_RECORDS) + 7
        writes, produced = METRICS.produce_writes, METRICS.records_produced
        # Queued without a turn of the loop in between, as an agent working off a backlog does.
        first = producer.queue_many(topic, 0, [(b"k%d" % n, b"%d" % n) for n in range(count - 1)])
        last = producer.queue_many(topic, 1, [(b"last", b"x")])
        assert producer.outstanding == count
        await producer.flush()
        assert (METRICS.produce_writes - writes, METRICS.records_produced - produced) == (3, count)
        # What it held at once, all of it (ocstream_transport_produce_queued_peak_records), and
        # nothing now.
        assert producer.outstanding_peak >= count
        assert producer.outstanding == 0
        # Each round trip timed (ocstream_transport_produce_round_trip_seconds).
        assert producer.round_trips.count == 3
        assert 0 < producer.round_trips.longest <= producer.round_trips.total
        assert first.result().offset == count - 2
        assert last.result().offset == 0
        values = [int(value) for _, value in await changelog(redis_url, prefix, topic, 0)]
        assert values == list(range(count - 1))
    finally:
        await producer.stop()


async def test_wait_room_gives_the_loop_a_turn_and_holds_an_agent_that_outruns_redis(
    app: Any, prefix: str
) -> None:
    """``Producer.wait_room`` (the match agent calls it after each batch): with little queued it
    only lets the rest of the loop run; with more than :data:`MAX_IN_FLIGHT` queued it returns
    once the producer has written enough of it, and counts the wait and its length."""
    producer = app.producer
    topic = "tb-room"
    await producer.create_topic(topic, 1, 1)
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    task = asyncio.ensure_future(other())
    waits = METRICS.produce_waits
    await producer.wait_room()
    assert ran == ["other"]  # a turn of the loop, not a return straight away
    assert METRICS.produce_waits == waits

    written = METRICS.records_produced
    waited = METRICS.produce_wait_seconds
    records = [(b"k", b"v" * 100)] * (MAX_IN_FLIGHT + 3000)
    fut = producer.queue_many(topic, 0, records)
    started = time.perf_counter()
    await producer.wait_room()
    held = time.perf_counter() - started
    assert METRICS.produce_waits == waits + 1
    # Its length is summed (ocstream_transport_produce_wait_seconds_total): at least one
    # round trip's, and no more than the call took.
    assert 0 < METRICS.produce_wait_seconds - waited <= held
    # Nothing had been written when it was called (no turn of the loop since the queueing);
    # it returned with no more than MAX_IN_FLIGHT left, so round trips came in between.
    assert METRICS.records_produced - written >= len(records) - MAX_IN_FLIGHT
    await producer.flush()
    assert fut.result().offset == len(records) - 1
    await task


async def test_wait_room_leaves_two_round_trips_of_a_larger_setting(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    """With ``produce_batch_records`` above half of :data:`MAX_IN_FLIGHT`, an agent may keep two
    round trips queued (one in Redis while the next fills): holding it at MAX_IN_FLIGHT would
    leave Redis idle while the agent refills a round trip."""
    batch = 7_000
    settings = TransportSettings(prefix=prefix, produce_batch_records=batch)
    _, producer = redis_app("tb", redis_url, tmp_path, settings)
    await producer.start()
    try:
        assert producer.max_in_flight == 2 * batch > MAX_IN_FLIGHT
        await producer.create_topic("tb-big", 1, 1)
        waits, waited = METRICS.produce_waits, METRICS.produce_wait_seconds
        fut = producer.queue_many("tb-big", 0, [(b"k", b"v")] * (2 * batch - 1000))
        await producer.wait_room()
        assert METRICS.produce_waits == waits  # above MAX_IN_FLIGHT, but two round trips at most
        assert METRICS.produce_wait_seconds == waited
        await producer.flush()
        assert fut.result().offset == 2 * batch - 1001
    finally:
        await producer.stop()


async def test_a_wait_cut_short_is_counted_as_long_as_it_lasted(
    prefix: str, tmp_path: Path
) -> None:
    """An agent whose wait for room is cancelled (a stop, a rebalance) while Redis does not
    answer: the time it waited is added to ``ocstream_transport_produce_wait_seconds_total``
    all the same, so the sum keeps up with the count of waits."""
    gone = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there: nothing is written
    _, producer = redis_app("tb-cut", gone, tmp_path, TransportSettings(prefix=prefix))
    await producer.start()
    try:
        queued = producer.queue_many("tb-cut", 0, [(b"k", b"v")] * (producer.max_in_flight + 10))
        waits, waited = METRICS.produce_waits, METRICS.produce_wait_seconds
        started = time.perf_counter()
        agent = asyncio.ensure_future(producer.wait_room())
        await asyncio.sleep(0.3)
        assert not agent.done()  # still held: nothing can be written
        assert METRICS.produce_waits == waits + 1
        agent.cancel()
        with pytest.raises(asyncio.CancelledError):
            await agent
        held = time.perf_counter() - started
        assert 0.3 <= METRICS.produce_wait_seconds - waited <= held
    finally:
        await asyncio.wait_for(producer.stop(), 60)
    assert isinstance(queued.exception(), Exception)  # given up at the stop


async def test_a_stop_with_redis_gone_fails_every_queued_record_and_returns(
    prefix: str, tmp_path: Path
) -> None:
    """A producer stopped while Redis does not answer gives up on all it holds, more than one
    round trip's worth too: every future fails and the stop returns (a stop flushes first, and
    would wait for ever on records left in the queue)."""
    gone = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    _, producer = redis_app("tb-gone", gone, tmp_path, TransportSettings(prefix=prefix))
    await producer.start()
    retries = METRICS.produce_retries
    first = producer.queue_many("tb-gone", 0, [(b"k", b"v")] * producer.batch_records)
    second = producer.queue_many("tb-gone", 1, [(b"k", b"v")] * 7)
    # Stopped once a round trip has failed and been put back for a retry (the case the stop
    # must clear), not after a guessed time.
    deadline = asyncio.get_running_loop().time() + 30
    while METRICS.produce_retries == retries:
        assert asyncio.get_running_loop().time() < deadline, "no round trip was attempted"
        await asyncio.sleep(0.01)
    await asyncio.wait_for(producer.stop(), 60)
    assert isinstance(first.exception(), Exception)
    assert isinstance(second.exception(), Exception)
