"""Retention (ocstream/transport/retention.py) on real Redis 7 and 6.2: the cuts by age, size
and count, per-topic overrides, and changelog tombstones removed once every holder applied them.

The worker-level promise (a worker restarted with an old store does not bring deleted keys back
after their tombstones were removed) is in tests/test_workers.py.
"""

from __future__ import annotations

import os
import time
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from ocstream.transport import Keyspace, scripts
from ocstream.transport.metrics import METRICS
from ocstream.transport.retention import Limits, apply, parse_override
from ocstream.transport.settings import TransportSettings
from ocstream.transport.wire import Record, id_to_offset
from ocstream.transport.writer import append_records
from tests.streams import axrange

#: Only the limit a test is about: the others off.
NO_LIMITS = {"retention_hours": 0, "retention_mb": 0, "max_len": 0}


@pytest.fixture
def keys(prefix: str) -> Keyspace:
    return Keyspace(prefix)


def settings(**limits: float) -> TransportSettings:
    fields: dict[str, Any] = {**NO_LIMITS, **limits}
    return TransportSettings(**fields)


async def first_offset(client: aioredis.Redis, stream: str) -> int | None:
    head = await axrange(client, stream, count=1)
    return id_to_offset(head[0][0]) if head else None


def test_override_formats() -> None:
    defaults = Limits(hours=24, mb=64, entries=0)
    assert parse_override("hours=6", defaults) == Limits(6, 64, 0)
    assert parse_override("hours=1.5, mb=0 entries=1000", defaults) == Limits(1.5, 0, 1000)
    # The older format: an entry cap alone, so that 0 still keeps everything.
    assert parse_override("200000", defaults) == Limits(0, 0, 200000)
    assert parse_override("0", defaults).keeps_everything
    for bad, reason in (
        ("days=3", "is not hours=N"),
        ("hours=soon", "is not a number"),
        ("mb=-1", "0 or more"),
        ("-5", "0 or more"),
    ):
        with pytest.raises(ValueError, match=reason):
            parse_override(bad, defaults)


async def test_retention_by_count_reports_entries_a_group_had_not_committed(
    client: aioredis.Redis, keys: Keyspace, caplog: pytest.LogCaptureFixture
) -> None:
    await append_records(client, keys, [("ev", 0, Record(None, b"v", 1))] * 100)
    await client.sadd(keys.groups, "slow", "fast")
    for group, committed in (("slow", 50), ("fast", 95)):
        await client.sadd(keys.group(group).topics, "ev")
        await client.hset(keys.group(group).offsets, "ev\x1f0", committed)
    before = METRICS.retention_trimmed_uncommitted
    await apply(client, keys, settings(max_len=30), {"ev": 1}, compacted=())
    assert await first_offset(client, keys.stream("ev", 0)) == 70
    assert await client.xlen(keys.stream("ev", 0)) == 30
    # The slow group had not committed offsets 50..69: that loss is logged and counted.
    assert METRICS.retention_trimmed_uncommitted - before == 20
    assert any(
        "'slow'" in r.getMessage() and "20 entries" in r.getMessage() for r in caplog.records
    )
    assert not any("'fast'" in r.getMessage() for r in caplog.records)
    # A second run trims nothing more and counts no loss twice.
    await apply(client, keys, settings(max_len=30), {"ev": 1}, compacted=())
    assert METRICS.retention_trimmed_uncommitted - before == 20
    # An override in the older format (an entry cap alone) wins over the defaults; 0 keeps all.
    await client.hset(keys.retention, "ev", 0)
    await append_records(client, keys, [("ev", 0, Record(None, b"v", 1))] * 10)
    await apply(client, keys, settings(max_len=5, retention_hours=1), {"ev": 1}, compacted=())
    assert await client.xlen(keys.stream("ev", 0)) == 40


