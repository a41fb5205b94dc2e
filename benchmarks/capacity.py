"""What ocstream's topics and changelogs hold in Redis, per record and after retention.

    python benchmarks/capacity.py [--redis URL] [--journeys N] [--blocks B] [--partitions P]
                                  [--span-hours H]

Every figure is ``MEMORY USAGE key SAMPLES 0`` summed over this run's keys (exact, and blind to
what else the Redis holds), with the growth of ``INFO memory`` ``used_memory`` beside it.

1. **Bytes per record.** B recorded blocks (``tests/fixtures`` cases, cycled, as the ingress
   publishes them) into ``blocks``; the three legs of N journeys (``benchmarks/xcm.py``'s
   real-shaped legs) into ``xcm-legs``. Reported per record and against the value bytes.
2. **Retention, against the old default in the same run.** The same legs, stamped evenly over
   the last H hours (48 by default: a steady rate for two days), go into two topics. One gets
   the old default (1,000,000 entries per partition, which a topic of this size never reaches),
   the other the new defaults (24 h, 64 MB per partition). Memory after retention, and the ratio.
3. **Changelog tombstones.** N finished journeys' table traffic on a compacted changelog (a model:
   two keys per journey, written, updated once, then deleted, as a matched journey's pending
   legs are). Memory per finished journey with the tombstones kept (the old rule kept them
   24 h) and after they are removed once every holder applied them (the new rule).

Keys live under a fresh prefix that is deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import uuid
from collections.abc import Iterable
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from journeys import journey_legs  # benchmarks/ is this script's directory

from ocstream.testing import blocks_from_case, fixtures_path
from ocstream.transport import Keyspace
from ocstream.transport.retention import apply as apply_retention
from ocstream.transport.settings import TransportSettings
from ocstream.transport.wire import Record, partition_for_key
from ocstream.transport.writer import append_records

HOUR_MS = 3_600_000
GROUP = "capacity"


def stream_bytes(client: redis.Redis, keys: Iterable[str]) -> int:
    pipe = client.pipeline(transaction=False)
    names = list(keys)
    for key in names:
        pipe.memory_usage(key, samples=0)
    return sum(int(size or 0) for size in pipe.execute())


def matching(client: redis.Redis, pattern: str) -> list[str]:
    return [key.decode() for key in client.scan_iter(match=pattern, count=1000)]


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


async def write(
    url: str,
    prefix: str,
    topic: str,
    partitions: int,
    records: list[tuple[str, bytes, int]],
    compacted: bool = False,
) -> None:
    """Append ``(key, value or b"" for a tombstone, timestamp ms)`` records, 1000 a call."""
    client = aioredis.Redis.from_url(url)
    keys = Keyspace(prefix)
    for start in range(0, len(records), 1000):
        batch = [
            (
                topic,
                partition_for_key(key.encode(), partitions),
                Record(key.encode(), value or None, t),
            )
            for key, value, t in records[start : start + 1000]
        ]
        await append_records(client, keys, batch, compacted={topic} if compacted else ())
    await client.aclose()


def fixture_blocks() -> list[tuple[str, bytes]]:
    out = []
    for case in sorted((fixtures_path() / "cases").glob("*.json")):
        out += [(block.network, block.to_json_bytes()) for block in blocks_from_case(case)]
    return out


def per_record(
    url: str, prefix: str, topic: str, partitions: int, records: list[tuple[str, bytes]]
) -> dict[str, float]:
    client = redis.Redis.from_url(url)
    before = used_memory(client)
    now = int(time.time() * 1000)
    asyncio.run(write(url, prefix, topic, partitions, [(k, v, now) for k, v in records]))
    held = stream_bytes(client, matching(client, f"{prefix}t:{topic}:*"))
    grown = used_memory(client) - before
    values = sum(len(v) for _, v in records)
    client.close()
    return {
        "records": len(records),
        "value": values / len(records),
        "held": held / len(records),
        "grown": grown / len(records),
    }


def retention_phase(
    url: str, prefix: str, partitions: int, legs: list[tuple[str, bytes]], span_hours: float
) -> dict[str, int]:
    """The same legs, stamped evenly over ``span_hours``, under the old and the new defaults."""
    now = int(time.time() * 1000)
    step = span_hours * HOUR_MS / len(legs)
    stamped = [(k, v, int(now - span_hours * HOUR_MS + i * step)) for i, (k, v) in enumerate(legs)]
    old = TransportSettings(max_len=1_000_000, retention_hours=0, retention_mb=0)
    new = TransportSettings()
    client = redis.Redis.from_url(url)
    out: dict[str, int] = {}
    for name, settings in (("old", old), ("new", new)):
        topic = f"legs-{name}"
        asyncio.run(write(url, prefix, topic, partitions, stamped))
        out[f"{name}_before"] = stream_bytes(client, matching(client, f"{prefix}t:{topic}:*"))
        asyncio.run(_apply(url, prefix, settings, {topic: partitions}, ()))
        out[f"{name}_after"] = stream_bytes(client, matching(client, f"{prefix}t:{topic}:*"))
        out[f"{name}_entries"] = sum(
            int(client.xlen(key)) for key in matching(client, f"{prefix}t:{topic}:*")
        )
    client.close()
    return out


async def _apply(
    url: str,
    prefix: str,
    settings: TransportSettings,
    topics: dict[str, int],
    compacted: Iterable[str],
    group: str | None = None,
) -> None:
    client = aioredis.Redis.from_url(url)
    await apply_retention(client, Keyspace(prefix), settings, topics, set(compacted), group=group)
    await client.aclose()


def table_traffic(journeys: int, seed: int) -> list[tuple[str, bytes, int]]:
    """Per journey: a pending sent leg (~3 kB) and a journey record (~1 kB), each written, updated
    once, then deleted when the journey finishes; interleaved, as concurrent journeys are."""
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    events: list[tuple[int, tuple[str, bytes, int]]] = []
    for j in range(journeys):
        start = j * 4
        for key, size in ((f"out:{j:08x}", 3000), (f"jr:{j:08x}", 1000)):
            value = rng.randbytes(size // 2).hex().encode()
            events.append((start, (key, value, now)))
            events.append((start + rng.randint(1, 40), (key, value, now)))
            events.append((start + 41 + rng.randint(0, 40), (key, b"", now)))
    events.sort(key=lambda e: e[0])
    return [record for _, record in events]


def tombstone_phase(url: str, prefix: str, partitions: int, journeys: int) -> dict[str, int]:
    keys = Keyspace(prefix)
    topic = "capacity-table-changelog"
    # Every finished journey's writes plus one live key per partition written last, so that
    # no partition's newest entry is a tombstone (the newest entry always stays).
    traffic = table_traffic(journeys, seed=7)
    now = int(time.time() * 1000)
    tail: dict[int, str] = {}
    for n in range(10_000):
        key = f"live:{n}"
        tail.setdefault(partition_for_key(key.encode(), partitions), key)
        if len(tail) == partitions:
            break
    traffic += [(key, b"1", now) for key in tail.values()]
    asyncio.run(write(url, prefix, topic, partitions, traffic, compacted=True))
    client = redis.Redis.from_url(url)

    def held() -> int:
        names = [
            *matching(client, f"{prefix}t:{topic}:*"),
            *matching(client, f"{prefix}ci:{topic}:*"),
            *matching(client, f"{prefix}tomb:{topic}:*"),
        ]
        return stream_bytes(client, names)

    kept = held()
    tombstones = sum(int(client.zcard(keys.tombstones(topic, p))) for p in range(partitions))
    # One member holds every partition and has applied everything (what its report says).
    group = keys.group(GROUP)
    client.hset(group.state, mapping={"gen": 1, "phase": "stable", "stable_gen": 1})
    assignment = ConsumerProtocolMemberAssignment(0, [(topic, list(range(partitions)))], b"")
    client.hset(group.assignment(1), "member", assignment.encode())
    applied = {
        f"{topic}\x1f{p}": int(client.get(keys.sequence(topic, p)) or 0) for p in range(partitions)
    }
    client.hset(group.applied, "member", orjson.dumps({"gen": 1, "applied": applied}))
    settings = TransportSettings()
    while True:  # at most 1000 tombstones per partition and run
        before = held()
        asyncio.run(_apply(url, prefix, settings, {topic: partitions}, {topic}, group=GROUP))
        if held() == before:
            break
    removed = held()
    client.close()
    return {"kept": kept, "removed": removed, "tombstones": tombstones, "live": len(tail)}


def kb(value: float) -> str:
    return f"{value / 1024:,.2f} kB"


def mb(value: float) -> str:
    return f"{value / 1024 / 1024:,.1f} MB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--journeys", type=int, default=5000)
    parser.add_argument("--blocks", type=int, default=300)
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--span-hours", type=float, default=48.0)
    args = parser.parse_args(argv)
    prefix = f"bench-capacity-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(args.redis)
    version = client.info("server")["redis_version"]
    try:
        blocks = fixture_blocks()
        sample = [blocks[i % len(blocks)] for i in range(args.blocks)]
        rng = random.Random(1)
        legs = [
            leg
            for j in range(args.journeys)
            for leg in journey_legs(j, rng, partitions=args.partitions)
        ]

        print(f"Redis {version}, {args.partitions} partitions, prefix {prefix}")
        print("\n1. Stream bytes per record (MEMORY USAGE of the streams; used_memory growth)")
        rows: list[tuple[str, dict[str, Any]]] = [
            ("block (recorded)", per_record(args.redis, prefix, "blocks", args.partitions, sample)),
            (
                "leg (3 per journey)",
                per_record(args.redis, prefix, "xcm-legs", args.partitions, legs),
            ),
        ]
        header = f"  {'record':<22}{'count':>8}{'value':>13}{'in Redis':>13}"
        print(f"{header}{'used_memory':>14}{'ratio':>8}")
        for name, row in rows:
            print(
                f"  {name:<22}{row['records']:>8}{kb(row['value']):>13}{kb(row['held']):>13}"
                f"{kb(row['grown']):>14}{row['held'] / row['value']:>8.2f}"
            )
        per_journey = rows[1][1]["held"] * 3
        print(f"  legs per journey in xcm-legs: {kb(per_journey)}")

        print(
            f"\n2. Retention of {len(legs)} legs written evenly over {args.span_hours:g} h "
            "(baseline: the old default, 1,000,000 entries per partition)"
        )
        ret = retention_phase(args.redis, prefix, args.partitions, legs, args.span_hours)
        for name, label in (("old", "old: 1,000,000 entries"), ("new", "new: 24 h, 64 MB")):
            print(
                f"  {label:<24} before {mb(ret[f'{name}_before']):>10}   after "
                f"{mb(ret[f'{name}_after']):>10}   entries kept {ret[f'{name}_entries']:>7}"
                f"   per journey {kb(ret[f'{name}_after'] / args.journeys)}"
            )
        print(f"  ratio new/old after retention: {ret['new_after'] / ret['old_after']:.2f}")
        per_entry = ret["old_after"] / ret["old_entries"]
        print(
            f"  upper bound of this topic: old {mb(args.partitions * 1_000_000 * per_entry)}"
            f" (1,000,000 entries x {args.partitions} partitions), new "
            f"{mb(args.partitions * 64 * 1024 * 1024)} (64 MB x {args.partitions}), or 24 h of "
            "traffic if that is less"
        )

        print(f"\n3. Changelog of {args.journeys} finished journeys (2 keys each, then deleted)")
        tomb = tombstone_phase(args.redis, prefix, args.partitions, args.journeys)
        print(
            f"  tombstones kept (old rule, 24 h): {mb(tomb['kept'])}, "
            f"{kb(tomb['kept'] / args.journeys)} per journey ({tomb['tombstones']} tombstones)"
        )
        print(
            f"  removed once applied (new rule): {mb(tomb['removed'])}, "
            f"{kb(tomb['removed'] / args.journeys)} per journey "
            f"(what is left: {tomb['live']} live keys and the empty streams)"
        )
        print(f"  ratio new/old: {tomb['removed'] / tomb['kept']:.3f}")
    finally:
        names = list(client.scan_iter(match=prefix + "*", count=1000))
        for start in range(0, len(names), 500):
            client.delete(*names[start : start + 500])
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