async def test_retention_by_age_cuts_at_the_first_entry_younger_than_the_limit(
    client: aioredis.Redis, keys: Keyspace
) -> None:
    now_ms = int(time.time() * 1000)
    hour = 3_600_000
    # 1000 entries 3 h old, then 37 entries 90 min old, then 500 entries just written: the
    # binary search must land exactly on each boundary, not on a sampled neighbour.
    batch = [("ev", 0, Record(None, b"old", now_ms - 3 * hour))] * 1000
    batch += [("ev", 0, Record(None, b"mid", now_ms - hour * 3 // 2))] * 37
    batch += [("ev", 0, Record(None, b"new", now_ms))] * 500
    await append_records(client, keys, batch)
    stream = keys.stream("ev", 0)
    await apply(client, keys, settings(retention_hours=2), {"ev": 1}, compacted=())
    assert await first_offset(client, stream) == 1000
    # A per-topic override in the new format: hours only, the other limits stay default (off).
    await client.hset(keys.retention, "ev", "hours=1")
    await apply(client, keys, settings(retention_hours=2), {"ev": 1}, compacted=())
    assert await first_offset(client, stream) == 1037
    assert await client.xlen(stream) == 500
    # When every entry is older than the limit they all go, and the highwater stays.
    await append_records(client, keys, [("old", 0, Record(None, b"v", now_ms - 3 * hour))] * 9)
    await apply(client, keys, settings(retention_hours=1), {"old": 1}, compacted=())
    assert await client.xlen(keys.stream("old", 0)) == 0
    assert await append_records(client, keys, [("old", 0, Record(None, b"v", now_ms))]) == [9]


async def test_retention_by_size_keeps_the_newest_entries_under_the_limit(
    client: aioredis.Redis, keys: Keyspace
) -> None:
    for _ in range(4):  # 4000 entries of 1 kB: about 4 MB (random bytes: no compression gain)
        batch = [("ev", 0, Record(None, os.urandom(1000), 1)) for _ in range(1000)]
        await append_records(client, keys, batch)
    stream = keys.stream("ev", 0)
    used_before = int(await client.memory_usage(stream, samples=0) or 0)
    assert used_before > 3 * 1024 * 1024
    await apply(client, keys, settings(retention_mb=1), {"ev": 1}, compacted=())
    used_after = int(await client.memory_usage(stream, samples=0) or 0)
    kept = await client.xlen(stream)
    # MEMORY USAGE samples a few nodes: the cut is an estimate; allow 10 % either way.
    assert 0.9 * 1024 * 1024 <= used_after <= 1.1 * 1024 * 1024, used_after
    assert 800 < kept < 1100
    assert await first_offset(client, stream) == 4000 - kept  # the newest are the ones kept


async def test_another_apps_changelog_is_not_trimmed_as_a_plain_topic(
    client: aioredis.Redis, keys: Keyspace
) -> None:
    # A group that reads another app's changelog does not know it is compacted; trimming it by
    # age would delete that app's live table state.
    old = int(time.time() * 1000) - 48 * 3_600_000
    batch = [("other-changelog", 0, Record(f"k{i}".encode(), b"v", old)) for i in range(5)]
    await append_records(client, keys, batch, compacted={"other-changelog"})
    await append_records(client, keys, [("plain", 0, Record(b"k", b"v", old))] * 5)
    topics = {"other-changelog": 1, "plain": 1}
    await apply(client, keys, settings(retention_hours=24), topics, compacted=())
    assert await client.xlen(keys.stream("other-changelog", 0)) == 5
    assert await client.xlen(keys.stream("plain", 0)) == 0


async def test_an_invalid_override_is_logged_and_the_defaults_apply(
    client: aioredis.Redis, keys: Keyspace, caplog: pytest.LogCaptureFixture
) -> None:
    await append_records(client, keys, [("ev", 0, Record(None, b"v", 1))] * 20)
    await client.hset(keys.retention, "ev", "days=2")
    await apply(client, keys, settings(max_len=5), {"ev": 1}, compacted=())
    assert await client.xlen(keys.stream("ev", 0)) == 5
    assert any("days=2" in r.getMessage() and "invalid" in r.getMessage() for r in caplog.records)


# -- tombstones --------------------------------------------------------------------------------

GROUP = "app"
CHANGELOG = "app-counts-changelog"


async def stable_generation(
    client: aioredis.Redis, keys: Keyspace, gen: int, holders: dict[str, list[int]]
) -> None:
    """The group state after generation ``gen`` was assigned: member -> changelog partitions."""
    group = keys.group(GROUP)
    await client.hset(group.state, mapping={"gen": gen, "phase": "stable", "stable_gen": gen})
    for member, partitions in holders.items():
        assignment = ConsumerProtocolMemberAssignment(0, [(CHANGELOG, partitions)], b"")
        await client.hset(group.assignment(gen), member, assignment.encode())


async def report(
    client: aioredis.Redis, keys: Keyspace, member: str, gen: int, applied: dict[int, int]
) -> None:
    positions = {f"{CHANGELOG}\x1f{p}": offset for p, offset in applied.items()}
    await client.hset(
        keys.group(GROUP).applied, member, orjson.dumps({"gen": gen, "applied": positions})
    )


async def remove(client: aioredis.Redis, keys: Keyspace, **kwargs: float) -> None:
    await apply(
        client, keys, settings(**kwargs), {CHANGELOG: 1}, compacted={CHANGELOG}, group=GROUP
    )


async def changelog_keys(client: aioredis.Redis, keys: Keyspace) -> dict[bytes, bytes | None]:
    entries = await axrange(client, keys.stream(CHANGELOG, 0))
    return {fields[b"k"]: fields.get(b"v") for _, fields in entries}


async def test_tombstones_go_once_every_holder_of_the_partition_applied_them(
    client: aioredis.Redis, keys: Keyspace
) -> None:
    floor_field = f"{CHANGELOG}\x1f0"
    # Offsets 0-9: k0..k9 written; 10-12: k0, k1, k2 deleted; 13: k3 updated.
    batch = [(CHANGELOG, 0, Record(f"k{i}".encode(), b"1", 1)) for i in range(10)]
    batch += [(CHANGELOG, 0, Record(f"k{i}".encode(), None, 1)) for i in range(3)]
    batch.append((CHANGELOG, 0, Record(b"k3", b"2", 1)))
    await append_records(client, keys, batch, compacted={CHANGELOG})
    await stable_generation(client, keys, 4, {"active": [0], "standby": [0]})

    # Only the active reported: the standby has not vouched, nothing goes.
    await report(client, keys, "active", 4, {0: 14})
    await remove(client, keys)
    assert await client.zcard(keys.tombstones(CHANGELOG, 0)) == 3
    # The standby's report of an older generation does not count either.
    await report(client, keys, "standby", 3, {0: 14})
    await remove(client, keys)
    assert await client.zcard(keys.tombstones(CHANGELOG, 0)) == 3

    # The standby applied up to offset 11 (exclusive): the tombstones of k0 (10) go, k1's stays.
    await report(client, keys, "standby", 4, {0: 11})
    await remove(client, keys)
    assert set(await changelog_keys(client, keys)) == {f"k{i}".encode() for i in range(1, 10)}
    assert not await client.hexists(keys.compaction_index(CHANGELOG, 0), "k0")
    assert await client.hget(keys.tombstone_floors, floor_field) == b"11"

    # During a rebalance nothing is removed: the holders may change.
    await report(client, keys, "standby", 4, {0: 14})
    await client.hset(keys.group(GROUP).state, mapping={"gen": 5, "phase": "revoking"})
    await remove(client, keys)
    assert await client.zcard(keys.tombstones(CHANGELOG, 0)) == 2
    # Generation 5 is assigned: reports of generation 4 no longer count.
    await stable_generation(client, keys, 5, {"active": [0], "standby": [0]})
    await remove(client, keys)
    assert await client.zcard(keys.tombstones(CHANGELOG, 0)) == 2
    # And a removal computed from generation 4's reports is refused by the script itself.
    fenced = await scripts.remove_tombstones(
        client,
        [
            keys.stream(CHANGELOG, 0),
            keys.compaction_index(CHANGELOG, 0),
            keys.tombstones(CHANGELOG, 0),
            keys.sequence(CHANGELOG, 0),
            keys.tombstone_floors,
            keys.group(GROUP).state,
        ],
        [4, 14, 0, 100, floor_field],
    )
    assert fenced == -1 and await client.zcard(keys.tombstones(CHANGELOG, 0)) == 2

    # Both report past everything for generation 5: the rest go, and the floor follows.
    await report(client, keys, "active", 5, {0: 14})
    await report(client, keys, "standby", 5, {0: 14})
    before = METRICS.tombstones_removed
    await remove(client, keys)
    assert METRICS.tombstones_removed - before == 2
    assert await changelog_keys(client, keys) == {f"k{i}".encode(): b"1" for i in range(3, 10)} | {
        b"k3": b"2"
    }
    assert await client.hget(keys.tombstone_floors, floor_field) == b"13"


async def test_the_newest_entry_stays_even_when_it_is_a_tombstone(
    client: aioredis.Redis, keys: Keyspace
) -> None:
    # faust's recovery reads until the offset just below the highwater; removing the newest
    # entry would leave it waiting for an offset that no longer exists.
    batch = [(CHANGELOG, 0, Record(b"a", b"1", 1)), (CHANGELOG, 0, Record(b"b", b"1", 1))]
    batch += [(CHANGELOG, 0, Record(b"a", None, 1)), (CHANGELOG, 0, Record(b"b", None, 1))]
    await append_records(client, keys, batch, compacted={CHANGELOG})
    await stable_generation(client, keys, 1, {"only": [0]})
    await report(client, keys, "only", 1, {0: 4})
    await remove(client, keys)
    assert await changelog_keys(client, keys) == {b"b": None}
    assert await client.hget(keys.tombstone_floors, f"{CHANGELOG}\x1f0") == b"3"
    # A least age keeps young tombstones even when every holder applied them.
    await append_records(client, keys, [(CHANGELOG, 0, Record(b"c", b"1", 1))], {CHANGELOG})
    now_ms = int(time.time() * 1000)
    await append_records(client, keys, [(CHANGELOG, 0, Record(b"c", None, now_ms))], {CHANGELOG})
    await append_records(client, keys, [(CHANGELOG, 0, Record(b"d", b"1", 1))], {CHANGELOG})
    await report(client, keys, "only", 1, {0: 7})
    await remove(client, keys, tombstone_retention=3600)
    assert set(await changelog_keys(client, keys)) == {b"c", b"d"}  # b's (old) went, c's stays
    await remove(client, keys)
    assert set(await changelog_keys(client, keys)) == {b"d"}


async def test_tombstones_scored_by_time_before_the_upgrade_are_removed_too(
    client: aioredis.Redis, keys: Keyspace
) -> None:
    batch = [(CHANGELOG, 0, Record(b"a", b"1", 1)), (CHANGELOG, 0, Record(b"a", None, 1))]
    batch.append((CHANGELOG, 0, Record(b"b", b"1", 1)))
    await append_records(client, keys, batch, compacted={CHANGELOG})
    # What the APPEND script wrote before: the tombstone scored by its write time in ms.
    await client.zadd(keys.tombstones(CHANGELOG, 0), {"0-2": time.time() * 1000})
    await stable_generation(client, keys, 1, {"only": [0]})
    await report(client, keys, "only", 1, {0: 3})
    await remove(client, keys)
    assert await changelog_keys(client, keys) == {b"b": b"1"}
    assert await client.zcard(keys.tombstones(CHANGELOG, 0)) == 0
